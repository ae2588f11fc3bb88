"""A tenant's decision policy: which path (prompt | rag | adapter_rag) its queries take, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.errors import InvalidRequest

Path = Literal["prompt", "rag", "adapter_rag"]
# Paths this server can serve today; adapters (adapter_rag) add theirs.
SERVED_PATHS: tuple[Path, ...] = ("prompt", "rag")


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "prompt", "rag", "adapter_rag"] = "auto"
    allow_route_override: list[Path] = Field(
        default_factory=lambda: ["prompt", "rag", "adapter_rag"],
        description="Paths a request may force with the `route` field.",
    )
    system_prompt: str | None = Field(None, max_length=8000)
    top_k: int = Field(3, ge=1, le=20, description="Chunks retrieved per query.")
    min_score: float = Field(
        0.35, ge=-1, le=1, description="Cosine floor: chunks below it are not given to the model."
    )
    context_max_tokens: int = Field(
        600, ge=32, le=8000, description="Budget for retrieved context in the prompt."
    )
    on_retrieval_error: Literal["fail", "degrade"] = Field(
        "degrade", description="When the knowledge base is down: 503, or answer on the prompt path."
    )


@dataclass
class RouteDecision:
    path: Path
    reason: str
    adapter: str | None = None
    signals: dict[str, float | str | None] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "reason": self.reason,
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
        _require_served(forced, "route")
        return forced
    if policy.mode != "auto":
        _require_served(policy.mode, "policy.mode")
    return policy.mode


def decide_auto(policy: Policy, top_score: float | None) -> RouteDecision:
    """The automatic rule for now: the knowledge base answers when its best chunk clears the
    tenant's score floor; otherwise the base model answers alone."""
    signals = {"top_score": None if top_score is None else round(top_score, 4)}
    if top_score is None:
        return RouteDecision("prompt", "auto: the tenant's knowledge base has nothing indexed",
                             signals=signals)
    if top_score >= policy.min_score:
        return RouteDecision(
            "rag",
            f"auto: the best knowledge-base match scores {top_score:.2f} "
            f"≥ the tenant's floor {policy.min_score:.2f}",
            signals=signals,
        )
    return RouteDecision(
        "prompt",
        f"auto: the best knowledge-base match scores {top_score:.2f} "
        f"< the tenant's floor {policy.min_score:.2f}, so no retrieved context is relevant",
        signals=signals,
    )


def _require_served(path: str, param: str) -> None:
    if path not in SERVED_PATHS:
        raise InvalidRequest(
            f"route '{path}' is not available on this server", code="route_unavailable", param=param
        )
