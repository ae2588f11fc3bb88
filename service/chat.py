"""The chat flow: tenant policy -> path -> messages -> engine -> OpenAI response plus `route`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from adapters.service import AdapterService, ServedAdapter
from core.engine_pool import EnginePool
from core.errors import (
    APIError,
    InvalidRequest,
    ModelNotLoaded,
    NotFound,
    RateLimited,
    UpstreamError,
    error_body,
)
from core.metrics import Metrics
from core.settings import LimitSettings
from ingest.context import with_context
from service.limits import RateLimiter
from service.path_router import PathRouter, Routed, context_plan
from service.policy import Policy, RouteDecision
from service.protocol import ChatRequest, Message
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


@dataclass
class Prepared:
    """A request ready for the engine: where it goes, why, and what it cites."""

    routed: Routed
    body: dict
    tenant_id: str
    policy: Policy
    engine_seconds: float | None = None  # the engine's answer, once a non-streamed one came
    request: ChatRequest | None = None  # what the client sent: a re-route after a hot swap

    @property
    def decision(self) -> RouteDecision:
        return self.routed.decision

    @property
    def adapter(self) -> ServedAdapter | None:
        return self.routed.adapter

    def headers(self) -> dict[str, str]:
        """What every answer to it says, an error after the decision too: its path and
        Server-Timing."""
        return {"X-Route": self.decision.path, "Server-Timing": self.server_timing()}

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """An APIError raised inside (the engine refused or failed) carries `headers()`."""
        try:
            yield
        except APIError as exc:
            exc.headers = {**exc.headers, **self.headers()}
            raise

    def server_timing(self) -> str:
        """The W3C `Server-Timing` header, in milliseconds: what deciding the path took
        (`route`, all of it), the steps of it that ran (`registry` reads, the query's `embed`,
        the `search`) and, for a non-streamed answer, what the engine took (`engine`)."""
        out = f'route;dur={self.routed.seconds * 1e3:.2f};desc="route decision"'
        for name, seconds in self.routed.steps.items():
            out += f", {name};dur={seconds * 1e3:.2f}"
        if self.engine_seconds is not None:
            out += f', engine;dur={self.engine_seconds * 1e3:.2f};desc="engine answer"'
        return out


class ChatService:
    def __init__(
        self,
        pool: EnginePool,
        metrics: Metrics,
        limits: LimitSettings,
        base_model: str,
        router: PathRouter,
        adapters: AdapterService | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.pool = pool
        self.limiter = limiter
        self.router = router
        self.adapters = adapters
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

    async def _named_adapter(self, tenant_id: str, model: str | None) -> ServedAdapter | None:
        """`model`: auto/base (None: the policy decides) or one of the tenant's adapters."""
        if model in (None, "", "auto", self.base_model):
            return None
        if self.adapters is not None:
            found = await asyncio.to_thread(self.adapters.served, tenant_id, model)
            if found:
                return found[0]
        # Another tenant's adapter is exactly as unknown as a name nobody registered.
        raise NotFound(
            f"The model '{model}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )

    async def admit(self, tenant: TenantView) -> None:
        """Count one request against the tenant's limits (429 rate_limit_exceeded when one is
        reached); chat and embeddings alike."""
        policy = tenant.policy
        if self.limiter is not None and (policy.requests_per_minute or policy.tokens_per_day):
            try:
                await asyncio.to_thread(self.limiter.admit, tenant.id, policy)
            except RateLimited as exc:
                self.metrics.count_rate_limited(exc.limit)
                raise

    async def prepare(
        self, tenant: TenantView, req: ChatRequest, pinned: ServedAdapter | None = None,
        documents: frozenset[str] | None = None, policy: Policy | None = None,
    ) -> Prepared:
        """Decide the path, retrieve where it needs it, and build the engine request.
        `pinned`: a given adapter version instead of the one `req.model` names (evaluations);
        `documents`: retrieval only over these (a file_search tool's vector stores), and the
        request asks for retrieval; `policy`: the tenant's, with the request's overrides."""
        max_tokens = self._check_limits(req)
        policy = policy or tenant.policy
        await self.admit(tenant)
        named = pinned or await self._named_adapter(tenant.id, req.model)
        routed = await self.router.route(
            tenant.id, policy, last_user_text(req.messages), req.route, named, documents
        )
        body: dict[str, Any] = {
            "model": routed.adapter.engine_name if routed.adapter else self.base_model,
            "messages": _engine_messages(req, policy, routed),
            "max_tokens": max_tokens,
        }
        for name in FORWARDED:
            value = getattr(req, name, None)
            if value is not None:
                body[name] = value
        return Prepared(routed, body, tenant.id, policy, request=req)

    def _served_as(self, p: Prepared) -> str:
        return p.adapter.name if p.adapter else self.base_model

    @contextlib.asynccontextmanager
    async def _engine_slot(self, p: Prepared) -> AsyncIterator[None]:
        """For adapter requests: the adapter is loaded everywhere and stays while this runs."""
        if p.adapter is None:
            yield
            return
        engines = self.adapters.engines
        await engines.ensure(p.adapter.engine_name, p.adapter.path)
        self.metrics.count_adapter_request(p.adapter.label)
        async with engines.use(p.adapter.engine_name):
            yield

    async def _reroute_adapter(self, p: Prepared) -> None:
        """The replica lacked the adapter (another API process evicted it, or it was swapped
        for a newer version meanwhile): take the adapter's current version and load it."""
        self.adapters.engines.forget(p.adapter.engine_name)
        now = await asyncio.to_thread(self.adapters.served, p.tenant_id, p.adapter.name)
        if not now:
            raise NotFound(f"The model '{p.adapter.name}' does not exist any more.",
                           code="model_not_found", param="model")
        current = now[0]
        if p.request is not None and context_plan(p.policy, current) != context_plan(
            p.policy, p.adapter
        ):
            # The new version was trained with other context (another top_k, floor or budget,
            # or none): route again as a request naming it would be, so it gets its own.
            p.routed = await self.router.route(
                p.tenant_id, p.policy, last_user_text(p.request.messages), p.request.route,
                current,
            )
            p.body["messages"] = _engine_messages(p.request, p.policy, p.routed)
        else:
            p.routed.adapter = current
            p.routed.decision.adapter = current.label
        p.body["model"] = current.engine_name

    async def complete(self, p: Prepared) -> dict:
        started = time.perf_counter()
        status = "5xx"
        path = p.decision.path
        try:
            for attempt in (1, 2):
                try:
                    async with self._engine_slot(p):
                        out = await self.pool.post_json("/v1/chat/completions", p.body)
                    break
                except ModelNotLoaded:
                    if p.adapter is None or attempt == 2:
                        raise
                    await self._reroute_adapter(p)
            status = "2xx"
        except APIError as exc:
            status = f"{exc.status // 100}xx"
            raise
        finally:
            p.engine_seconds = time.perf_counter() - started
            self.metrics.observe_chat(path, status, p.engine_seconds)
        out["model"] = self._served_as(p)
        out["route"] = p.decision.as_dict()
        out["citations"] = p.routed.cited
        await self._count_usage(p, out.get("usage") or {})
        return out

    async def _count_usage(self, p: Prepared, usage: dict) -> None:
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        self.metrics.count_tokens(p.decision.path, prompt, completion)
        await self.spend(p.tenant_id, p.policy, prompt + completion)

    async def spend(self, tenant_id: str, policy: Policy, tokens: int) -> None:
        """Count tokens against the tenant's day budget (chat and embeddings alike)."""
        if self.limiter is not None and policy.tokens_per_day:
            await asyncio.to_thread(self.limiter.spend_tokens, tenant_id, policy, tokens)

    async def chunks(self, p: Prepared) -> AsyncIterator[dict]:
        """The engine's `chat.completion.chunk`s, the first one carrying route and citations,
        the last one the usage (counted here). Raises APIError when the engine fails, before
        the first chunk or after it."""
        body = {**p.body, "stream": True, "stream_options": {"include_usage": True}}
        path = p.decision.path
        started = time.perf_counter()
        first = True
        status = "2xx"
        try:
            for attempt in (1, 2):
                try:
                    async with self._engine_slot(p):
                        body["model"] = p.body["model"]
                        async for data in self.pool.stream("/v1/chat/completions", body):
                            chunk = orjson.loads(data)
                            if "error" in chunk:
                                err = chunk["error"]
                                raise UpstreamError(
                                    err.get("message", "the LLM engine failed mid-stream")
                                )
                            if first:
                                self.metrics.observe_ttft(path, time.perf_counter() - started)
                                chunk["route"] = p.decision.as_dict()
                                chunk["citations"] = p.routed.cited
                                first = False
                            chunk["model"] = self._served_as(p)
                            usage = chunk.get("usage")
                            if usage and not chunk.get("choices"):
                                await self._count_usage(p, usage)
                            yield chunk
                    break
                except ModelNotLoaded:
                    if p.adapter is None or attempt == 2 or not first:
                        raise
                    await self._reroute_adapter(p)
        except APIError as exc:
            status = f"{exc.status // 100}xx"
            raise
        finally:
            self.metrics.observe_chat(path, status, time.perf_counter() - started)

    async def stream(self, p: Prepared, include_usage: bool) -> AsyncIterator[bytes]:
        """SSE bytes: vLLM's chunks, the first one carrying route and citations, then [DONE].
        A failure after the first byte ends the stream with an error event, never a silent cut."""
        started = False
        try:
            async for chunk in self.chunks(p):
                started = True
                if chunk.get("usage") and not chunk.get("choices") and not include_usage:
                    continue
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        except APIError as exc:
            if not started:
                raise
            yield b"data: " + orjson.dumps(error_body(exc.message, exc.type, exc.code)) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def models(self, tenant_id: str, created: int) -> dict:
        """OpenAI's model list: the base model (`created`: when this process started serving
        it), then the tenant's ready adapters (each when its served version was registered)."""
        base = self.base_model
        adapters = []
        if self.adapters is not None:
            adapters = (await asyncio.to_thread(self.adapters.list, tenant_id))["data"]
        return {
            "object": "list",
            "data": [
                {"id": base, "object": "model", "created": created, "owned_by": "ragtune",
                 "parent": None, "root": base}
            ]
            + [
                {"id": a["name"], "object": "model", "created": _unix(a["created_at"]),
                 "owned_by": tenant_id,
                 "parent": base, "root": base, "version": a["version"]}
                for a in adapters
            ],
        }

    async def explain(self, tenant: TenantView, queries: list[str]) -> dict:
        """The decision `auto` would take for each query, with its signals, without the LLM."""
        policy = Policy.model_validate({**tenant.policy.model_dump(), "mode": "auto"})
        out = []
        for q in queries:
            routed = await self.router.route(tenant.id, policy, q, None, None)
            out.append({"query": q, "route": routed.decision.as_dict()})
        return {"object": "list", "data": out, "policy": tenant.policy.model_dump()}


def _unix(iso: str) -> int:
    """A registry timestamp as Unix seconds (SQLite's come back without a zone: UTC)."""
    at = datetime.fromisoformat(iso)
    return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp())


def last_user_text(messages: list[Message]) -> str:
    for m in reversed(messages):
        if m.role == "user":
            return m.text()
    return messages[-1].text()


def _with_system_prompt(messages: list[dict], system_prompt: str) -> list[dict]:
    if messages and messages[0]["role"] in ("system", "developer"):
        first = dict(messages[0])
        first["role"] = "system"
        first["content"] = f"{system_prompt}\n\n{Message(**messages[0]).text()}"
        return [first, *messages[1:]]
    return [{"role": "system", "content": system_prompt}, *messages]


def _engine_messages(req: ChatRequest, policy: Policy, routed: Routed) -> list[dict]:
    """The conversation the engine gets: the client's messages, the tenant's system prompt,
    and the retrieved context the route gathered."""
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    if policy.system_prompt:
        messages = _with_system_prompt(messages, policy.system_prompt)
    return with_context(messages, routed.context)
