"""What every body shares: `ResponseBody`, the base of success bodies, and the one error shape."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ResponseBody(BaseModel):
    """A success body. Fields a model does not name still pass through: FastAPI serializes a
    route's return value through its response model, and a field the service starts to answer
    with before its model names it must not vanish from the answer."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1)
    type: str
    param: str | None
    code: str = Field(min_length=1)


class ErrorBody(BaseModel):
    """Every error, whatever raised it (API.md): OpenAI's shape."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail
