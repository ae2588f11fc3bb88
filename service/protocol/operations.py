"""Operations: /healthz, /readyz."""

from __future__ import annotations

from typing import Literal

from service.protocol.base import ErrorDetail, ResponseBody


class Health(ResponseBody):
    status: Literal["ok"]


class ReadinessChecks(ResponseBody):
    """Each dependency: "ok", or "down" (with the failure's type where one was raised)."""

    llm: str
    registry: str
    vector_store: str


class Readiness(ResponseBody):
    status: Literal["ready"]
    checks: ReadinessChecks


class NotReady(ResponseBody):
    """The 503 of /readyz: the checks, beside the one error shape's `error` naming what is down."""

    status: Literal["not ready"]
    checks: ReadinessChecks
    error: ErrorDetail
