"""OpenAI Responses over the chat flow: a request becomes the chat request it means (instructions
as the system message, the input's messages), takes the same path decision, limits and engine
call, and its answer is told back as a `response` (or its event stream).

`file_search` restricts retrieval to its vector stores' documents and asks for retrieval (the
policy's prompt path becomes rag; see PathRouter.route). Whatever the path retrieved comes back
as a `file_search_call` output item (its passages with `include: ["file_search_call.results"]`)
and as `file_citation` annotations on the output text, one per cited file, placed at the end of
the text: the model does not say which sentence used which passage.

Nothing is kept: `store` is false, and `previous_response_id`, `conversation` and `store: true`
are refused (responses_not_stored): the caller sends earlier turns in `input`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.errors import APIError, InvalidRequest, UpstreamError
from ingest.openai_stores import Scope, VectorStores
from service.chat import ChatService, Prepared, last_user_text
from service.protocol.chat import ChatRequest
from service.protocol.responses import ResponsesRequest
from service.tenants import TenantView

RESULTS = "file_search_call.results"
TEXT_PARTS = ("input_text", "output_text", "text")


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class FileSearch:
    vector_store_ids: list[str]
    max_num_results: int | None = None
    filters: dict | None = None
    score_threshold: float | None = None


@dataclass
class Turn:
    """One request on its way: the chat request prepared, and what the response tells."""

    prepared: Prepared
    request: ResponsesRequest
    model: str
    search: FileSearch | None
    scope: Scope | None
    id: str = field(default_factory=lambda: _id("resp"))
    message_id: str = field(default_factory=lambda: _id("msg"))
    search_id: str = field(default_factory=lambda: _id("fs"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    # ---- what the answer says -----------------------------------------------------------
    def search_item(self, status: str = "completed") -> dict | None:
        """The file_search_call item: when the request declared the tool, or the path
        retrieved on its own (the tenant's policy)."""
        cited = self.prepared.routed.cited
        if self.search is None and not cited:
            return None
        results = None
        if status == "completed" and RESULTS in (self.request.include or []):
            attrs = self.scope.attributes if self.scope else {}
            results = [
                {"file_id": c["document_id"], "filename": c["source"], "score": c["score"],
                 "text": c["text"], "attributes": attrs.get(c["document_id"], {})}
                for c in cited
            ]
        if self.prepared.routed.decision.signals.get("retrieval") == "down":
            status = "failed"
        return {"id": self.search_id, "type": "file_search_call", "status": status,
                "queries": [self.query], "results": results}

    @property
    def query(self) -> str:
        """What was searched: the last user message (as the path router reads it)."""
        return last_user_text(self.prepared.request.messages)

    def annotations(self, text: str) -> list[dict]:
        seen: dict[str, dict] = {}
        for c in self.prepared.routed.cited:
            seen.setdefault(c["document_id"], {
                "type": "file_citation", "file_id": c["document_id"],
                "filename": c["source"], "index": len(text)})
        return list(seen.values())

    def text_part(self, text: str, annotations: list[dict] | None = None) -> dict:
        return {"type": "output_text", "text": text,
                "annotations": self.annotations(text) if annotations is None else annotations,
                "logprobs": []}

    def message(self, text: str, status: str = "completed") -> dict:
        content = [self.text_part(text)] if status == "completed" else []
        return {"id": self.message_id, "type": "message", "role": "assistant",
                "status": status, "content": content}

    def response(
        self, status: str, output: list[dict], usage: dict | None = None,
        finish_reason: str | None = None, error: dict | None = None,
    ) -> dict:
        req = self.request
        incomplete = None
        if finish_reason == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        out: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "background": False, "error": error,
            "incomplete_details": incomplete, "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens, "model": self.model,
            "output": output, "parallel_tool_calls": False, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": False,
            "temperature": req.temperature, "text": req.text or {"format": {"type": "text"}},
            "tool_choice": req.tool_choice or "auto", "tools": req.tools, "top_p": req.top_p,
            "truncation": "disabled", "usage": None, "user": req.user,
            "metadata": req.metadata or {},
            "route": self.prepared.decision.as_dict(), "citations": self.prepared.routed.cited,
        }
        if usage is not None:
            prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            out["usage"] = {
                "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            }
        return out

    def output(self, text: str) -> list[dict]:
        search = self.search_item()
        return ([search] if search else []) + [self.message(text)]


class ResponsesService:
    def __init__(self, chat: ChatService, stores: VectorStores) -> None:
        self.chat = chat
        self.stores = stores

    async def prepare(self, tenant: TenantView, req: ResponsesRequest) -> Turn:
        _refuse_unkept(req)
        search = _file_search(req)
        limit = self.chat.limits.max_tokens
        if req.max_output_tokens is not None and req.max_output_tokens > limit:
            raise InvalidRequest(f"max_output_tokens may be at most {limit}",
                                 code="max_tokens_too_large", param="max_output_tokens")
        chat_req = ChatRequest(
            messages=_messages(req), model=req.model, max_tokens=req.max_output_tokens,
            temperature=req.temperature, top_p=req.top_p, user=req.user, route=req.route,
            response_format=_response_format(req.text),
        )
        policy, scope = tenant.policy, None
        if search is not None:
            scope = await asyncio.to_thread(
                self.stores.scope, tenant.id, search.vector_store_ids, search.filters,
                "tools.0.vector_store_ids",
            )
            changes = {}
            if search.max_num_results is not None:
                changes["top_k"] = min(search.max_num_results, 20)
            if search.score_threshold is not None:
                changes["min_score"] = search.score_threshold
            if changes:
                policy = policy.model_copy(update=changes)
        prepared = await self.chat.prepare(
            tenant, chat_req, documents=scope.documents if scope else None, policy=policy
        )
        model = prepared.adapter.name if prepared.adapter else self.chat.base_model
        return Turn(prepared, req, model, search, scope)

    async def complete(self, turn: Turn) -> dict:
        out = await self.chat.complete(turn.prepared)
        choice = (out.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") or ""
        return turn.response("completed", turn.output(text), out.get("usage"),
                             choice.get("finish_reason"))

    async def events(
        self, turn: Turn, first: dict, chunks: AsyncIterator[dict]
    ) -> AsyncIterator[bytes]:
        """OpenAI's Responses event stream for an answer whose first engine chunk came."""
        seq = 0

        def event(kind: str, **data) -> bytes:
            nonlocal seq
            body = {"type": kind, "sequence_number": seq, **data}
            seq += 1
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"

        yield event("response.created", response=turn.response("in_progress", []))
        yield event("response.in_progress", response=turn.response("in_progress", []))
        output: list[dict] = []
        search = turn.search_item()
        if search is not None:
            at = {"output_index": 0, "item_id": turn.search_id}
            yield event("response.output_item.added", output_index=0,
                        item={**turn.search_item("in_progress"), "results": None})
            yield event("response.file_search_call.in_progress", **at)
            yield event("response.file_search_call.searching", **at)
            yield event("response.file_search_call.completed", **at)
            yield event("response.output_item.done", output_index=0, item=search)
            output.append(search)
        index = len(output)
        at = {"output_index": index, "item_id": turn.message_id, "content_index": 0}
        yield event("response.output_item.added", output_index=index,
                    item=turn.message("", "in_progress"))
        yield event("response.content_part.added", **at, part=turn.text_part("", []))
        text, usage, finish = "", None, None
        try:
            chunk: dict | None = first
            while chunk is not None:
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        text += delta
                        yield event("response.output_text.delta", **at, delta=delta, logprobs=[])
                    finish = choice.get("finish_reason") or finish
                usage = chunk.get("usage") or usage
                chunk = await anext(chunks, None)
        except APIError as exc:
            yield event("error", code=exc.code, message=exc.message, param=exc.param)
            failed = turn.response("failed", output, error={"code": exc.code,
                                                             "message": exc.message})
            yield event("response.failed", response=failed)
            return
        part = turn.text_part(text)
        for i, annotation in enumerate(part["annotations"]):
            yield event("response.output_text.annotation.added", **at, annotation_index=i,
                        annotation=annotation)
        yield event("response.output_text.done", **at, text=text, logprobs=[])
        yield event("response.content_part.done", **at, part=part)
        message = turn.message(text)
        yield event("response.output_item.done", output_index=index, item=message)
        output.append(message)
        done = turn.response("completed", output, usage, finish)
        kind = "response.incomplete" if done["status"] == "incomplete" else "response.completed"
        yield event(kind, response=done)


async def first_chunk(chunks: AsyncIterator[dict]) -> dict:
    """The engine's first chunk, before anything is answered: an engine that is down is a
    plain error status, not a stream that fails."""
    chunk = await anext(chunks, None)
    if chunk is None:
        raise UpstreamError("the LLM engine ended the stream before any token")
    return chunk


def _refuse_unkept(req: ResponsesRequest) -> None:
    kept = (("previous_response_id", req.previous_response_id is not None),
            ("conversation", req.conversation is not None),
            ("store", req.store is True))
    for param, given in kept:
        if given:
            raise InvalidRequest(
                f"'{param}' needs responses kept on the server, and ragtune keeps none (every "
                "response is store: false): send the earlier turns in 'input'",
                code="responses_not_stored", param=param)
    if req.background:
        raise InvalidRequest("background responses are not supported: answer in the request, "
                             "or stream it", code="unsupported_parameter", param="background")


def _file_search(req: ResponsesRequest) -> FileSearch | None:
    choice = req.tool_choice
    if isinstance(choice, dict) and choice.get("type") != "file_search":
        raise InvalidRequest(f"tool_choice {str(choice.get('type'))[:40]!r}: only file_search "
                             "runs here", code="unsupported_tool", param="tool_choice")
    if isinstance(choice, str) and choice not in ("auto", "required", "none"):
        raise InvalidRequest("tool_choice is auto, required, none or a file_search tool",
                             code="invalid_value", param="tool_choice")
    found = None
    for i, tool in enumerate(req.tools):
        if tool.get("type") != "file_search":
            raise InvalidRequest(
                f"tools[{i}] is {str(tool.get('type'))[:40]!r}: only the file_search tool runs "
                "here", code="unsupported_tool", param=f"tools.{i}.type")
        if found is not None:
            raise InvalidRequest("one file_search tool per request (name every vector store "
                                 "in it)", code="invalid_tools", param=f"tools.{i}")
        found = _search_tool(tool, i)
    if found is None and (choice == "required" or isinstance(choice, dict)):
        raise InvalidRequest("tool_choice asks for file_search, and no file_search tool "
                             "is given", code="invalid_value", param="tool_choice")
    return None if choice == "none" else found


def _search_tool(tool: dict, i: int) -> FileSearch:
    param = f"tools.{i}"
    known = {"type", "vector_store_ids", "max_num_results", "filters", "ranking_options"}
    extra = sorted(set(tool) - known)
    if extra:
        raise InvalidRequest(f"{param}: unknown field {extra[0][:40]!r}",
                             code="invalid_value", param=f"{param}.{extra[0][:40]}")
    ids = tool.get("vector_store_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
        raise InvalidRequest(f"{param}.vector_store_ids: a non-empty list of vector store ids",
                             code="invalid_value", param=f"{param}.vector_store_ids")
    top = tool.get("max_num_results")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool)
                            or not 1 <= top <= 50):
        raise InvalidRequest(f"{param}.max_num_results: an integer from 1 to 50",
                             code="invalid_value", param=f"{param}.max_num_results")
    filters = tool.get("filters")
    if filters is not None and not isinstance(filters, dict):
        raise InvalidRequest(f"{param}.filters: a comparison or compound filter",
                             code="invalid_filter", param=f"{param}.filters")
    ranking = tool.get("ranking_options") or {}
    threshold = ranking.get("score_threshold") if isinstance(ranking, dict) else None
    if not isinstance(ranking, dict) or (threshold is not None and (
            not isinstance(threshold, int | float) or isinstance(threshold, bool)
            or not 0 <= threshold <= 1)):
        raise InvalidRequest(f"{param}.ranking_options.score_threshold: a number from 0 to 1",
                             code="invalid_value", param=f"{param}.ranking_options")
    return FileSearch(ids, top, filters, None if threshold is None else float(threshold))


def _messages(req: ResponsesRequest) -> list[dict]:
    messages = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        if not req.input.strip():
            raise InvalidRequest("'input' is empty", code="invalid_input", param="input")
        return [*messages, {"role": "user", "content": req.input}]
    for i, item in enumerate(req.input):
        kind = item.get("type", "message")
        if kind == "file_search_call":
            continue  # an earlier turn's search, sent back with its output: nothing to run
        if kind != "message" or item.get("role") not in ("user", "assistant", "system",
                                                          "developer"):
            raise InvalidRequest(
                f"input[{i}]: only message items (role user, assistant, system or developer) "
                f"are supported here, not {str(item.get('role') or kind)[:40]!r}",
                code="unsupported_input", param=f"input.{i}")
        messages.append({"role": item["role"], "content": _text(item.get("content"), i)})
    if not any(m["role"] == "user" for m in messages):
        raise InvalidRequest("'input' holds no user message", code="invalid_input",
                             param="input")
    return messages


def _text(content, i: int) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"input[{i}].content: a string or a list of text parts",
                             code="invalid_input", param=f"input.{i}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"input[{i}].content[{j}]: only text parts are supported here, not "
                f"{str(kind)[:40]!r}", code="unsupported_input",
                param=f"input.{i}.content.{j}")
        texts.append(part["text"])
    return "".join(texts)


def _response_format(text: dict | None) -> dict | None:
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {"name": fmt.get("name") or "answer", "schema": fmt["schema"]}
        if "strict" in fmt:
            schema["strict"] = bool(fmt["strict"])
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("text.format is text, json_object or json_schema (with a schema)",
                         code="invalid_value", param="text.format")
