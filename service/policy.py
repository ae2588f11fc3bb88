"""A tenant's decision policy: which path (prompt | rag | adapter_rag) its queries take, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.errors import InvalidRequest

Path = Literal["prompt", "rag", "adapter_rag"]
# Paths this server can serve today; the knowledge base (rag) and adapters (adapter_rag) add theirs.
SERVED_PATHS: tuple[Path, ...] = ("prompt",)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "prompt", "rag", "adapter_rag"] = "auto"
    allow_route_override: list[Path] = Field(
        default_factory=lambda: ["prompt", "rag", "adapter_rag"],
        description="Paths a request may force with the `route` field.",
    )
    system_prompt: str | None = Field(None, max_length=8000)


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


def decide(policy: Policy, forced: Path | None) -> RouteDecision:
    if forced is not None:
        if forced not in policy.allow_route_override:
            raise InvalidRequest(
                f"this tenant's policy does not allow forcing route '{forced}'",
                code="route_not_allowed",
                param="route",
            )
        _require_served(forced, "route")
        return RouteDecision(forced, f"the request forced route '{forced}'")
    if policy.mode != "auto":
        _require_served(policy.mode, "policy.mode")
        return RouteDecision(policy.mode, f"the tenant's policy mode is '{policy.mode}'")
    return RouteDecision(
        "prompt", "auto: the tenant has no knowledge base or adapter this server can use yet"
    )


def _require_served(path: str, param: str) -> None:
    if path not in SERVED_PATHS:
        raise InvalidRequest(
            f"route '{path}' is not available on this server", code="route_unavailable", param=param
        )
