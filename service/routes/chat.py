from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from service.http_errors import ORJSONResponse
from service.protocol import ChatCompletion, ChatRequest, ModelList
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["chat"], route_class=JSONRoute)


# The model documents the non-streamed body; the route answers with its own Response (orjson,
# the engine's body as it came) and FastAPI does not serialize through the model.
@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"description": "A `chat.completion`, or with `stream` its SSE chunks",
                     "content": {"application/json": {}, "text/event-stream": {}}}},
)
async def chat_completions(body: ChatRequest, tenant: CurrentTenant, state: AppState):
    prepared = await state.chat.prepare(tenant, body)
    if not body.stream:
        with prepared.answering():
            out = await state.chat.complete(prepared)
        return ORJSONResponse(out, headers=prepared.headers())
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    events = state.chat.stream(prepared, include_usage)
    # Pull the first event before answering, so an engine that is down is a plain 503,
    # not a 200 stream that fails.
    with prepared.answering():
        first = await anext(events)

    async def relay():
        yield first
        async for event in events:
            yield event

    headers = {**prepared.headers(), "Cache-Control": "no-cache"}
    return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)


# exclude_unset: `version` is on adapter entries only; the base model's entry has none.
@router.get("/models", response_model=ModelList, response_model_exclude_unset=True)
async def list_models(tenant: CurrentTenant, state: AppState) -> dict:
    return await state.chat.models(tenant.id, int(state.started_at))
