"""The durable job queue and the worker, on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from core.registry.db import Registry
from core.registry.models import Job
from ingest.worker import LeaseLost
from tests.helpers.knowledge_base import (
    docs_service,
    long_text,
    make_worker,
    open_store,
    setup_tenant,
    upload_text,
)
from tests.helpers.postgres import postgres_available, registry_url

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    if request.param == "postgres" and not postgres_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    url, cleanup = registry_url(request.param, tmp_path)
    registry = Registry(url)
    registry.migrate()
    yield request.param, registry, url
    registry.dispose()
    cleanup()


def test_two_workers_race_over_20_jobs_each_indexed_once(backend, tmp_path):
    kind, registry, url = backend
    store = open_store(tmp_path)
    tenant = setup_tenant(registry)
    docs = docs_service(registry, tmp_path)
    jobs = [upload_text(docs, tenant, f"doc{i}.txt", long_text(f"topic{i}", 3))["job_id"]
            for i in range(20)]
    # Two workers, each with its own registry connection pool, as two processes would have.
    registries = [Registry(url), Registry(url)]
    workers = [make_worker(r, store) for r in registries]
    claimed: list[tuple[str, str]] = []
    for w in workers:
        original = w.claim

        def claim(w=w, original=original):
            job = original()
            if job is not None:
                claimed.append((w.worker_id, job.id))
            return job

        w.claim = claim
    threads = [threading.Thread(target=_drain, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    claimed_ids = [job_id for _, job_id in claimed]
    assert sorted(claimed_ids) == sorted(jobs), "a job was lost or claimed twice"
    assert len({w for w, _ in claimed}) == 2, "both workers should have taken jobs"
    with registry.session() as s:
        rows = s.execute(select(Job.state, Job.attempts, Job.chunks)).all()
    assert all(r.state == "succeeded" and r.attempts == 1 for r in rows), rows
    for job_id in jobs:
        (doc,) = docs.get_job(tenant, job_id)["documents"]
        assert doc["state"] == "current" and doc["chunks"] > 0
        assert store.count(tenant, doc["document_id"]) == doc["chunks"]  # indexed once
    assert store.count(tenant) == sum(r.chunks for r in rows)
    for r in registries:
        r.dispose()
    store.close()


def _drain(worker) -> None:
    deadline = time.monotonic() + 120
    idle = 0
    while time.monotonic() < deadline and idle < 3:
        idle = 0 if worker.run_once() else idle + 1
        if idle:
            time.sleep(0.05)


def test_failed_attempts_back_off_and_give_up_with_the_error(backend, tmp_path):
    kind, registry, _ = backend
    store = open_store(tmp_path)
    tenant = setup_tenant(registry)
    docs = docs_service(registry, tmp_path)
    job_id = upload_text(docs, tenant, "a.txt", "some text about things")["job_id"]
    worker = make_worker(registry, store, backoff_s=0.01, max_attempts=3)
    worker.pipeline.run = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("embedder on fire"))
    for _ in range(3):
        assert worker.run_once()
        time.sleep(0.05)
    assert not worker.run_once()  # nothing left to claim
    job = docs.get_job(tenant, job_id)
    assert job["state"] == "failed" and job["attempts"] == 3
    assert "embedder on fire" in job["error"]
    assert job["documents"][0]["state"] == "failed"
    assert store.count(tenant) == 0
    store.close()


CRASHING_WORKER = """
import sys, time
from pathlib import Path
from core.registry.db import Registry
from tests.helpers.knowledge_base import make_worker, open_store
registry = Registry(sys.argv[1])
store = open_store(Path(sys.argv[2]))
marker, step = Path(sys.argv[3]), sys.argv[4]
worker = make_worker(registry, store, upsert_batch=4, lease_s=2.0)

def stop_here():
    marker.write_text(step)
    time.sleep(600)  # wait here to be killed

def after(fn):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        stop_here()
        return out
    return wrapped

if step == "claimed":  # the job is leased, nothing read yet
    worker._process = lambda job: stop_here()
elif step == "embedded":  # chunks embedded, nothing written to the store
    worker.pipeline.run = after(worker.pipeline.run)
elif step == "batch":  # the first batch of points written
    worker.after_batch = lambda job, version, done: stop_here()
elif step == "switched":  # the version is current, the job not yet marked succeeded
    worker._switch = after(worker._switch)
