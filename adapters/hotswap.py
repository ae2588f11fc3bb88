"""Which LoRA adapters each vLLM replica holds, kept in step by ragtune.

vLLM's runtime endpoints (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`) act on one replica
and are forgotten when it restarts; ragtune owns the desired state (the registry) and brings every
replica to it. Names are versioned (`<tenant>--<name>--v<N>`) and never reloaded in place, so a new
version is a new name and traffic switches by name.

A replica holds at most `max_resident` of ragtune's adapters; one more is loaded on demand and the
least recently used that has no request in flight goes first. Adapters whose name does not look
like ragtune's, or that the engine loaded from outside this deployment's adapter root (another
deployment sharing the engine), are somebody else's and are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Collection, Iterable

import orjson

from core.engine_pool import EnginePool, Replica
from core.errors import AdapterError, EngineUnavailable

log = logging.getLogger("ragtune.adapters")

MANAGED_NAME = re.compile(r"^[a-z0-9-]+--[A-Za-z0-9._-]+--v[0-9]+$")


def engine_name(tenant_id: str, name: str, version: int) -> str:
    return f"{tenant_id}--{name}--v{version}"


class EngineAdapters:
    def __init__(
        self,
        pool: EnginePool,
        *,
        max_resident: int,
        load_timeout_s: float = 120.0,
        metrics=None,
        root: str | os.PathLike | None = None,
    ) -> None:
        self.pool = pool
        # This deployment's adapter root: an adapter the engine loaded from elsewhere is another
        # deployment's sharing the engine (or an operator's), and reconcile leaves it alone.
        self.root = os.path.realpath(root) if root is not None else None
        self.max_resident = max(1, max_resident)
        self.load_timeout_s = load_timeout_s
        self.metrics = metrics
        # Per replica, ragtune's adapters it holds (name -> path), least recently used first.
        self.resident: dict[Replica, OrderedDict[str, str]] = {
            r: OrderedDict() for r in pool.replicas
        }
        self.inflight: Counter[str] = Counter()
        self._locks: dict[Replica, asyncio.Lock] = {r: asyncio.Lock() for r in pool.replicas}

    def _ours(self, path: str) -> bool:
        if self.root is None:
            return True
        real = os.path.realpath(path) if path else ""
        return real == self.root or real.startswith(self.root + os.sep)

    # ---- one replica ---------------------------------------------------------------------
    async def held_by(self, replica: Replica) -> dict[str, str]:
        """The adapters a replica holds now, as vLLM lists them (name -> path)."""
        status, raw = await self.pool.admin(replica, "GET", "/v1/models", timeout_s=10)
        if status != 200:
            raise EngineUnavailable(f"engine replica {replica.url} /v1/models answered {status}")
        cards = orjson.loads(raw).get("data", [])
        return {c["id"]: c.get("root") or "" for c in cards if c.get("parent")}

    async def _load(self, replica: Replica, name: str, path: str) -> None:
        started = time.perf_counter()
        status, raw = await self.pool.admin(
            replica, "POST", "/v1/load_lora_adapter",
            {"lora_name": name, "lora_path": path}, timeout_s=self.load_timeout_s,
        )
        text = raw.decode(errors="replace")
        # 400 "already been loaded": the same name is the same version (never reloaded in place).
        if status != 200 and not (status == 400 and "already been loaded" in text):
            if status >= 500 and "not found" not in text.lower():
                # vLLM's loader itself refused what validation accepted.
                raise AdapterError(
                    f"the engine could not load the adapter: {text[:500]}",
                    code="engine_rejected_adapter",
                )
            if status == 404 or "not found" in text.lower():
                raise AdapterError(
                    f"the engine cannot read the adapter at {path}: is the adapter root the "
                    f"same path on the engine's side? ({text[:300]})",
                    code="adapter_not_readable_by_engine",
                )
            raise EngineUnavailable(f"engine replica {replica.url} failed to load: {text[:300]}")
        self.resident[replica][name] = path
        if self.metrics:
            self.metrics.observe_adapter_load(time.perf_counter() - started)
        log.info("adapter %s loaded on %s", name, replica.url)

    async def _unload(self, replica: Replica, name: str) -> None:
        status, raw = await self.pool.admin(
            replica, "POST", "/v1/unload_lora_adapter", {"lora_name": name}, timeout_s=30
        )
        if status not in (200, 404) and b"not found" not in raw.lower():
            raise EngineUnavailable(
                f"engine replica {replica.url} failed to unload {name}: {raw[:300]!r}"
            )
        self.resident[replica].pop(name, None)
        if self.metrics:
            self.metrics.adapter_unloads.inc()
        log.info("adapter %s unloaded from %s", name, replica.url)

    async def _make_room(self, replica: Replica, keep: str) -> None:
        resident = self.resident[replica]
        while len(resident) >= self.max_resident:
            victim = next((n for n in resident if n != keep and not self.inflight[n]), None)
            if victim is None:
                return  # everything is busy: go over the cap rather than fail a request
            await self._unload(replica, victim)

    async def _ensure_on(self, replica: Replica, name: str, path: str) -> None:
        async with self._locks[replica]:
            resident = self.resident[replica]
            if name in resident:
                resident.move_to_end(name)
                return
            await self._make_room(replica, name)
            await self._load(replica, name, path)

    # ---- every replica -------------------------------------------------------------------
    def _healthy(self) -> list[Replica]:
        healthy = [r for r in self.pool.replicas if r.healthy]
        if not healthy:
            raise EngineUnavailable("the LLM engine is not available (starting or restarting)")
        return healthy

    async def ensure(self, name: str, path: str) -> None:
        """Loaded on every healthy replica (a no-op when it is: the request path calls this)."""
        replicas = self._healthy()
        if all(name in self.resident[r] for r in replicas):
            for r in replicas:
                self.resident[r].move_to_end(name)
            return
        await asyncio.gather(*(self._ensure_on(r, name, path) for r in replicas))

    async def load_everywhere(self, name: str, path: str) -> None:
        """Load on every healthy replica, or on none: a failure unloads what was loaded."""
        replicas = self._healthy()
        results = await asyncio.gather(
            *(self._ensure_on(r, name, path) for r in replicas), return_exceptions=True
        )
        failures = [e for e in results if isinstance(e, BaseException)]
        if failures:
            await self.unload_everywhere(name)
            raise failures[0]

    async def unload_everywhere(self, name: str) -> None:
        """Unload from every reachable replica (one that is down forgets it, or the next
        reconcile removes it when it comes back)."""
        for replica in self.pool.replicas:
            if not replica.healthy:
                self.resident[replica].pop(name, None)
                continue
            try:
                async with self._locks[replica]:
                    await self._unload(replica, name)
            except EngineUnavailable as exc:
                log.warning("%s", exc)

    def forget(self, name: str) -> None:
        """A replica answered that it does not hold `name` (another process evicted it)."""
        for resident in self.resident.values():
            resident.pop(name, None)

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[None]:
        """Marks a request in flight on `name`: it is neither evicted nor retired meanwhile."""
        self.inflight[name] += 1
        try:
            yield
        finally:
            self.inflight[name] -= 1
            if not self.inflight[name]:
                del self.inflight[name]

    async def wait_idle(self, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.inflight[name] and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter
            await asyncio.sleep(0.05)

    async def sync_replica(
        self,
        replica: Replica,
        desired: Iterable[tuple[str, str]],
        keep: Collection[str] = (),
    ) -> None:
        """Bring one replica to `desired` ((name, path), most wanted first): ragtune's adapters
        in neither it nor `keep` go (unless in flight), missing ones are loaded up to
        `max_resident`."""
        wanted = dict(desired)
        async with self._locks[replica]:
            held = await self.held_by(replica)
            mine = {n: p for n, p in held.items() if MANAGED_NAME.match(n) and self._ours(p)}
            resident = self.resident[replica]
            for name in list(resident):
                if name not in mine:
                    del resident[name]  # the replica restarted, or someone unloaded it
            for name, path in mine.items():
                if name not in wanted and name not in keep and not self.inflight[name]:
                    await self._unload(replica, name)
                elif name not in resident:
                    resident[name] = path
            for name, path in wanted.items():
                if len(resident) >= self.max_resident:
                    break
                if name not in resident:
                    await self._load(replica, name, path)
        if self.metrics:
            self.metrics.adapters_loaded.labels(str(self.pool.replicas.index(replica))).set(
                len(self.resident[replica])
            )
