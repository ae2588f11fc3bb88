"""How errors reach the client: FastAPI's handlers render every `APIError` (core/errors.py), every
validation failure and every unhandled exception in API.md's one error shape, and the OpenAPI
document says so."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from core.errors import APIError, error_body, status_error_body
from service.protocol import ErrorBody

log = logging.getLogger("ragtune.errors")


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


def _loc_to_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _error_schemas() -> dict[str, dict]:
    """The `Error` component (and the components it refers to), from the protocol's model of
    the one error shape."""
    schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "Error": schema}


def document_errors(app: FastAPI) -> None:
    """The OpenAPI document says what the API does: FastAPI's default `422 HTTPValidationError`
    (which this API never answers: validation is a 400 in the one error shape) is replaced by a
    `4XX` response in that shape on every operation."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components.update(_error_schemas())
        error = {
            "description": "An error, in the one shape of every error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                responses = op.setdefault("responses", {})
                ref = (responses.get("422", {}).get("content", {}).get("application/json", {})
                       .get("schema", {}).get("$ref", ""))
                if ref.endswith("/HTTPValidationError"):
                    del responses["422"]
                responses.setdefault("4XX", error)
        return schema

    app.openapi = openapi


def install_error_handlers(app: FastAPI) -> None:
    document_errors(app)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> ORJSONResponse:
        return ORJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> ORJSONResponse:
        # OpenAI (and vLLM) answer malformed requests with 400, not FastAPI's default 422.
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _loc_to_param(tuple(first.get("loc", ())))
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            # loc is ("body", <character offset>): no field to name.
            code, param = "invalid_json", None
            reason = (first.get("ctx") or {}).get("error")
            message = "the request body is not valid JSON" + (f": {reason}" if reason else "")
        else:
            code = "missing_field" if first.get("type") == "missing" else "invalid_value"
            message = f"{param}: {msg}" if param else msg
        return ORJSONResponse(error_body(message, "invalid_request_error", code, param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        if isinstance(exc.__cause__, APIError):
            # FastAPI wraps errors raised while reading the body (our size limit) in a 400.
            return await _api_error(request, exc.__cause__)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return ORJSONResponse(
            status_error_body(exc.status_code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> ORJSONResponse:
        log.exception("unhandled error")
        rid = request.headers.get("x-request-id") or request.scope.get("state", {}).get(
            "request_id", ""
        )
        return ORJSONResponse(
            error_body(f"internal error (request {rid})", "server_error", "internal_error"), 500
        )
