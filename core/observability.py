"""JSON logs with a request id, and the ASGI middleware that sets it, limits request bodies and
records HTTP metrics. Pure ASGI (not BaseHTTPMiddleware): it must not buffer streamed answers."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid

from core.errors import PayloadTooLarge, status_error_body
from core.metrics import Metrics

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        for key in ("method", "route", "status", "duration_ms", "tenant"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("ragtune")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


access_log = logging.getLogger("ragtune.access")


# The request head's cap: servers differ (h11 stops at 16 KB, httptools has no cap), the answer
# to a larger one must not (431 in the one error shape rather than whatever the server says).
MAX_HEADER_BYTES = 32 << 10


def _malformed(scope) -> tuple[int, str, str | None, str] | None:
    """(status, code, param, message) for a request refused before routing, else None."""
    if sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > MAX_HEADER_BYTES:
        return (431, "headers_too_large", None,
                f"request headers larger than {MAX_HEADER_BYTES} bytes")
    # No name of ours holds a NUL, and PostgreSQL refuses one in any text it is asked about
    # (a 500 for an id like 'a%00b' otherwise).
    if "\x00" in scope["path"]:
        return 400, "invalid_characters", "path", "the request path holds a NUL character"
    query = scope.get("query_string", b"")
    if b"\x00" in query or b"%00" in query:
        return 400, "invalid_characters", "query", "the query string holds a NUL character"
    return None


class RequestContextMiddleware:
    def __init__(self, app, metrics: Metrics, max_body_bytes: int, body_limits: dict | None = None):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # Per path prefix limits (uploads are larger than chat bodies).
        self.body_limits = body_limits or {}

    def _limit_for(self, path: str) -> int:
        for prefix, limit in self.body_limits.items():
            if path.startswith(prefix):
                return limit
        return self.max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status_holder = {"status": 500}
        limit = self._limit_for(scope["path"])

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            refused = _malformed(scope)
            if refused is not None:
                status, code, param, message = refused
                await _send_error(send_wrapper, status, message, code=code, param=param)
                return
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await _send_error(send_wrapper, 413, f"request body larger than {limit} bytes")
                return
            received = 0

            async def receive_limited():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise PayloadTooLarge(f"request body larger than {limit} bytes")
                return message

            await self.app(scope, receive_limited, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            status = status_holder["status"]
            self.metrics.observe_http(template, scope["method"], status, elapsed)
            access_log.info(
                "%s %s %s",
                scope["method"],
                template,
                status,
                extra={
                    "method": scope["method"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "tenant": scope["state"].get("tenant"),
                },
            )
            request_id_var.reset(token)


async def _send_error(
    send, status: int, message: str, *, code: str | None = None, param: str | None = None
) -> None:
    body = status_error_body(status, message)
    if code is not None:
        body["error"].update(code=code, param=param)
    body = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
