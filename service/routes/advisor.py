from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.policy import Policy
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["advisor"], route_class=JSONRoute)


class AdviceRequest(BaseModel):
    sample_texts: list[str] | None = Field(
        None, max_length=64,
        description="Samples of the tenant's text; default: its indexed documents.",
    )
    training_file: str | None = Field(
        None, max_length=8 << 20, description="A proposed training file (JSONL) to check."
    )


class ExplainRequest(BaseModel):
    queries: list[str] = Field(min_length=1, max_length=500)


@router.post("/advisor")
async def advise(body: AdviceRequest, tenant: CurrentTenant, state: AppState) -> dict:
    return await state.advisor.advise(tenant.id, body.sample_texts, body.training_file)


@router.post("/policy/explain")
async def explain(body: ExplainRequest, tenant: CurrentTenant, state: AppState) -> dict:
    """What `auto` would decide for each query, with its signals, without calling the LLM
    (`ragtune policy calibrate` tunes the thresholds from these)."""
    policy = Policy.model_validate({**tenant.policy.model_dump(), "mode": "auto"})
    out = []
    for q in body.queries:
        routed = await state.chat.router.route(tenant.id, policy, q, None, None)
        out.append({"query": q, "route": routed.decision.as_dict()})
    return {"object": "list", "data": out, "policy": tenant.policy.model_dump()}
