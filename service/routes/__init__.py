"""The API's routers. Every route reads JSON bodies with orjson, the codec the service writes
with (responses, requests to the engine): a body is refused as invalid JSON (400 invalid_json)
when it holds what could not be written back, a lone surrogate (`"\\ud800"`), NaN or Infinity,
invalid UTF-8 or nesting deeper than 1024, instead of failing later as a 500."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class ORJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson.JSONDecodeError is a json.JSONDecodeError: FastAPI makes it a 400.
            self._json = orjson.loads(await self.body())
        return self._json


class JSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def orjson_handler(request: Request) -> Response:
            return await handler(ORJSONRequest(request.scope, request.receive, request._send))

        return orjson_handler
