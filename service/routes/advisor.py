from __future__ import annotations

from fastapi import APIRouter

from service.protocol import Advice, AdviceRequest, ExplainRequest, PolicyExplanation
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["advisor"], route_class=JSONRoute)


@router.post("/advisor", response_model=Advice)
async def advise(body: AdviceRequest, tenant: CurrentTenant, state: AppState) -> dict:
    return await state.advisor.advise(tenant.id, body.sample_texts, body.training_file)


@router.post("/policy/explain", response_model=PolicyExplanation)
async def explain(body: ExplainRequest, tenant: CurrentTenant, state: AppState) -> dict:
    """What `auto` would decide for each query, with its signals, without calling the LLM
    (`ragtune policy calibrate` tunes the thresholds from these)."""
    return await state.chat.explain(tenant, body.queries)
