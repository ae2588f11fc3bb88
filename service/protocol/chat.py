"""Chat: /v1/chat/completions, /v1/models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingest.context import content_text
from service.policy import Path as ServedPath
from service.protocol.base import ResponseBody


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        return content_text(self.content)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = 1
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    # Every field passed on to vLLM is typed and bounded here (OpenAI's ranges): what reaches
    # the engine is what its schema accepts, and a 70-bit seed is a 400, not a crash.
    stop: str | list[str] | None = Field(None, max_length=16)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, max_length=300)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=256)
    route: ServedPath | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n


class RouteInfo(ResponseBody):
    """Why an answer took its path (API.md's `route`)."""

    path: ServedPath
    reason: str
    reason_kind: str = Field(
        description="forced | policy_mode | named_adapter | auto_adapter | auto_knowledge | "
        "auto_no_match | auto_empty | degraded | file_search (the request's file_search tool "
        "asked for retrieval where the policy would have answered without)"
    )
    adapter: str | None = Field(description="name@version of the adapter that serves, if any")
    # int before float: a count (`chunks`) stays an integer on its way through the model.
    signals: dict[str, bool | int | float | str | None] = Field(
        description="What decided the path and what the model was given: top_score, floor, "
        "floor_from (policy | background), adapter_match, adapter_named, chunks; where context "
        "was given, context_from (adapter | policy | none) and, unless none, the top_k, "
        "min_score and context_max_tokens used."
    )


class Citation(ResponseBody):
    document_id: str
    chunk_id: str
    score: float
    source: str
    text: str = Field(description="The chunk as the model was given it.")
    version: int


class CompletionMessage(ResponseBody):
    role: str
    content: str | None = None


class CompletionChoice(ResponseBody):
    index: int
    message: CompletionMessage
    finish_reason: str | None = None


class CompletionUsage(ResponseBody):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(ResponseBody):
    """OpenAI's `chat.completion` as the engine answered it, plus `route` and `citations`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str = Field(description="The base model's name, or the adapter's that answered.")
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    route: RouteInfo
    citations: list[Citation] = Field(description="Every chunk given to the model.")


class ModelCard(ResponseBody):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    parent: str | None = Field(description="The base model, for an adapter.")
    root: str
    version: int | None = Field(None, description="The adapter's served version (adapters only).")


class ModelList(ResponseBody):
    object: Literal["list"]
    data: list[ModelCard]
