"""Runs evaluations: every item of a set on every arm, at temperature 0, through the chat path
applications use (ChatService.prepare + complete: the same routing, retrieval, limits and
adapters), judged by the set's checks, each result stored once.

A durable job: the runner claims an evaluation with a lease and renews it while it works. If the
process dies, the lease runs out and a runner (this one after a restart, or another replica's)
claims it again and answers only the items not yet recorded. An engine or registry outage stops
the run without failing it; after `max_attempts` runs it fails with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from core.errors import (
    APIError,
    EngineUnavailable,
    EvalError,
    RegistryUnavailable,
    UpstreamError,
)
from core.metrics import Metrics
from core.settings import EvaluationSettings
from service.chat import ChatService
from service.evaluations.checks import Item, Judge
from service.evaluations.store import Claimed, EvaluationStore
from service.evaluations.summary import summarise
from service.policy import PATHS, Policy
from service.protocol import ChatRequest
from service.tenants import TenantService, TenantView

log = logging.getLogger("ragtune.evaluations")



def parse_arm(arm: str) -> tuple[str, str | None, int | None]:
    """`prompt` | `rag` | `auto` | `adapter_rag:<name>[@<version>]` -> (kind, name, version)."""
    if arm in ("prompt", "rag", "auto"):
        return arm, None, None
    kind, sep, rest = arm.partition(":")
    if kind == "adapter_rag" and sep and rest:
        name, at, version = rest.partition("@")
        if name and (not at or (version.isdigit() and int(version) > 0)):
            return kind, name, int(version) if at else None
    raise EvalError(
        f"unknown arm {arm!r}: use prompt, rag, auto, or adapter_rag:<name>[@<version>]",
        code="unknown_arm",
        param="arms",
    )


class Transient(Exception):
    """The engine or the registry is down: stop this run; the evaluation resumes later."""


class EvaluationRunner:
    def __init__(
        self,
        store: EvaluationStore,
        chat: ChatService,
        tenants: TenantService,
        settings: EvaluationSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.chat = chat
        self.tenants = tenants
        self.settings = settings
        self.metrics = metrics
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # ---- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self.run_forever(), name="evaluation-runner")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run_forever(self) -> None:
        while True:
            try:
                ran = await self.run_once()
            except Exception:  # noqa: BLE001 - a registry hiccup: try again next poll
                log.exception("evaluation runner failed to claim")
                ran = False
            if not ran:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.poll_s)
                self.wake.clear()

    async def run_once(self) -> bool:
        """Claim one evaluation and run it; False when there was none."""
        claimed = await asyncio.to_thread(self.store.claim, self.worker_id, self.settings.lease_s)
        if claimed is None:
            return False
        await self._execute(claimed, resumable=True)
        return True

    async def run_claimed(self, claimed: Claimed) -> None:
        """Run an evaluation this runner holds to its end, here (an adapter gate waits on it):
        a pause is its failure, as is any error; the store says how it ended."""
        await self._execute(claimed, resumable=False)

    async def _execute(self, claimed: Claimed, *, resumable: bool) -> None:
        """Run it; an engine or registry outage pauses a `resumable` one (queued again until
        `max_attempts`), else fails it; any other error fails it, with the reason."""
        started = time.perf_counter()
        try:
            await self._run(claimed)
        except Transient as exc:
            if resumable:
                await self._pause(claimed, exc)
            else:
                log.warning("evaluation %s stopped: %s", claimed.id, exc)
                await asyncio.to_thread(self.store.finish, claimed.id, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug or a vanished set: fail it, say why
            log.exception("evaluation %s failed", claimed.id)
            await asyncio.to_thread(self.store.finish, claimed.id, error=str(exc) or repr(exc))
        finally:
            if self.metrics is not None:
                self.metrics.observe_evaluation(time.perf_counter() - started)

    async def _pause(self, claimed: Claimed, exc: Transient) -> None:
        log.warning("evaluation %s paused: %s", claimed.id, exc)
        left = await asyncio.to_thread(self.store.release, claimed.id, self.settings.max_attempts)
        if left <= 0:
            await asyncio.to_thread(
                self.store.finish,
                claimed.id,
                error=f"stopped {self.settings.max_attempts} times: {exc}",
            )
        else:
            await asyncio.sleep(self.settings.poll_s)

    async def _run(self, c: Claimed) -> None:
        items, grammar = await asyncio.to_thread(self.store.set_contents, c.tenant_id,
                                                 c.eval_set_id)
        judge = Judge(grammar)
        done = await asyncio.to_thread(self.store.done_keys, c.id)
        todo = [
            (seq, item, arm)
            for seq, item in enumerate(items)
            for arm in c.arms
            if (arm, item.id) not in done
        ]
        log.info("evaluation %s: %d of %d results to go", c.id, len(todo), c.total)
        # The tenant as of this run's start (one registry read per arm kind, not one per item).
        tenants = {kind: await self._tenant(c.tenant_id, kind)
                   for kind in {parse_arm(arm)[0] for arm in c.arms}}
        sem = asyncio.Semaphore(self.settings.concurrency)
        lost = asyncio.Event()

        async def one(seq: int, item: Item, arm: str) -> None:
            async with sem:
                if lost.is_set():
                    return
                result = await self._answer(c, judge, seq, item, arm, tenants)
                if await asyncio.to_thread(self.store.record, c.id, result) and self.metrics:
                    self.metrics.count_evaluation_item(parse_arm(arm)[0], result["passed"])

        async def keep_lease() -> None:
            while True:
                await asyncio.sleep(self.settings.lease_s / 3)
                if not await asyncio.to_thread(
                    self.store.renew, c.id, self.worker_id, self.settings.lease_s
                ):
                    lost.set()
                    return

        renewer = asyncio.create_task(keep_lease())
        try:
            await asyncio.gather(*(one(*t) for t in todo))
        finally:
            renewer.cancel()
        if lost.is_set():
            raise Transient("the lease was lost to another runner")
        results = await asyncio.to_thread(self.store.results, c.id)
        summary = summarise(c.arms, results)
        await asyncio.to_thread(self.store.finish, c.id, summary=summary)
        log.info("evaluation %s succeeded: %s", c.id, summary.get("recommendation"))

    async def _tenant(self, tenant_id: str, arm_kind: str) -> TenantView:
        """The tenant as its applications meet it, except that every path may be asked for by
        the arm (an evaluation measures paths the policy may not let clients force), and the
        `auto` arm routes as `auto` whatever the tenant's mode."""
        view = await asyncio.to_thread(self.tenants.get, tenant_id)
        changes: dict = {"allow_route_override": list(PATHS)}
        if arm_kind == "auto":
            changes["mode"] = "auto"
        policy = Policy.model_validate({**view.policy.model_dump(), **changes})
        return TenantView(view.id, policy)

    async def _answer(
        self, c: Claimed, judge: Judge, seq: int, item: Item, arm: str,
        tenants: dict[str, TenantView],
    ) -> dict:
        kind, name, version = parse_arm(arm)
        tenant = tenants[kind]
        req = ChatRequest.model_validate(
            {
                "messages": item.chat_messages(),
                "model": name if kind == "adapter_rag" and version is None else None,
                "route": kind if kind in PATHS else None,
                "temperature": 0,
                "max_tokens": c.max_tokens,
            }
        )
        pinned = None
        started = time.perf_counter()
        out: dict = {}
        error = None
        try:
            if version is not None:
                # a gate's candidate is still `loading`: evaluated before any request reaches it
                pinned = await asyncio.to_thread(
                    self.chat.adapters.version, c.tenant_id, name, version, candidate=True
                )
                if pinned is None:
                    raise APIError(
                        f"no servable version {version} of adapter {name!r}",
                        code="model_not_found",
                        status=404,
                    )
            prepared = await self.chat.prepare(tenant, req, pinned=pinned)
            out = await self.chat.complete(prepared)
            engine_seconds = prepared.engine_seconds or 0.0
        except (EngineUnavailable, RegistryUnavailable) as exc:
            raise Transient(exc.message) from exc
        except UpstreamError as exc:
            if exc.status >= 500:
                raise Transient(exc.message) from exc
            error, engine_seconds = exc.code, 0.0
        except APIError as exc:
            # What the chat path refuses (an adapter gone, a limit, a bad item for this arm)
            # is the arm's failure on this item, recorded with its code.
            error, engine_seconds = exc.code, 0.0
        latency_ms = (time.perf_counter() - started) * 1e3
        text = ""
        if out:
            text = (out.get("choices") or [{}])[0].get("message", {}).get("content") or ""
        cited = [x.get("document_id") for x in out.get("citations") or []]
        verdict = judge.judge(item, text, cited)
        usage = out.get("usage") or {}
        return {
            "arm": arm,
            "item_id": item.id,
            "seq": seq,
            "output": text.replace("\x00", "\ufffd"),  # PostgreSQL's text refuses NUL
            "passed": verdict.passed and error is None,
            "failed": verdict.failed if error is None else ["request", *verdict.failed],
            "checks": verdict.checks,
            "documents_hit": verdict.documents_hit,
            "route": out.get("route"),
            "error": error,
            "latency_ms": latency_ms,
            "engine_seconds": engine_seconds,
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
        }
