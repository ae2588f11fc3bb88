"""Every vLLM replica holds exactly the registry's routable adapters: on startup, on a timer and
when a replica comes back (a restarted vLLM has forgotten its runtime adapters). What to hold
comes from the registry, shared by all API replicas, never from this process's memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from adapters.hotswap import EngineAdapters
from core.errors import APIError
from core.registry.db import Registry
from core.registry.models import Adapter, AdapterVersion, utcnow

log = logging.getLogger("ragtune.adapters")


@dataclass(frozen=True)
class Desired:
    # (engine name, path) every replica should hold, most wanted first: current versions, and
    # retired ones inside their grace period.
    wanted: list[tuple[str, str]]
    # Versions another process is loading right now: kept where present, not loaded.
    loading: set[str]
    # Adapters left in `deleting` (tenant, name): a purge that did not finish (the process died).
    deleting: list[tuple[str, str]]


class Reconciler:
    def __init__(
        self,
        registry: Registry,
        engines: EngineAdapters,
        retire_grace_s: float,
        finish_delete: Callable[[str, str], None],
    ) -> None:
        self.registry = registry
        self.engines = engines
        self.retire_grace_s = retire_grace_s
        self.finish_delete = finish_delete  # (tenant, name): purge it, unless already purging

    def desired(self) -> Desired:
        grace = utcnow() - timedelta(seconds=self.retire_grace_s)
        with self.registry.session() as s:
            rows = s.execute(
                select(AdapterVersion.engine_name, AdapterVersion.path, AdapterVersion.state,
                       AdapterVersion.retired_at, Adapter.updated_at)
                .join(Adapter, (Adapter.tenant_id == AdapterVersion.tenant_id)
                      & (Adapter.name == AdapterVersion.name))
                .where(Adapter.state == "live",
                       AdapterVersion.state.in_(("ready", "retired", "loading")))
            ).all()
            deleting = s.execute(
                select(Adapter.tenant_id, Adapter.name).where(Adapter.state == "deleting")
            ).all()
        wanted, loading = [], set()
        for ename, path, state, retired_at, updated in rows:
            if state == "loading":
                loading.add(ename)
            elif state == "ready" or (retired_at is not None and _aware(retired_at) >= grace):
                wanted.append((ename, path, _aware(updated)))
        # Recently used here first, then recently changed.
        order = {n: i for i, n in enumerate(self._recently_used())}
        wanted.sort(key=lambda w: (-order.get(w[0], -1), -w[2].timestamp()))
        return Desired([(n, p) for n, p, _ in wanted], loading, [tuple(d) for d in deleting])

    def _recently_used(self) -> list[str]:
        seen: dict[str, None] = {}
        for resident in self.engines.resident.values():
            for name in resident:  # least recently used first
                seen.pop(name, None)
                seen[name] = None
        return list(seen)

    async def run(self) -> None:
        desired = await asyncio.to_thread(self.desired)
        for tenant_id, name in desired.deleting:
            self.finish_delete(tenant_id, name)
        for replica in self.engines.pool.replicas:
            if not replica.healthy:
                continue
            try:
                await self.engines.sync_replica(replica, desired.wanted, keep=desired.loading)
            except APIError as exc:
                log.warning("reconcile of %s failed: %s", replica.url, exc.message)


def _aware(ts: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC).
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
