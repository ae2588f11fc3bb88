"""The registry rows of eval sets, evaluations and their results: the one code that writes them.

An evaluation is claimed like an ingestion job: a runner takes a queued one, or a running one
whose lease ran out (its process died), and renews the lease while it works. A result row's key
(evaluation, arm, item) makes each item count once however often the job is resumed."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from core.errors import NotFound
from core.registry.db import Registry
from core.registry.models import EvalResult, EvalSet, Evaluation, utcnow
from service.evaluations.checks import Item


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _set_view(row: EvalSet) -> dict:
    return {
        "id": row.id,
        "object": "eval_set",
        "name": row.name,
        "items": row.item_count,
        "grammar": row.grammar is not None,
        "created_at": row.created_at.isoformat(),
    }


@dataclass(frozen=True)
class Claimed:
    """An evaluation a runner holds: what it needs to run it."""

    id: str
    tenant_id: str
    eval_set_id: str
    arms: list[str]
    max_tokens: int
    total: int


class EvaluationStore:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # ---- eval sets ---------------------------------------------------------------------------
    def create_set(self, tenant_id: str, name: str, items: list[dict], grammar: str | None) -> dict:
        with self.registry.session() as s:
            row = EvalSet(
                id=new_id("evs"),
                tenant_id=tenant_id,
                name=name,
                grammar=grammar,
                items=items,
                item_count=len(items),
                created_at=utcnow(),
            )
            s.add(row)
        return _set_view(row)

    def _set_row(self, s, tenant_id: str, set_id: str) -> EvalSet:
        row = s.get(EvalSet, set_id)
        if row is None or row.tenant_id != tenant_id:  # another tenant's set is as unknown
            raise NotFound(f"no eval set '{set_id}'", code="eval_set_not_found", param="eval_set")
        return row

    def get_set(self, tenant_id: str, set_id: str) -> dict:
        with self.registry.session() as s:
            return _set_view(self._set_row(s, tenant_id, set_id))

    def set_contents(self, tenant_id: str, set_id: str) -> tuple[list[Item], str | None]:
        """A set's items and its grammar text (None: it has none)."""
        with self.registry.session() as s:
            row = self._set_row(s, tenant_id, set_id)
            return [Item.model_validate(x) for x in row.items], row.grammar

    def list_sets(self, tenant_id: str) -> dict:
        with self.registry.session() as s:
            rows = s.scalars(
                select(EvalSet).where(EvalSet.tenant_id == tenant_id).order_by(EvalSet.created_at)
            ).all()
            return {"object": "list", "data": [_set_view(r) for r in rows]}

    def delete_set(self, tenant_id: str, set_id: str) -> dict:
        with self.registry.session(lock=True) as s:
            row = self._set_row(s, tenant_id, set_id)
            s.delete(row)
        return {"id": set_id, "object": "eval_set", "deleted": True}

    # ---- evaluations -------------------------------------------------------------------------
    def create(self, tenant_id: str, set_id: str, arms: list[str], max_tokens: int) -> dict:
        ev = self._create(tenant_id, set_id, arms, max_tokens)
        return {"id": ev.id, "object": "evaluation", "state": "queued"}

    def create_claimed(
        self, tenant_id: str, set_id: str, arms: list[str], max_tokens: int, worker: str,
        lease_s: float,
    ) -> Claimed:
        """An evaluation created already held by `worker` (an adapter gate runs it at once, not
        behind the queue); if that process dies, another runner takes it over as any other."""
        now = utcnow()
        ev = self._create(tenant_id, set_id, arms, max_tokens, state="running", attempts=1,
                          leased_by=worker, lease_until=now + timedelta(seconds=lease_s),
                          started_at=now)
        return Claimed(ev.id, tenant_id, set_id, list(arms), max_tokens, ev.total)

    def _create(
        self, tenant_id, set_id, arms, max_tokens, *, state: str = "queued", attempts: int = 0,
        **lease,
    ) -> Evaluation:
        """`lease`: leased_by, lease_until and started_at of one created already claimed."""
        with self.registry.session(lock=True) as s:
            row = self._set_row(s, tenant_id, set_id)
            ev = Evaluation(
                id=new_id("eval"),
                tenant_id=tenant_id,
                eval_set_id=set_id,
                arms=arms,
                max_tokens=max_tokens,
                state=state,
                attempts=attempts,
                total=row.item_count * len(arms),
                created_at=utcnow(),
                **lease,
            )
            s.add(ev)
        return ev

    def _row(self, s, tenant_id: str, evaluation_id: str) -> Evaluation:
        ev = s.get(Evaluation, evaluation_id)
        if ev is None or ev.tenant_id != tenant_id:
            raise NotFound(
                f"no evaluation '{evaluation_id}'", code="evaluation_not_found", param="id"
            )
        return ev

    def view(self, tenant_id: str, evaluation_id: str) -> dict:
        with self.registry.session() as s:
            ev = self._row(s, tenant_id, evaluation_id)
            done = s.scalar(
                select(func.count())
                .select_from(EvalResult)
                .where(EvalResult.evaluation_id == ev.id)
            )
            return _evaluation_view(ev, done)

    def list(self, tenant_id: str) -> dict:
        with self.registry.session() as s:
            rows = s.scalars(
                select(Evaluation)
                .where(Evaluation.tenant_id == tenant_id)
                .order_by(Evaluation.created_at)
            ).all()
            counts = (
                dict(
                    s.execute(
                        select(EvalResult.evaluation_id, func.count())
                        .where(EvalResult.evaluation_id.in_([r.id for r in rows]))
                        .group_by(EvalResult.evaluation_id)
                    ).all()
                )
                if rows
                else {}
            )
            return {
                "object": "list",
                "data": [_evaluation_view(r, counts.get(r.id, 0), brief=True) for r in rows],
            }

    def items(self, tenant_id: str, evaluation_id: str) -> list[dict]:
        """Every result line, with the item's question (its last user message) while the set
        still exists."""
        with self.registry.session() as s:
            ev = self._row(s, tenant_id, evaluation_id)
            rows = s.scalars(
                select(EvalResult)
                .where(EvalResult.evaluation_id == evaluation_id)
                .order_by(EvalResult.seq, EvalResult.arm)
            ).all()
            found = s.get(EvalSet, ev.eval_set_id)
            queries = (
                {i.id: i.question() for i in map(Item.model_validate, found.items)}
                if found
                else {}
            )
            return [_result_view(r, queries.get(r.item_id)) for r in rows]

    def latest_succeeded(self, tenant_id: str) -> dict | None:
        with self.registry.session() as s:
            ev = s.scalars(
                select(Evaluation)
                .where(Evaluation.tenant_id == tenant_id, Evaluation.state == "succeeded")
                .order_by(Evaluation.finished_at.desc())
                .limit(1)
            ).first()
            return None if ev is None else _evaluation_view(ev, ev.total)

    # ---- the runner's side -------------------------------------------------------------------
    def claim(self, worker: str, lease_s: float) -> Claimed | None:
        now = utcnow()
        with self.registry.session(lock=True) as s:
            q = (
                select(Evaluation)
                .where(
                    or_(
                        Evaluation.state == "queued",
                        (Evaluation.state == "running") & (Evaluation.lease_until < now),
                    )
                )
                .order_by(Evaluation.created_at)
                .limit(1)
            )
            if not self.registry.sqlite:
                q = q.with_for_update(skip_locked=True)
            ev = s.scalars(q).first()
            if ev is None:
                return None
            ev.state = "running"
            ev.attempts += 1
            ev.leased_by = worker
            ev.lease_until = now + timedelta(seconds=lease_s)
            ev.started_at = ev.started_at or now
            return Claimed(
                ev.id, ev.tenant_id, ev.eval_set_id, list(ev.arms), ev.max_tokens, ev.total
            )

    def renew(self, evaluation_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease; False when another runner took the evaluation over."""
        with self.registry.session() as s:
            n = s.execute(
                update(Evaluation)
                .where(
                    Evaluation.id == evaluation_id,
                    Evaluation.leased_by == worker,
                    Evaluation.state == "running",
                )
                .values(lease_until=utcnow() + timedelta(seconds=lease_s))
            ).rowcount
            return n == 1

    def done_keys(self, evaluation_id: str) -> set[tuple[str, str]]:
        with self.registry.session() as s:
            return set(
                s.execute(
                    select(EvalResult.arm, EvalResult.item_id).where(
                        EvalResult.evaluation_id == evaluation_id
                    )
                ).all()
            )

    def record(self, evaluation_id: str, result: dict) -> bool:
        """Store one item's result; False when it was stored already (counted once)."""
        try:
            with self.registry.session() as s:
                s.add(EvalResult(evaluation_id=evaluation_id, created_at=utcnow(), **result))
        except IntegrityError:
            return False
        return True

    def results(self, evaluation_id: str) -> list[EvalResult]:
        with self.registry.session() as s:
            return list(
                s.scalars(
                    select(EvalResult)
                    .where(EvalResult.evaluation_id == evaluation_id)
                    .order_by(EvalResult.seq)
                ).all()
            )

    def release(self, evaluation_id: str, max_attempts: int) -> int:
        """After a paused run: the runs it has left; when some are left, it is queued again at
        once (claimable before its lease would have run out)."""
        with self.registry.session(lock=True) as s:
            ev = s.get(Evaluation, evaluation_id)
            left = max_attempts - (ev.attempts if ev else max_attempts)
            if ev is not None and left > 0:
                ev.lease_until = None
                ev.state = "queued"
            return left

    def finish(
        self, evaluation_id: str, *, summary: dict | None = None, error: str | None = None
    ) -> None:
        with self.registry.session() as s:
            s.execute(
                update(Evaluation)
                .where(Evaluation.id == evaluation_id)
                .values(
                    state="failed" if error else "succeeded",
                    summary=summary,
                    error=error,
                    finished_at=utcnow(),
                    lease_until=None,
                )
            )


def _evaluation_view(ev: Evaluation, done: int, brief: bool = False) -> dict:
    out = {
        "id": ev.id,
        "object": "evaluation",
        "eval_set": ev.eval_set_id,
        "arms_requested": ev.arms,
        "state": ev.state,
        "progress": {"done": done, "total": ev.total},
        "created_at": ev.created_at.isoformat(),
        "finished_at": ev.finished_at.isoformat() if ev.finished_at else None,
    }
    if ev.error:
        out["error"] = ev.error
    if ev.summary and not brief:
        out.update(ev.summary)
    elif ev.summary:
        out["recommendation"] = ev.summary.get("recommendation")
    return out


def _result_view(r: EvalResult, query: str | None = None) -> dict:
    return {
        "item": r.item_id,
        "query": query,
        "arm": r.arm,
        "output": r.output,
        "passed": r.passed,
        "failed_checks": r.failed,
        "checks": r.checks,
        "documents_hit": r.documents_hit,
        "route": r.route,
        "error": r.error,
        "latency_ms": round(r.latency_ms, 1),
    }
