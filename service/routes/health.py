from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from service.http_errors import ORJSONResponse
from service.routes import JSONRoute
from service.state import AppState

router = APIRouter(tags=["operations"], route_class=JSONRoute)


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: AppState) -> ORJSONResponse:
    checks: dict[str, str] = {}
    checks["llm"] = "ok" if state.pool.healthy_count else "down"
    try:
        await asyncio.to_thread(state.registry.ping)
        checks["registry"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["registry"] = f"down: {type(exc).__name__}"
    try:
        await asyncio.to_thread(state.store.ping)
        checks["vector_store"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["vector_store"] = f"down: {type(exc).__name__}"
    down = sorted(k for k, v in checks.items() if v != "ok")
    if down:
        body = {
            "status": "not ready",
            "checks": checks,
            "error": {
                "message": f"not ready: {', '.join(down)} down",
                "type": "server_error",
                "param": None,
                "code": "not_ready",
            },
        }
        return ORJSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return ORJSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: AppState) -> Response:
    state.metrics.engine_replicas_healthy.set(state.pool.healthy_count)
    state.metrics.set_job_counts(await asyncio.to_thread(state.documents.job_counts))
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
