"""Per-tenant rate limits, enforced across API replicas through the shared registry.

Fixed windows (a minute for requests, a UTC day for tokens), one counter row per tenant, kind and
window, incremented with one atomic upsert (`INSERT .. ON CONFLICT DO UPDATE .. RETURNING`, on
both SQLite and PostgreSQL). A request over the limit is 429 `rate_limit_exceeded` with
`Retry-After` = seconds until its window ends. Tokens are counted when an answer ends (prompt +
completion, from the engine's usage), so a day's budget is checked before a request and may be
passed by the request that crosses it. Tenants without limits cost nothing here.
"""

from __future__ import annotations

import math
import time

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from core.errors import RateLimited
from core.registry.db import Registry
from core.registry.models import UsageCounter
from service.policy import Policy

WINDOWS = {"requests": 60, "tokens": 86_400}
USAGE_FIELDS = {"requests": "requests_this_minute", "tokens": "tokens_today"}


class RateLimiter:
    def __init__(self, registry: Registry, clock=time.time) -> None:
        self.registry = registry
        self.clock = clock
        dialect = registry.engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

    def _window(self, kind: str) -> tuple[int, float]:
        now = self.clock()
        size = WINDOWS[kind]
        start = int(now // size * size)
        return start, start + size - now

    def _add(self, tenant_id: str, kind: str, n: int) -> tuple[int, float]:
        start, left = self._window(kind)
        stmt = self._insert(UsageCounter).values(
            tenant_id=tenant_id, kind=kind, window_start=start, used=n
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant_id", "kind", "window_start"],
            set_={"used": UsageCounter.used + n},
        ).returning(UsageCounter.used)
        with self.registry.session() as s:
            used = s.execute(stmt).scalar_one()
            if used == n:  # first of its window: the tenant's older windows can go
                s.execute(delete(UsageCounter).where(
                    UsageCounter.tenant_id == tenant_id, UsageCounter.kind == kind,
                    UsageCounter.window_start < start,
                ))
        return used, left

    def _used(self, tenant_id: str, kind: str) -> tuple[int, float]:
        start, left = self._window(kind)
        with self.registry.session() as s:
            used = s.scalar(select(UsageCounter.used).where(
                UsageCounter.tenant_id == tenant_id, UsageCounter.kind == kind,
                UsageCounter.window_start == start,
            ))
        return used or 0, left

    def admit(self, tenant_id: str, policy: Policy) -> None:
        """Count one request; raise RateLimited when a limit is reached (blocking: a thread)."""
        if policy.tokens_per_day is not None:
            used, left = self._used(tenant_id, "tokens")
            if used >= policy.tokens_per_day:
                raise _limited(f"the tenant's {policy.tokens_per_day} tokens per day are used up",
                               left, "tokens_per_day")
        if policy.requests_per_minute is not None:
            used, left = self._add(tenant_id, "requests", 1)
            if used > policy.requests_per_minute:
                raise _limited(
                    f"more than {policy.requests_per_minute} requests per minute for this tenant",
                    left, "requests_per_minute",
                )

    def usage(self) -> dict[str, dict]:
        """What each tenant used in the current windows (requests this minute, tokens today),
        in one read; a tenant that used nothing is absent."""
        c = UsageCounter
        current = [(c.kind == kind) & (c.window_start == self._window(kind)[0]) for kind in WINDOWS]
        with self.registry.session() as s:
            rows = s.execute(select(c.tenant_id, c.kind, c.used).where(or_(*current))).all()
        out: dict[str, dict] = {}
        for tenant_id, kind, used in rows:
            out.setdefault(tenant_id, {"requests_this_minute": 0, "tokens_today": 0})[
                USAGE_FIELDS[kind]] = used
        return out

    def spend_tokens(self, tenant_id: str, policy: Policy, n: int) -> None:
        if policy.tokens_per_day is not None and n > 0:
            self._add(tenant_id, "tokens", n)


def _limited(message: str, seconds_left: float, limit: str) -> RateLimited:
    return RateLimited(
        f"rate limit reached: {message}; retry in {math.ceil(seconds_left)} s",
        headers={"Retry-After": str(max(1, math.ceil(seconds_left)))},
        limit=limit,
    )
