"""The ingestion worker: claims jobs with a lease, indexes, switches versions, retries.

Any number of workers may run against one registry: a claim is a conditional UPDATE (and
`FOR UPDATE SKIP LOCKED` on PostgreSQL), so two never hold the same job; a worker that dies
leaves its lease to run out and the job is claimed again. Re-running a job first removes what
the crashed run wrote for that version, then writes the same deterministic point ids, so the
index ends with exactly the document's chunks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, or_, select, update

from core.registry.db import Registry
from core.registry.models import DocumentVersion, Job, utcnow
from core.settings import WorkerSettings
from ingest.pipeline import ChunkPipeline
from ingest.stored_files import load_sections
from ingest.vector_store import ChunkStore, StoreFull
from ingest.versions import CURRENT, PENDING_STATES, DocumentVersions, VersionKey

log = logging.getLogger("ragtune.worker")


class LeaseLost(RuntimeError):
    pass


@dataclass
class Claimed:
    id: str
    tenant_id: str
    attempts: int
    max_attempts: int


class IngestWorker:
    def __init__(
        self,
        registry: Registry,
        store: ChunkStore,
        pipeline: ChunkPipeline,
        settings: WorkerSettings,
        metrics=None,
        worker_id: str | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.pipeline = pipeline
        self.settings = settings
        self.metrics = metrics
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.versions = DocumentVersions(registry)
        # Test hook: called after each upserted batch (crash-safety tests kill the process there).
        self.after_batch = None
        self.stop = threading.Event()
        self.wake = threading.Event()  # set by uploads: no need to wait for the next poll

    # ---- the queue ----------------------------------------------------------------------
    def claim(self) -> Claimed | None:
        """The oldest claimable job, now leased to this worker. A poll that finds none writes
        nothing and takes no lock; one that lost a race with another writer (SQLite: a stale
        snapshot) is run again (`Registry.run`)."""
        now = utcnow()
        claimable = or_(
            and_(Job.state == "queued", Job.run_after <= now),
            and_(Job.state == "running", Job.lease_until < now),
        )

        def unit(s) -> Claimed | None:
            row = s.execute(
                select(Job.id, Job.tenant_id, Job.attempts, Job.max_attempts)
                .where(claimable)
                .order_by(Job.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            # Conditional: on SQLite (no row locks) a racing worker's UPDATE finds 0 rows.
            done = s.execute(
                update(Job)
                .where(Job.id == row.id, claimable)
                .values(
                    state="running",
                    attempts=Job.attempts + 1,
                    lease_until=now + timedelta(seconds=self.settings.lease_s),
                    leased_by=self.worker_id,
                    started_at=now,
                )
            )
            if done.rowcount != 1:
                return None
            return Claimed(row.id, row.tenant_id, row.attempts + 1, row.max_attempts)

        return self.registry.run(unit)

    def _renew(self, job_id: str) -> None:
        with self.registry.session() as s:
            done = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.leased_by == self.worker_id, Job.state == "running")
                .values(lease_until=utcnow() + timedelta(seconds=self.settings.lease_s))
            )
            if done.rowcount != 1:
                raise LeaseLost(f"job {job_id} was taken over by another worker")

    @contextlib.contextmanager
    def _leased(self, job_id: str) -> Iterator[threading.Event]:
        """Renew the job's lease every third of `lease_s` while the body runs (embedding a
        long document takes longer than a lease); the event is set once the lease is lost."""
        lost, done = threading.Event(), threading.Event()

        def beat() -> None:
            while not done.wait(self.settings.lease_s / 3):
                try:
                    self._renew(job_id)
                except LeaseLost:
                    lost.set()
                    return
                except Exception:  # noqa: BLE001 - a registry hiccup: the next beat retries
                    log.warning("renewing the lease of job %s failed; retrying", job_id)

        heart = threading.Thread(target=beat, name=f"lease-{job_id[:8]}", daemon=True)
        heart.start()
        try:
            yield lost
        finally:
            done.set()
            heart.join()

    def _job_gone(self, job_id: str) -> bool:
        with self.registry.session() as s:
            return s.get(Job, job_id) is None

    def run_once(self) -> bool:
        """Claim and run one job; False when there was none."""
        job = self.claim()
        if job is None:
            self.sweep_deletions()
            return False
        started = time.perf_counter()
        try:
            chunks = self._process(job)
        except LeaseLost as exc:
            log.warning("%s", exc)
            return True
        except StoreFull as exc:
            log.warning("job %s waits for space: %s", job.id, exc)
            self._wait_for_space(job, exc)
            return True
        except Exception as exc:  # noqa: BLE001 - every failure is kept on the job
            log.exception("job %s failed (attempt %d)", job.id, job.attempts)
            self._fail(job, exc)
            return True
        with self.registry.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job.id, Job.leased_by == self.worker_id)
                .values(state="succeeded", chunks=chunks, error=None, lease_until=None,
                        finished_at=utcnow())
            )
        if self.metrics:
            self.metrics.observe_job("succeeded", time.perf_counter() - started, chunks)
        log.info("job %s indexed %d chunks", job.id, chunks)
        return True

    def _wait_for_space(self, job: Claimed, exc: StoreFull) -> None:
        """Queued again, this attempt not counted: the store's disk filling up is an outage
        (it passes), not a fault of the document; a document must not fail for it."""
        with self.registry.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job.id, Job.leased_by == self.worker_id)
                .values(state="queued", attempts=Job.attempts - 1, lease_until=None,
                        leased_by=None, error=f"waiting for disk space: {exc}"[:2000],
                        run_after=utcnow() + timedelta(seconds=self.settings.backoff_s))
            )

    def _fail(self, job: Claimed, exc: Exception) -> None:
        final = job.attempts >= job.max_attempts
        message = f"{type(exc).__name__}: {exc}"[:2000]
        with self.registry.session() as s:
            values = {"error": message, "lease_until": None, "leased_by": None}
            if final:
                values.update(state="failed", finished_at=utcnow())
            else:
                delay = self.settings.backoff_s * 2 ** (job.attempts - 1)
                values.update(state="queued", run_after=utcnow() + timedelta(seconds=delay))
            s.execute(update(Job).where(Job.id == job.id).values(**values))
        if final:
            for v in self.versions.of_job(job.id):
                if v.state in PENDING_STATES:
                    self.versions.fail(self.store, v, message)
            if self.metrics:
                self.metrics.observe_job("failed", 0.0, 0)

    # ---- indexing -----------------------------------------------------------------------
    def _process(self, job: Claimed) -> int:
        with self._leased(job.id) as lost:
            return self._process_leased(job, lost)

    def _process_leased(self, job: Claimed, lost: threading.Event) -> int:
        total = 0
        replaced: list[VersionKey] = []  # to retire
        for v in self.versions.of_job(job.id):
            if v.state not in PENDING_STATES:
                total += v.chunks or 0  # done by an earlier attempt
                continue
            if lost.is_set() or not self.versions.start_indexing(v, job.id, self.worker_id):
                raise LeaseLost(f"job {job.id} was taken over by another worker")
            total += self._index_version(job, v, replaced)
        if replaced:
            # Readers that took the version list just before a switch may still search for the
            # old version for a moment: one grace period for all of this job's replacements.
            time.sleep(self.settings.retire_grace_s)
            for key in replaced:
                self.versions.retire(self.store, key)
        return total

    def _index_version(self, job: Claimed, v: DocumentVersion, replaced: list) -> int:
        sections = load_sections(v.stored_path)
        # A crashed attempt may have written part of this version: start clean.
        self.store.delete_version(v.tenant_id, v.document_id, v.version)
        chunks = self.pipeline.run(
            sections, tenant_id=v.tenant_id, document_id=v.document_id, version=v.version,
            source=v.source, metadata=v.meta or {},
        )
        step = self.settings.upsert_batch
        try:
            self._renew(job.id)
            for i in range(0, len(chunks), step):
                self.store.upsert(chunks[i : i + step])
                self._renew(job.id)
                if self.after_batch:
                    self.after_batch(job, v, i + step)
        except LeaseLost:
            if self._job_gone(job.id):
                # Deleted with its tenant: nobody else will clean up what this run wrote.
                self.store.delete_version(v.tenant_id, v.document_id, v.version)
            raise
        self._switch(v, len(chunks), replaced)
        return len(chunks)

    def _switch(self, v: DocumentVersion, chunks: int, replaced: list[VersionKey]) -> None:
        """Make `v` the version readers see. The version it replaces goes on `replaced`
        (retired after the grace period); a version that lost (deleted or overtaken meanwhile)
        is removed at once, as no reader ever saw it."""
        state, old = self.versions.switch(v, chunks)
        if state != CURRENT:
            self.versions.retire(self.store, (v.tenant_id, v.document_id, v.version))
        elif old is not None:
            replaced.append((v.tenant_id, v.document_id, old))

    def sweep_deletions(self) -> None:
        for tenant_id, document_id, versions in self.versions.deleting():
            try:
                self.versions.finish_delete(self.store, tenant_id, document_id, versions)
            except Exception:  # noqa: BLE001 - retried at the next sweep
                log.exception("deleting %s/%s failed; will retry", tenant_id, document_id)
        cutoff = utcnow() - timedelta(seconds=max(self.settings.retire_grace_s, 1.0) * 2)
        for key in self.versions.superseded_before(cutoff):
            try:
                self.versions.retire(self.store, key)
            except Exception:  # noqa: BLE001 - retried at the next sweep
                log.exception("retiring %s failed; will retry", key)

    # ---- loops --------------------------------------------------------------------------
    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or self.stop
        log.info("ingestion worker %s started", self.worker_id)
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # noqa: BLE001 - a registry hiccup must not end the worker
                log.exception("worker loop error")
                busy = False
            if not busy:
                self.wake.wait(self.settings.poll_s)
                self.wake.clear()
        log.info("ingestion worker %s stopped", self.worker_id)
