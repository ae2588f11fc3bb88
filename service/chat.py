"""The chat flow: tenant policy -> path -> messages -> engine -> OpenAI response plus `route`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.context import fit_to_budget, with_context
from service.errors import APIError, InvalidRequest, NotFound, UpstreamError, error_body
from service.llm.pool import EnginePool
from service.metrics import Metrics
from service.policy import RouteDecision, decide_auto, requested_path
from service.rag import RetrievalUnavailable, Retriever, citations
from service.settings import LimitSettings
from service.tenants import TenantView

# OpenAI sampling fields we pass through to vLLM; anything else in the body is ignored.
FORWARDED = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "user",
)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if isinstance(p, dict))
        return self.content or ""


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
    route: Literal["prompt", "rag", "adapter_rag"] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n


class ChatService:
    def __init__(
        self,
        pool: EnginePool,
        metrics: Metrics,
        limits: LimitSettings,
        base_model: str,
        retriever: Retriever,
    ) -> None:
        self.pool = pool
        self.retriever = retriever
        self.count_tokens = retriever.embedder.count_tokens
        self.metrics = metrics
        self.limits = limits
        self.base_model = base_model

    def _check_limits(self, req: ChatRequest) -> int:
        lim = self.limits
        if len(req.messages) > lim.max_messages:
            raise InvalidRequest(
                f"at most {lim.max_messages} messages per request",
                code="too_many_messages",
                param="messages",
            )
        for i, m in enumerate(req.messages):
            if len(m.text()) > lim.max_message_chars:
                raise InvalidRequest(
                    f"messages[{i}] is longer than {lim.max_message_chars} characters",
                    code="message_too_long",
                    param=f"messages.{i}.content",
                )
        max_tokens = req.max_completion_tokens or req.max_tokens or lim.default_max_tokens
        if max_tokens > lim.max_tokens:
            raise InvalidRequest(
                f"max_tokens may be at most {lim.max_tokens}",
                code="max_tokens_too_large",
                param="max_tokens",
            )
        return max_tokens

    def _resolve_model(self, req: ChatRequest) -> None:
        if req.model in (None, "", "auto", self.base_model):
            return
        raise NotFound(
            f"The model '{req.model}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )

    async def prepare(
        self, tenant: TenantView, req: ChatRequest
    ) -> tuple[RouteDecision, dict, list[dict]]:
        """Decide the path, retrieve where it needs it, and build the engine request."""
        max_tokens = self._check_limits(req)
        self._resolve_model(req)
        policy = tenant.policy
        wanted = requested_path(policy, req.route)
        context: list[str] = []
        cited: list[dict] = []
        if wanted == "prompt":
            why = _forced_why("prompt", req.route)
            decision = RouteDecision("prompt", why)
        else:
            decision, context, cited = await self._with_retrieval(tenant, req, wanted)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        if policy.system_prompt:
            messages = _with_system_prompt(messages, policy.system_prompt)
        messages = with_context(messages, context)
        body: dict[str, Any] = {
            "model": self.base_model,
            "messages": messages,
            "max_tokens": max_tokens,
        }
        for name in FORWARDED:
            value = getattr(req, name, None)
            if value is not None:
                body[name] = value
        return decision, body, cited

    async def _with_retrieval(self, tenant: TenantView, req: ChatRequest, wanted: str):
        policy = tenant.policy
        query = _last_user_text(req.messages)
        try:
            retrieval = await asyncio.to_thread(
                self.retriever.retrieve, tenant.id, query, policy.top_k
            )
        except RetrievalUnavailable as exc:
            if policy.on_retrieval_error == "fail":
                raise
            reason = (
                f"the knowledge base is unavailable ({exc.message}); degraded to the prompt path "
                "as the tenant's policy allows"
            )
            return RouteDecision("prompt", reason, signals={"retrieval": "down"}), [], []
        self.metrics.observe_retrieval(retrieval.seconds)
        if wanted == "auto":
            decision = decide_auto(policy, retrieval.top_score)
        else:
            why = _forced_why("rag", req.route)
            top = retrieval.top_score
            decision = RouteDecision("rag", why, signals={"top_score": _round(top)})
        if decision.path != "rag":
            return decision, [], []
        hits = [h for h in retrieval.hits if h.score >= policy.min_score]
        texts = fit_to_budget([h.text for h in hits], policy.context_max_tokens, self.count_tokens)
        if not texts:
            decision.reason += (
                f"; no chunk scored above the floor {policy.min_score:.2f}, "
                "so the model answers without context"
            )
        decision.signals["chunks"] = len(texts)
        cited = citations(hits[: len(texts)])
        for c, text in zip(cited, texts, strict=True):
            c["text"] = text
        return decision, texts, cited

    async def complete(self, decision: RouteDecision, body: dict, cited: list[dict]) -> dict:
        started = time.perf_counter()
        status = "5xx"
        try:
            out = await self.pool.post_json("/v1/chat/completions", body)
            status = "2xx"
        except APIError as exc:
            status = f"{exc.status // 100}xx"
            raise
        finally:
            self.metrics.observe_chat(decision.path, status, time.perf_counter() - started)
        out["model"] = self.base_model
        out["route"] = decision.as_dict()
        out["citations"] = cited
        usage = out.get("usage") or {}
        self.metrics.count_tokens(
            decision.path, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        )
        return out

    async def stream(
        self, decision: RouteDecision, body: dict, cited: list[dict], include_usage: bool
    ) -> AsyncIterator[bytes]:
        """SSE bytes: vLLM's chunks, the first one carrying route and citations, then [DONE].
        A failure after the first byte ends the stream with an error event, never a silent cut."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        first = True
        status = "2xx"
        try:
            async for data in self.pool.stream("/v1/chat/completions", body):
                chunk = orjson.loads(data)
                if "error" in chunk:
                    err = chunk["error"]
                    raise UpstreamError(err.get("message", "the LLM engine failed mid-stream"))
                if first:
                    self.metrics.observe_ttft(decision.path, time.perf_counter() - started)
                    chunk["route"] = decision.as_dict()
                    chunk["citations"] = cited
                    first = False
                chunk["model"] = self.base_model
                usage = chunk.get("usage")
                if usage and not chunk.get("choices"):
                    self.metrics.count_tokens(
                        decision.path,
                        usage.get("prompt_tokens", 0),
                        usage.get("completion_tokens", 0),
                    )
                    if not include_usage:
                        continue
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        except APIError as exc:
            status = f"{exc.status // 100}xx"
            if first:
                raise
            yield b"data: " + orjson.dumps(error_body(exc.message, exc.type, exc.code)) + b"\n\n"
        finally:
            self.metrics.observe_chat(decision.path, status, time.perf_counter() - started)
        yield b"data: [DONE]\n\n"


def _last_user_text(messages: list[Message]) -> str:
    for m in reversed(messages):
        if m.role == "user":
            return m.text()
    return messages[-1].text()


def _forced_why(path: str, route: str | None) -> str:
    if route:
        return f"the request forced route '{path}'"
    return f"the tenant's policy mode is '{path}'"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _with_system_prompt(messages: list[dict], system_prompt: str) -> list[dict]:
    if messages and messages[0]["role"] in ("system", "developer"):
        first = dict(messages[0])
        first["role"] = "system"
        first["content"] = f"{system_prompt}\n\n{Message(**messages[0]).text()}"
        return [first, *messages[1:]]
    return [{"role": "system", "content": system_prompt}, *messages]
