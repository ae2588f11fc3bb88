from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from service.chat import ChatRequest
from service.http_errors import ORJSONResponse
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["chat"], route_class=JSONRoute)


@router.post(
    "/chat/completions",
    responses={200: {"description": "A `chat.completion`, or with `stream` its SSE chunks",
                     "content": {"application/json": {}, "text/event-stream": {}}}},
)
async def chat_completions(body: ChatRequest, tenant: CurrentTenant, state: AppState):
    prepared = await state.chat.prepare(tenant, body)
    headers = {"X-Route": prepared.decision.path}
    if not body.stream:
        out = await state.chat.complete(prepared)
        headers["Server-Timing"] = prepared.server_timing()
        return ORJSONResponse(out, headers=headers)
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    events = state.chat.stream(prepared, include_usage)
    # Pull the first event before answering, so an engine that is down is a plain 503,
    # not a 200 stream that fails.
    first = await anext(events)

    async def relay():
        yield first
        async for event in events:
            yield event

    headers["Cache-Control"] = "no-cache"
    headers["Server-Timing"] = prepared.server_timing()
    return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)


@router.get("/models")
async def list_models(tenant: CurrentTenant, state: AppState) -> dict:
    base = state.settings.base_model_name
    created = int(state.started_at)
    return {
        "object": "list",
        "data": [
            {
                "id": base,
                "object": "model",
                "created": created,
                "owned_by": "ragtune",
                "parent": None,
                "root": base,
            }
        ]
        + [
            {
                "id": a["name"],
                "object": "model",
                "created": created,
                "owned_by": tenant.id,
                "parent": base,
                "root": base,
                "version": a["version"],
            }
            for a in (await asyncio.to_thread(state.adapters.list, tenant.id))["data"]
        ],
    }