worker.run_once()
"""

# What the index holds when the worker dies at each step (before the job is claimed again).
STORED_AT_DEATH = {
    "claimed": lambda n, expected: n == 0,
    "embedded": lambda n, expected: n == 0,
    "batch": lambda n, expected: 0 < n < expected,  # half-written, and hidden from readers
    "switched": lambda n, expected: n == expected,
}


@pytest.mark.parametrize("step", list(STORED_AT_DEATH))
def test_worker_killed_at_every_step_leaves_exactly_the_documents_chunks(backend, tmp_path, step):
    kind, registry, url = backend
    store = open_store(tmp_path)
    tenant = setup_tenant(registry)
    docs = docs_service(registry, tmp_path)
    body = long_text("ledger", 90)
    job_id = upload_text(docs, tenant, "ledger.txt", body)["job_id"]
    expected = len(make_worker(registry, store).pipeline.split(_sections(body)))
    assert expected > 8, "the document must span several batches"
    store.close()  # the embedded store is one process's at a time

    marker = tmp_path / "stopped"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WORKER, url, str(tmp_path), str(marker), step],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), f"the worker never reached step {step!r}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    store = open_store(tmp_path)
    assert STORED_AT_DEATH[step](store.count(tenant, "ledger"), expected)
    assert docs.get_job(tenant, job_id)["state"] == "running"  # its lease runs out
    if step != "switched":
        assert docs.hidden_versions(tenant) == [("ledger", 1)]
    worker = make_worker(registry, store, lease_s=2.0)
    deadline = time.monotonic() + 30
    while docs.get_job(tenant, job_id)["state"] != "succeeded" and time.monotonic() < deadline:
        worker.run_once()
        time.sleep(0.2)
    job = docs.get_job(tenant, job_id)
    assert job["state"] == "succeeded" and job["attempts"] == 2, job
    assert job["chunks"] == expected
    assert store.count(tenant, "ledger") == expected  # no duplicates, nothing missing
    assert docs.hidden_versions(tenant) == []
    store.close()


def _sections(body: str):
    from ingest.readers import Section

    return [Section(body)]


def test_a_long_embedding_keeps_its_lease(backend, tmp_path):
    """Embedding a document can take longer than a lease: the worker renews it meanwhile, so
    no second worker claims the job."""
    kind, registry, _ = backend
    store = open_store(tmp_path)
    tenant = setup_tenant(registry)
    docs = docs_service(registry, tmp_path)
    job_id = upload_text(docs, tenant, "a.txt", long_text("harbour", 20))["job_id"]
    a = make_worker(registry, store, lease_s=0.6)
    b = make_worker(registry, store, lease_s=0.6)
    embed = a.pipeline.run

    def slow(*args, **kwargs):
        time.sleep(2.0)  # three leases
        return embed(*args, **kwargs)

    a.pipeline.run = slow
    runner = threading.Thread(target=a.run_once)
    runner.start()
    time.sleep(0.3)
    claims = []
    while runner.is_alive():
        claims.append(b.claim())
        time.sleep(0.2)
    runner.join()
    assert claims and all(c is None for c in claims), "a second worker took the job"
    job = docs.get_job(tenant, job_id)
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert store.count(tenant) == job["chunks"] > 0
    store.close()


def test_a_worker_that_lost_its_job_never_hides_what_another_made_current(backend, tmp_path):
    """A's lease ran out and B indexed the job; A, still holding the versions it read before,
    must not set them back to indexing (hidden from readers)."""
    kind, registry, _ = backend
    store = open_store(tmp_path)
    tenant = setup_tenant(registry)
    docs = docs_service(registry, tmp_path)
    upload_text(docs, tenant, "a.txt", long_text("harbour", 10))
    a = make_worker(registry, store, lease_s=0.3)
    job = a.claim()
    stale = a.versions.of_job(job.id)  # queued, as A read them
    time.sleep(0.5)  # A's lease runs out
    b = make_worker(registry, store)
    assert b.run_once()
    current = docs.get_document(tenant, "a")
    assert current["current_version"] == 1 and current["status"] == "current"
    a.versions.of_job = lambda job_id: stale
    with pytest.raises(LeaseLost):
        a._process(job)
    after = docs.get_document(tenant, "a")
    assert after["status"] == "current" and after["chunks"] == current["chunks"]
    assert docs.hidden_versions(tenant) == []
    assert store.count(tenant) == current["chunks"]
    store.close()


def test_a_full_store_disk_delays_a_job_and_never_fails_it(backend, tmp_path):
    """The store refusing writes for lack of space (StoreFull) is an outage: the job waits and
    runs again, its attempts not counted, however long it lasts, and then indexes."""
    from ingest.vector_store import StoreFull

    kind, registry, _ = backend
    store = open_store(tmp_path)
    tenant = setup_tenant(registry)
    docs = docs_service(registry, tmp_path)
    job_id = upload_text(docs, tenant, "a.txt", long_text("harbour", 10))["job_id"]
    worker = make_worker(registry, store, backoff_s=0.01, max_attempts=2)
    real, refusals = store.upsert, []

    def full(chunks):
        if len(refusals) < 5:  # more refusals than the job has attempts
            refusals.append(1)
            raise StoreFull("the vector store's disk has 3 MB free")
        real(chunks)

    store.upsert = full
    deadline = time.monotonic() + 60
    while docs.get_job(tenant, job_id)["state"] != "succeeded":
        assert time.monotonic() < deadline, docs.get_job(tenant, job_id)
        if not worker.run_once():
            time.sleep(0.02)
    job = docs.get_job(tenant, job_id)
    assert len(refusals) == 5 and job["attempts"] == 1
    assert store.count(tenant) == job["chunks"] > 0
    store.close()
