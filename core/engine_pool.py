"""vLLM replicas behind one client: health-checked, least-outstanding-requests balancing.

ragtune only talks HTTP to vLLM (OpenAI server). Requests go to the healthy replica with the fewest
requests in flight; a replica that refuses a connection is marked down at once and the request is
retried on another, since nothing reached the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson

from core.errors import APIError, EngineUnavailable, InvalidRequest, ModelNotLoaded, UpstreamError

log = logging.getLogger("ragtune.llm")


@dataclass(eq=False)
class Replica:
    url: str
    healthy: bool = False
    inflight: int = 0
    failures: int = 0
    listeners: list = field(default_factory=list)


class EnginePool:
    def __init__(
        self,
        urls: list[str],
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 300.0,
        health_interval_s: float = 2.0,
    ) -> None:
        if not urls:
            raise ValueError("at least one engine URL is needed")
        self.replicas = [Replica(u.rstrip("/")) for u in urls]
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, sock_connect=connect_timeout_s
        )
        self._health_interval = health_interval_s
        self._session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task | None = None
        self.on_health_change: list = []

    async def start(self) -> None:
        # No connection limit: the engine does its own batching and queueing.
        self._session = aiohttp.ClientSession(
            # Shorter than the engine's own keep-alive (uvicorn's 5 s, vLLM's server), so that a
            # pooled connection is dropped here before the engine closes it.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
            timeout=self._timeout,
            headers=self._headers,
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        await self.check_all()
        self._health_task = asyncio.create_task(self._health_loop(), name="engine-health")

    async def close(self) -> None:
        if self._health_task:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self._session:
            await self._session.close()

    @property
    def healthy_count(self) -> int:
        return sum(r.healthy for r in self.replicas)

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(r) for r in self.replicas))

    async def _check(self, replica: Replica) -> None:
        try:
            async with self._session.get(
                f"{replica.url}/health", timeout=aiohttp.ClientTimeout(total=3)
            ) as resp:
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        self._set_health(replica, ok)

    def _set_health(self, replica: Replica, ok: bool) -> None:
        if ok != replica.healthy:
            log.info("engine replica %s is %s", replica.url, "up" if ok else "down")
            replica.healthy = ok
            for callback in self.on_health_change:
                callback(replica, ok)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            await self.check_all()

    def pick(self, exclude: set[Replica] = frozenset()) -> Replica:
        candidates = [r for r in self.replicas if r.healthy and r not in exclude]
        if not candidates:
            raise EngineUnavailable("the LLM engine is not available (starting or restarting)")
        return min(candidates, key=lambda r: r.inflight)

    @contextlib.asynccontextmanager
    async def _post(self, path: str, body: dict) -> AsyncIterator[aiohttp.ClientResponse]:
        tried: set[Replica] = set()
        retried: set[Replica] = set()
        retry_same: Replica | None = None
        while True:
            replica = retry_same or self.pick(tried)
            retry_same = None
            tried.add(replica)
            replica.inflight += 1
            try:
                try:
                    resp = await self._session.post(f"{replica.url}{path}", json=body)
                except TimeoutError as exc:
                    # First: TimeoutError is an OSError, and aiohttp's ServerTimeoutError a
                    # connection error too. A slow engine has the request: neither mark the
                    # replica down nor send the request a second time.
                    raise EngineUnavailable("the LLM engine did not answer in time") from exc
                except (aiohttp.ClientConnectionError, OSError) as exc:
                    # Refused/reset before the engine took the request: safe to send again.
                    # A pooled connection the engine closed while idle fails this way too, so
                    # the same replica gets one more try on a fresh connection before it is
                    # marked down and the request goes elsewhere.
                    if replica not in retried:
                        retried.add(replica)
                        retry_same = replica
                        continue
                    log.warning("engine replica %s failed: %s", replica.url, exc)
                    self._set_health(replica, False)
                    continue
                async with resp:
                    if resp.status >= 400:
                        raise await _upstream_error(resp)
                    yield resp
                return
            finally:
                replica.inflight -= 1

    async def admin(
        self, replica: Replica, method: str, path: str, body: dict | None = None,
        timeout_s: float = 60.0,
    ) -> tuple[int, bytes]:
        """One request to one replica (the runtime LoRA endpoints, /v1/models): status and body.
        Raises EngineUnavailable when the replica cannot be reached."""
        try:
            async with self._session.request(
                method, f"{replica.url}{path}", json=body,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EngineUnavailable(f"engine replica {replica.url} did not answer: {exc}") from exc

    async def post_json(self, path: str, body: dict) -> dict:
        async with self._post(path, body) as resp:
            try:
                return orjson.loads(await resp.read())
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise EngineUnavailable("the LLM engine stopped mid-answer") from exc

    async def stream(self, path: str, body: dict) -> AsyncIterator[bytes]:
        """Yield the `data:` payloads of an SSE response, up to (not including) [DONE]."""
        async with self._post(path, body) as resp:
            buf = b""
            try:
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while b"\n\n" in buf:
                        event, buf = buf.split(b"\n\n", 1)
                        for line in event.split(b"\n"):
                            if line.startswith(b"data: "):
                                data = line[6:]
                                if data == b"[DONE]":
                                    return
                                yield data
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise EngineUnavailable("the LLM engine stopped mid-stream") from exc
            raise EngineUnavailable("the LLM engine closed the stream before it ended")


async def _upstream_error(resp: aiohttp.ClientResponse) -> APIError:
    raw = await resp.read()
    try:
        err = orjson.loads(raw)
        err = err.get("error", err)
        message = err.get("message") or str(err)
    except (orjson.JSONDecodeError, AttributeError):
        message = raw.decode(errors="replace")[:500]
    if resp.status == 400 or resp.status == 422:
        lowered = message.lower()
        if (
            "context length" in lowered
            or "maximum model length" in lowered
            or ("max_tokens" in lowered and "too large" in lowered)
        ):
            return InvalidRequest(message, code="context_length_exceeded", param="messages")
        return InvalidRequest(message, code="invalid_request")
    if resp.status in (502, 503, 504):
        return EngineUnavailable(f"the LLM engine is unavailable: {message}")
    if resp.status == 404:
        return ModelNotLoaded(f"the LLM engine does not serve this model: {message}")
    return UpstreamError(f"the LLM engine failed ({resp.status}): {message}")
