"""POST /v1/responses: OpenAI Responses over the chat flow (service/responses.py)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from service.http_errors import ORJSONResponse
from service.protocol.responses import ResponseObject, ResponsesRequest
from service.responses import first_chunk
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["responses"], route_class=JSONRoute)


@router.post(
    "/responses",
    response_model=ResponseObject,
    responses={200: {"description": "A `response`, or with `stream` its SSE events",
                     "content": {"application/json": {}, "text/event-stream": {}}}},
)
async def create_response(body: ResponsesRequest, tenant: CurrentTenant, state: AppState):
    turn = await state.responses.prepare(tenant, body)
    prepared = turn.prepared
    if not body.stream:
        with prepared.answering():
            out = await state.responses.complete(turn)
        return ORJSONResponse(out, headers=prepared.headers())
    chunks = state.chat.chunks(prepared)
    with prepared.answering():
        first = await first_chunk(chunks)
    headers = {**prepared.headers(), "Cache-Control": "no-cache"}
    return StreamingResponse(state.responses.events(turn, first, chunks),
                             media_type="text/event-stream", headers=headers)
