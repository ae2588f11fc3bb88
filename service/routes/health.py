from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from service.http_errors import ORJSONResponse
from service.protocol import Health, NotReady, Readiness
from service.routes import JSONRoute
from service.state import AppState

router = APIRouter(tags=["operations"], route_class=JSONRoute)


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": NotReady, "description": "Not ready: the checks name what is down"}},
)
async def readyz(state: AppState) -> ORJSONResponse:
    body = await state.readiness()
    if body["status"] != "ready":
        return ORJSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return ORJSONResponse(body)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: AppState) -> Response:
    return Response(await state.render_metrics(), media_type="text/plain; version=0.0.4")
