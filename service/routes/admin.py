"""The operator's view (admin key): engine replicas and the adapters each holds, the health of the
engine, registry and vector store, and every tenant's usage against its limits. The console's
Operators page reads it; nothing here changes anything."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from service.protocol import AdminStatus
from service.routes import JSONRoute
from service.state import Admin, AppState

router = APIRouter(prefix="/v1/admin", tags=["operations"], route_class=JSONRoute)


@router.get("/status", response_model=AdminStatus)
async def status(state: AppState, _: Admin) -> dict:
    held: dict[int, list[str]] = {}
    if state.adapters is not None:
        for ename, indexes in state.adapters.held().items():
            for i in indexes:
                held.setdefault(i, []).append(ename)
    replicas = [
        {"index": i, "url": r.url, "healthy": r.healthy, "inflight": r.inflight,
         "adapters": sorted(held.get(i, []))}
        for i, r in enumerate(state.pool.replicas)
    ]
    readiness = await state.readiness()
    tenants = await asyncio.to_thread(_tenants, state)
    return {"status": readiness["status"], "checks": readiness["checks"], "replicas": replicas,
            "tenants": tenants}


def _tenants(state) -> list[dict]:
    limiter = state.chat.limiter
    usage = limiter.usage() if limiter is not None else {}
    idle = {"requests_this_minute": 0, "tokens_today": 0}
    out = []
    for t in state.tenants.list():
        policy = t["policy"]
        out.append({
            "id": t["id"],
            "mode": policy["mode"],
            "limits": {"requests_per_minute": policy.get("requests_per_minute"),
                       "tokens_per_day": policy.get("tokens_per_day")},
            "usage": usage.get(t["id"], idle) if limiter is not None else None,
        })
    return out
