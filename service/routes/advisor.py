from __future__ import annotations

from fastapi import APIRouter

from service.calibrate import calibrate, labeled_from_explain
from service.policy import Policy
from service.protocol import (
    Advice,
    AdviceRequest,
    CalibrateRequest,
    Calibration,
    ExplainRequest,
    PolicyExplanation,
)
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


@router.post("/policy/calibrate", response_model=Calibration)
async def calibrate_policy(body: CalibrateRequest, tenant: CurrentTenant, state: AppState) -> dict:
    """`ragtune policy calibrate` as an API (the console's): the accuracy of the tenant's `auto`
    thresholds on labeled queries and the best ones; nothing is changed (an admin applies them
    with PATCH /v1/tenants/{id})."""
    rows = [r.model_dump() for r in body.rows]
    explained = await state.chat.explain(tenant, [r["query"] for r in rows])
    report = calibrate(Policy.model_validate(explained["policy"]),
                       labeled_from_explain(rows, explained["data"]))
    return report.to_dict()
