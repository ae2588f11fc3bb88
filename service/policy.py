"""A tenant's decision policy: which path (prompt | rag | adapter_rag) its queries take, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidRequest

Path = Literal["prompt", "rag", "adapter_rag"]
PATHS: tuple[Path, ...] = get_args(Path)  # simplest first: the decision guide's order


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "prompt", "rag", "adapter_rag"] = "auto"
    allow_route_override: list[Path] = Field(
        default_factory=lambda: ["prompt", "rag", "adapter_rag"],
        description="Paths a request may force with the `route` field.",
    )
    system_prompt: str | None = Field(None, max_length=8000)
    top_k: int = Field(3, ge=1, le=20, description="Chunks retrieved per query.")
    min_score: float | None = Field(
        None, ge=-1, le=1,
        description="Cosine floor: chunks below it are not given to the model, and auto takes "
        "rag only when the best chunk clears it. Unset: the tenant's background floor, measured "
        "on its own knowledge base (service/background.py); `ragtune policy calibrate` sets it.",
    )
    context_max_tokens: int = Field(
        600, ge=32, le=8000,
        description="Budget for retrieved context in the prompt, in the embedding model's "
        "tokens (the unit chunks are sized and counted in at ingestion).",
    )
    on_retrieval_error: Literal["fail", "degrade"] = Field(
        "degrade", description="When the knowledge base is down: 503, or answer on the prompt path."
    )
    adapter: str | None = Field(
        None,
        max_length=64,
        description=(
            "The adapter for mode/route 'adapter_rag'. Unset: the tenant's adapter whose "
            "description and examples best match the query."
        ),
    )
    requests_per_minute: int | None = Field(
        None, ge=1, description="Across all API replicas; unset: unlimited."
    )
    tokens_per_day: int | None = Field(
        None, ge=1, description="Prompt + completion tokens per UTC day; unset: unlimited."
    )
    adapter_context: Literal["trained", "policy"] = Field(
        "trained",
        description=(
            "adapter_rag: 'trained' gives an adapter with a training record the context it was "
            "trained with (its top_k, floor and budget; none at all when it was trained without "
            "retrieved context); 'policy' gives every adapter this policy's top_k, min_score "
            "and context_max_tokens. An adapter without a record always gets the policy's."
        ),
    )
    adapter_match_min: float = Field(
        0.5, ge=-1, le=1,
        description="auto: a query this similar to an adapter's examples takes that adapter.",
    )


@dataclass
class RouteDecision:
    path: Path
    reason: str
    adapter: str | None = None
    signals: dict[str, float | str | None] = field(default_factory=dict)
    # What decided it, for machines and metrics: forced | policy_mode | named_adapter |
    # auto_adapter | auto_knowledge | auto_no_match | auto_empty | degraded | file_search
    kind: str = "policy_mode"

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "reason": self.reason,
            "reason_kind": self.kind,
            "adapter": self.adapter,
            "signals": self.signals,
        }


def requested_path(policy: Policy, forced: Path | None) -> Path | Literal["auto"]:
    """The path a request asks for before any signal is measured ('auto': decide from signals)."""
    if forced is not None:
        if forced not in policy.allow_route_override:
            raise InvalidRequest(
                f"this tenant's policy does not allow forcing route '{forced}'",
                code="route_not_allowed",
                param="route",
            )
        return forced
    return policy.mode


@dataclass(frozen=True)
class AdapterMatch:
    """The best adapter for a query: its label, the query's similarity to its description and
    examples, and whether the query names it (its made-up name, e.g. "Skerry", in so many words:
    a word the embedding model has no token for weighs little in the similarity)."""

    label: str
    score: float
    named: bool = False


# Where neither the policy nor a measurement gives a floor (nothing indexed to measure on).
FALLBACK_FLOOR = 0.35


def effective_floor(policy: Policy, background: float | None) -> float:
    """The floor a tenant's retrieval is held to: its policy's `min_score` when set, else its
    background floor (service/background.py), measured by the caller."""
    if policy.min_score is not None:
        return policy.min_score
    return background if background is not None else FALLBACK_FLOOR


def decide_auto(
    policy: Policy, top_score: float | None, adapter_match: AdapterMatch | None,
    floor: float | None = None,
) -> RouteDecision:
    """The automatic rule: an adapter whose declared purpose matches the query, or that the
    query names, takes it (with retrieval for the facts); else the knowledge base answers when
    its best chunk clears the floor; else the base model answers alone. `floor`: the tenant's
    `min_score`, or where that is unset its background floor (the caller measures it)."""
    floor_from = "policy" if policy.min_score is not None else "background"
    floor = effective_floor(policy, floor)
    signals: dict = {"top_score": round_signal(top_score),
                     "floor": round_signal(floor) if top_score is not None else None,
                     "floor_from": floor_from}
    if adapter_match is not None:
        signals["adapter_match"] = round_signal(adapter_match.score)
        signals["adapter_named"] = adapter_match.named
    if adapter_match is not None and adapter_match.named:
        return RouteDecision(
            "adapter_rag",
            f"auto: the query names adapter {adapter_match.label}",
            adapter=adapter_match.label,
            signals=signals,
            kind="auto_adapter",
        )
    if adapter_match is not None and adapter_match.score >= policy.adapter_match_min:
        label, score = adapter_match.label, adapter_match.score
        return RouteDecision(
            "adapter_rag",
            f"auto: the query matches adapter {label}'s purpose at {score:.2f} "
            f"≥ the tenant's adapter threshold {policy.adapter_match_min:.2f}",
            adapter=label,
            signals=signals,
            kind="auto_adapter",
        )
    adapter_note = (
        f"no adapter matches (best {adapter_match.score:.2f} < "
        f"{policy.adapter_match_min:.2f}); "
        if adapter_match is not None
        else ""
    )
    whose = "the tenant's floor" if floor_from == "policy" else "the tenant's background floor"
    if top_score is None:
        return RouteDecision(
            "prompt", f"auto: {adapter_note}the tenant's knowledge base has nothing indexed",
            signals=signals,
            kind="auto_empty",
        )
    if top_score >= floor:
        return RouteDecision(
            "rag",
            f"auto: {adapter_note}the best knowledge-base match scores {top_score:.2f} "
            f"≥ {whose} {floor:.2f}",
            signals=signals,
            kind="auto_knowledge",
        )
    return RouteDecision(
        "prompt",
        f"auto: {adapter_note}the best knowledge-base match scores {top_score:.2f} "
        f"< {whose} {floor:.2f}, so no retrieved context is relevant",
        signals=signals,
        kind="auto_no_match",
    )


def round_signal(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
