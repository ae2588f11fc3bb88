"""The adapter lifecycle: register (stage and validate → store → load everywhere → ready →
switch), rollback and delete. The views and the routing read model are `AdapterCatalog`'s,
keeping every replica in step is `Reconciler`'s; this service is the one door to all three.

Traffic goes to an adapter's `current_version`, which changes only after the new version is
loaded on every healthy replica (and, with a gate, only after an evaluation found it not worse
than the version it replaces: `GateCheck`; a version that fails is kept as `rejected`); the old
version is unloaded once this process's requests on it have ended and `retire_grace_s` has
passed (requests of other API replicas that resolved it just before the switch). Any failure
during registration removes the version's files, rows and loaded copies again: nothing
half-registered is ever routed to or left behind.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters.catalog import AdapterCatalog, ServedAdapter, live_adapter
from adapters.hotswap import EngineAdapters, engine_name
from adapters.metadata import check_metadata
from adapters.reconcile import Reconciler
from adapters.staging import Staged, Staging
from adapters.validation import AdapterInfo
from core.errors import AdapterError, Conflict, InvalidRequest
from core.registry.db import Registry
from core.registry.models import Adapter, AdapterVersion, utcnow
from core.settings import Settings

log = logging.getLogger("ragtune.adapters")

EFFECT_PROBES = 2
EFFECT_TOKENS = 4
EFFECT_MIN_LOGPROB_DELTA = 1e-4


@dataclass(frozen=True)
class GateOutcome:
    passed: bool
    record: dict  # stored with the version (service.protocol's GateRecord)
    message: str  # why it failed, with the figures (the 422's message)


# (tenant, name, new version, current version or None) -> the verdict. The new version is
# loaded on the engines but not routable while it runs; service/evaluations/gate.py builds it.
GateCheck = Callable[[str, str, int, int | None], Awaitable[GateOutcome]]


class GateFailed(Exception):
    def __init__(self, outcome: GateOutcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


class AdapterService:
    def __init__(
        self,
        registry: Registry,
        engines: EngineAdapters,
        settings: Settings,
        embed_texts=None,
    ) -> None:
        self.registry = registry
        self.engines = engines
        self.settings = settings
        self.limits = settings.adapters
        self.root = settings.resolved_adapters_root
        self.embed_texts = embed_texts  # texts -> vectors (the policy's adapter-match signal)
        self.staging = Staging(settings)
        self.catalog = AdapterCatalog(registry)
        self.reconciler = Reconciler(registry, engines, self.limits.retire_grace_s,
                                     self._purge_unless_purging)
        self._tasks: set[asyncio.Task] = set()

    # ---- what the routes call -----------------------------------------------------------
    async def register_upload(
        self, tenant_id: str, upload: BinaryIO, *, name: object, description: object,
        examples: object, gate: GateCheck | None = None,
    ) -> dict:
        """Register the archive `upload` (a .tar.gz or .zip file object, closed once copied)."""
        return await self._register_staged(
            tenant_id, lambda staging: self.staging.from_upload(upload, staging),
            name, description, examples, gate,
        )

    async def register_from_uri(
        self, tenant_id: str, uri: str, *, name: object, description: object, examples: object,
        gate: GateCheck | None = None,
    ) -> dict:
        """Register a copy of the adapter folder `uri` names under the adapter root."""
        return await self._register_staged(
            tenant_id, lambda staging: self.staging.from_uri(uri, staging),
            name, description, examples, gate,
        )

    async def _register_staged(
        self, tenant_id: str, stage: Callable[[Path], Staged],
        name: object, description: object, examples: object, gate: GateCheck | None,
    ) -> dict:
        """The fields are checked before a byte of the adapter is stored; `stage` (blocking)
        puts the validated adapter, and its checked training record, in the staging folder it
        is given."""
        examples = check_metadata(name, description, examples, limits=self.limits,
                                  base_model_name=self.settings.base_model_name)
        async with self.staging.folder() as staging:
            staged = await asyncio.to_thread(stage, staging)
            return await self.register(tenant_id, staged.folder, staged.info, name=name,
                                       description=description, examples=examples,
                                       training=staged.training, gate=gate)

    def get(self, tenant_id: str, name: str) -> dict:
        """The adapter's view, each version with `replicas`: the indexes of the engine replicas
        holding it, as this API process last saw them (its loads, unloads and reconciles)."""
        view = self.catalog.get(tenant_id, name)
        held = self.held()
        for v in view["versions"]:
            v["replicas"] = held.get(engine_name(tenant_id, name, v["version"]), [])
        return view

    def held(self) -> dict[str, list[int]]:
        """Engine name -> the indexes of the replicas holding it (this process's view)."""
        out: dict[str, list[int]] = {}
        for i, replica in enumerate(self.engines.pool.replicas):
            for ename in list(self.engines.resident.get(replica, ())):
                out.setdefault(ename, []).append(i)
        return out

    def list(self, tenant_id: str) -> dict:
        return self.catalog.list(tenant_id)

    def served(self, tenant_id: str, name: str | None = None) -> list[ServedAdapter]:
        return self.catalog.served(tenant_id, name)

    def version(
        self, tenant_id: str, name: str, version: int, *, candidate: bool = False
    ) -> ServedAdapter | None:
        return self.catalog.version(tenant_id, name, version, candidate=candidate)

    def served_in(self, s: Session, tenant_id: str, name: str | None = None) -> list[ServedAdapter]:
        return self.catalog.served_in(s, tenant_id, name)

    async def reconcile(self) -> None:
        await self.reconciler.run()

    # ---- register -------------------------------------------------------------------------
    async def register(
        self,
        tenant_id: str,
        folder: Path,
        info: AdapterInfo,
        *,
        name: str,
        description: str,
        examples: list[str],
        training: dict | None = None,
        gate: GateCheck | None = None,
    ) -> dict:
        """`folder` is validated and lies in a staging dir this call now owns; `training`: its
        checked training record (adapters/training_record.py), None when it has none; `gate`:
        run once the version is loaded, before traffic moves (module doc)."""
        version, final, current = await asyncio.to_thread(
            self._reserve, tenant_id, name, info, description, examples, training)
        ename = engine_name(tenant_id, name, version)
        loaded = False
        try:
            await asyncio.to_thread(_move, folder, final)
            if self.embed_texts is not None:
                texts = [t for t in (description, *examples) if t]
                vectors = await asyncio.to_thread(self.embed_texts, texts) if texts else []
                await asyncio.to_thread(self._set_vectors, tenant_id, name, version, vectors)
            await self.engines.load_everywhere(ename, str(final))
            loaded = True
            await self._check_effect(ename, [*examples, description])
            record = None
            if gate is not None:
                outcome = await gate(tenant_id, name, version, current)
                if not outcome.passed:
                    raise GateFailed(outcome)
                record = outcome.record
            previous = await asyncio.to_thread(self._switch, tenant_id, name, version, record)
        except GateFailed as failed:
            try:
                await self.engines.unload_everywhere(ename)
            except Exception as exc:  # noqa: BLE001 - reconcile unloads it: rejected is not wanted
                log.warning("unloading rejected %s failed: %s", ename, exc)
            await asyncio.to_thread(self._reject, tenant_id, name, version, final,
                                    failed.outcome.record)
            raise AdapterError(failed.outcome.message, code="gate_failed", param="gate") from None
        except BaseException:
            if loaded:
                await self.engines.unload_everywhere(ename)
            await asyncio.to_thread(self._discard, tenant_id, name, version, final)
            raise
        if previous is not None:
            self._retire_later(previous)
        return await asyncio.to_thread(self.get, tenant_id, name)

    async def _check_effect(self, ename: str, prompts: list[str]) -> None:
        """422 adapter_has_no_effect when the loaded adapter answers its own examples exactly as
        the base model does: the same greedy tokens with the same log-probabilities (vLLM
        serves an adapter whose weights are all zero, or that targets no module it knows, as the
        base model without a word). Up to EFFECT_PROBES prompts, EFFECT_TOKENS tokens each."""
        prompts = [p for p in prompts if p and p.strip()][:EFFECT_PROBES] or ["Hello"]
        pool = self.engines.pool
        for prompt in prompts:
            answers = []
            for model in (self.settings.base_model_name, ename):
                out = await pool.post_json("/v1/chat/completions", {
                    "model": model, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": EFFECT_TOKENS, "temperature": 0, "logprobs": True,
                })
                choice = (out.get("choices") or [{}])[0]
                content = ((choice.get("logprobs") or {}).get("content")) or []
                answers.append((choice.get("message", {}).get("content"),
                                [t.get("logprob") for t in content]))
            (text_a, lp_a), (text_b, lp_b) = answers
            if text_a != text_b or len(lp_a) != len(lp_b) or any(
                a is None or b is None or abs(a - b) > EFFECT_MIN_LOGPROB_DELTA
                for a, b in zip(lp_a, lp_b, strict=True)
            ):
                return
        raise AdapterError(
            f"the adapter does not change the model's output: on {len(prompts)} of its examples "
            "it answers with the base model's tokens and log-probabilities (all-zero weights, "
            "or target modules the engine does not apply it to?)",
            code="adapter_has_no_effect",
        )

    def _reserve(self, tenant_id, name, info: AdapterInfo, description, examples,
                 training=None):
        try:
            return self._reserve_once(tenant_id, name, info, description, examples, training)
        except IntegrityError:
            # A new name created by another registration since this one looked (FOR UPDATE
            # locks no row that does not exist yet): once more, now locking that row.
            return self._reserve_once(tenant_id, name, info, description, examples, training)

    def _reserve_once(self, tenant_id, name, info: AdapterInfo, description, examples,
                      training=None):
        with self.registry.session(lock=True) as s:
            adapter = s.get(Adapter, (tenant_id, name), with_for_update=True)
            if adapter is None:
                s.add(Adapter(tenant_id=tenant_id, name=name, state="live"))
                s.flush()
            elif adapter.state != "live":
                raise Conflict(f"adapter '{name}' is being deleted; try again shortly",
                               code="adapter_being_deleted", param="name")
            last = s.scalar(
                select(func.max(AdapterVersion.version)).where(
                    AdapterVersion.tenant_id == tenant_id, AdapterVersion.name == name
                )
            )
            version = (last or 0) + 1
            current = adapter.current_version if adapter is not None else None
            final = self.root / tenant_id / name / f"v{version}"
            s.add(
                AdapterVersion(
                    tenant_id=tenant_id, name=name, version=version,
                    engine_name=engine_name(tenant_id, name, version), state="loading",
                    path=str(final), base_model=info.base_model, rank=info.rank,
                    size_bytes=info.size_bytes, description=description, examples=examples,
                    example_vectors=[], training=training,
                )
            )
        return version, final, current

    def _set_vectors(self, tenant_id, name, version, vectors) -> None:
        with self.registry.session(lock=True) as s:
            v = s.get(AdapterVersion, (tenant_id, name, version))
            v.example_vectors = [list(map(float, vec)) for vec in vectors]

    def _switch(self, tenant_id: str, name: str, version: int,
                gate: dict | None = None) -> ServedAdapter | None:
        """Route `name` to `version` (ready); the old current version becomes retired. `gate`:
        the record of the gate it passed (kept with it)."""
        with self.registry.session(lock=True) as s:
            adapter = s.get(Adapter, (tenant_id, name), with_for_update=True)
            if adapter is None or adapter.state != "live":
                raise Conflict(f"adapter '{name}' was deleted meanwhile",
                               code="adapter_being_deleted", param="name")
            target = s.get(AdapterVersion, (tenant_id, name, version))
            target.state, target.retired_at = "ready", None
            if gate is not None:
                target.gate = gate
            old = adapter.current_version
            adapter.current_version = version
            adapter.updated_at = utcnow()
            if old is None or old == version:
                return None
            prev = s.get(AdapterVersion, (tenant_id, name, old))
            prev.state, prev.retired_at = "retired", utcnow()
            return ServedAdapter.of(prev)

    def _discard(self, tenant_id, name, version, final: Path) -> None:
        # The adapter row locked first: a registration reserving a new version meanwhile
        # (holding that lock) is counted before an empty adapter is removed.
        with self.registry.session(lock=True) as s:
            adapter = s.get(Adapter, (tenant_id, name), with_for_update=True)
            v = s.get(AdapterVersion, (tenant_id, name, version))
            if v is not None:
                s.delete(v)
            s.flush()
            if adapter is not None and adapter.current_version is None:
                left = s.scalar(
                    select(func.count()).select_from(AdapterVersion).where(
                        AdapterVersion.tenant_id == tenant_id, AdapterVersion.name == name
                    )
                )
                if not left:
                    s.delete(adapter)
        shutil.rmtree(final, ignore_errors=True)
        _prune_empty(final.parent, self.root)

    def _reject(self, tenant_id, name, version, final: Path, gate: dict) -> None:
        """A version its gate failed: the row stays (`rejected`, with the figures) so the tenant
        sees why; its files go (nothing may serve it, and a rollback never picks it)."""
        with self.registry.session(lock=True) as s:
            v = s.get(AdapterVersion, (tenant_id, name, version))
            if v is not None:
                v.state, v.gate = "rejected", gate
        shutil.rmtree(final, ignore_errors=True)
        _prune_empty(final.parent, self.root)

    def _retire_later(self, old: ServedAdapter) -> None:
        task = asyncio.create_task(self._retire(old), name=f"retire-{old.engine_name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retire(self, old: ServedAdapter) -> None:
        await asyncio.sleep(self.limits.retire_grace_s)
        await self.engines.wait_idle(old.engine_name, self.settings.engine.request_timeout_s)
        if await asyncio.to_thread(self._still_retired, old):
            await self.engines.unload_everywhere(old.engine_name)

    def _still_retired(self, old: ServedAdapter) -> bool:
        with self.registry.session() as s:
            v = s.get(AdapterVersion, (old.tenant_id, old.name, old.version))
            return v is None or v.state == "retired"

    # ---- rollback and delete ----------------------------------------------------------------
    async def rollback(self, tenant_id: str, name: str, version: int | None = None) -> dict:
        target = await asyncio.to_thread(self._rollback_target, tenant_id, name, version)
        await self.engines.load_everywhere(target.engine_name, target.path)
        previous = await asyncio.to_thread(self._switch, tenant_id, name, target.version)
        if previous is not None:
            self._retire_later(previous)
        return await asyncio.to_thread(self.get, tenant_id, name)

    def _rollback_target(self, tenant_id, name, version) -> ServedAdapter:
        with self.registry.session() as s:
            adapter = live_adapter(s, tenant_id, name)
            q = select(AdapterVersion).where(
                AdapterVersion.tenant_id == tenant_id,
                AdapterVersion.name == name,
                AdapterVersion.state.in_(("ready", "retired")),
            )
            if version is not None:
                q = q.where(AdapterVersion.version == version)
            else:
                q = q.where(AdapterVersion.version < (adapter.current_version or 0))
            target = s.scalars(q.order_by(AdapterVersion.version.desc()).limit(1)).first()
            if target is None or target.version == adapter.current_version:
                which = f"version {version}" if version is not None else "an earlier version"
                raise InvalidRequest(f"adapter '{name}' has no {which} to roll back to",
                                     code="no_version_to_roll_back_to", param="version")
            return ServedAdapter.of(target)

    async def delete(self, tenant_id: str, name: str) -> None:
        """Hidden at once (requests naming it are 404 from now on); it leaves the engines once
        the requests already running on it end, in the background."""
        await asyncio.to_thread(self.mark_deleting, tenant_id, name)
        self.schedule_purge(tenant_id, name)

    def mark_deleting(self, tenant_id: str, name: str) -> None:
        with self.registry.session(lock=True) as s:
            adapter = live_adapter(s, tenant_id, name)
            adapter.state = "deleting"

    async def purge(self, tenant_id: str, name: str) -> None:
        """Unload every version of a deleting adapter (after its requests here end), then
        remove its files and rows."""
        versions = await asyncio.to_thread(self._versions_of_deleting, tenant_id, name)
        for v in versions:
            await self.engines.wait_idle(v.engine_name, self.settings.engine.request_timeout_s)
            await self.engines.unload_everywhere(v.engine_name)
        await asyncio.to_thread(self._drop, tenant_id, name)

    def _versions_of_deleting(self, tenant_id, name) -> list[ServedAdapter]:
        with self.registry.session() as s:
            rows = s.scalars(
                select(AdapterVersion).join(
                    Adapter, (Adapter.tenant_id == AdapterVersion.tenant_id)
                    & (Adapter.name == AdapterVersion.name)
                ).where(AdapterVersion.tenant_id == tenant_id, AdapterVersion.name == name,
                        Adapter.state == "deleting")
            ).all()
            return [ServedAdapter.of(v) for v in rows]

    def _drop(self, tenant_id: str, name: str) -> None:
        with self.registry.session(lock=True) as s:
            adapter = s.get(Adapter, (tenant_id, name), with_for_update=True)
            if adapter is None or adapter.state != "deleting":
                return
            s.delete(adapter)
        folder = self.root / tenant_id / name
        shutil.rmtree(folder, ignore_errors=True)
        _prune_empty(folder.parent, self.root)

    def schedule_purge(self, tenant_id: str, name: str) -> None:
        task = asyncio.create_task(self.purge(tenant_id, name), name=f"purge-{tenant_id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _purge_unless_purging(self, tenant_id: str, name: str) -> None:
        if not any(t.get_name() == f"purge-{tenant_id}-{name}" for t in self._tasks):
            self.schedule_purge(tenant_id, name)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _move(folder: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)  # leftovers of a crashed registration of this very version
    final.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(final)


def _prune_empty(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent

