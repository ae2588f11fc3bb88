from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from service.chat import ChatRequest
from service.errors import ORJSONResponse
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["chat"])


@router.post("/chat/completions")
async def chat_completions(body: ChatRequest, tenant: CurrentTenant, state: AppState):
    decision, engine_body, cited = await state.chat.prepare(tenant, body)
    headers = {"X-Route": decision.path}
    if not body.stream:
        out = await state.chat.complete(decision, engine_body, cited)
        return ORJSONResponse(out, headers=headers)
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    events = state.chat.stream(decision, engine_body, cited, include_usage)
    # Pull the first event before answering, so an engine that is down is a plain 503,
    # not a 200 stream that fails.
    first = await anext(events)

    async def relay():
        yield first
        async for event in events:
            yield event

    headers["Cache-Control"] = "no-cache"
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
        ],
    }
