"""OpenAI Responses: /v1/responses (no stored responses: `store` is always false)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.policy import Path as ServedPath
from service.protocol.base import ResponseBody
from service.protocol.chat import Citation, RouteInfo


class ResponsesRequest(BaseModel):
    # OpenAI's other fields (reasoning, prompt_cache_key, service_tier ...) are accepted and
    # have no effect here; the ones that would change the answer's meaning are checked.
    model_config = ConfigDict(extra="allow")

    input: str | list[dict[str, Any]] = Field(
        description="A user message, or message items (role + text content)."
    )
    model: str | None = Field(None, description="auto, the base model, or an adapter's name.")
    instructions: str | None = Field(None, max_length=32_000)
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    tools: list[dict[str, Any]] = Field(
        default_factory=list, max_length=8,
        description='[{"type": "file_search", "vector_store_ids": [...], "max_num_results"?, '
        '"filters"?, "ranking_options"?}]: retrieval over those vector stores only.',
    )
    tool_choice: str | dict[str, Any] | None = None
    include: list[str] | None = Field(
        None, max_length=16,
        description='"file_search_call.results" lists the passages in the file_search_call item.',
    )
    text: dict[str, Any] | None = Field(
        None, description='{"format": {"type": "text" | "json_object" | "json_schema", ...}}'
    )
    metadata: dict[str, str] | None = Field(None, max_length=16)
    user: str | None = Field(None, max_length=256)
    parallel_tool_calls: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Refused with responses_not_stored: this service keeps no response to continue from.
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    route: ServedPath | None = Field(None, description="Force a path, as on chat.")


class OutputText(ResponseBody):
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] = Field(
        description='file_citation annotations: {"type", "file_id", "filename", "index"}.'
    )
    logprobs: list[dict[str, Any]] | None = None


class OutputItem(ResponseBody):
    """A `message` (role, content) or a `file_search_call` (queries, results)."""

    id: str
    type: Literal["message", "file_search_call"]
    status: str
    role: Literal["assistant"] | None = None
    content: list[OutputText] | None = None
    queries: list[str] | None = None
    results: list[dict[str, Any]] | None = Field(
        None, description='With include ["file_search_call.results"]: {"file_id", "filename", '
        '"score", "text", "attributes"} for each passage given to the model.'
    )


class ResponseUsage(ResponseBody):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens_details: dict[str, int]


class ResponseObject(ResponseBody):
    """OpenAI's `response`, plus `route` and `citations` as on chat."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    background: bool = False
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str = Field(description="The base model's name, or the adapter's that answered.")
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: None = None
    reasoning: dict[str, Any] | None = None
    store: Literal[False]
    temperature: float | None = None
    text: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float | None = None
    truncation: Literal["auto", "disabled"]
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str]
    route: RouteInfo
    citations: list[Citation]
