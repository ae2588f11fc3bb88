"""Faults the service must survive cleanly, in-process (the real vLLM killed mid-stream is in
tests/integration/test_faults_e2e.py): a slow engine, the registry database going away and
coming back, a full disk under an upload. Worker deaths at every step of a job are in
tests/ingest/test_worker.py; the vector store failing under a policy of `fail` or `degrade` in
tests/ingest/test_documents_api.py."""

from __future__ import annotations

import errno
import shutil
import subprocess
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.app import create_app
from tests.helpers.app import assert_error, make_settings, new_tenant
from tests.helpers.knowledge_base import make_worker
from tests.helpers.postgres import TempPostgres, postgres_available

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def test_a_slow_engine_is_a_bounded_503(tmp_path, fake_engine):
    settings = make_settings(tmp_path, [fake_engine.url])
    settings.engine.request_timeout_s = 0.5
    with TestClient(create_app(settings)) as client:
        _, headers = new_tenant(client)
        started = time.monotonic()
        r = client.post("/v1/chat/completions", headers=headers,
                        json={**CHAT, "messages": [{"role": "user", "content": "SLOW"}]})
        took = time.monotonic() - started
        assert_error(r, 503, "engine_unavailable")
        assert r.headers["retry-after"]
        assert took < 3, f"the 0.5 s timeout took {took:.1f} s"
        assert client.post("/v1/chat/completions", headers=headers, json=CHAT).status_code == 200


class Outage:
    """The registry's PostgreSQL refusing connections and dropping the open ones (what clients
    see of a restart), then back."""

    def __init__(self, pg: TempPostgres) -> None:
        self.pg = pg

    def __enter__(self) -> Outage:
        with self.pg.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.pg.name}" ALLOW_CONNECTIONS false'))
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"
            ), {"d": self.pg.name})
        return self

    def __exit__(self, *exc) -> None:
        with self.pg.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.pg.name}" ALLOW_CONNECTIONS true'))


@pytest.mark.postgres
def test_registry_outage_fails_cleanly_then_recovers_and_loses_no_job(tmp_path, fake_engine):
    if not postgres_available():
        pytest.skip("no PostgreSQL at RAGTUNE_TEST_POSTGRES_URL")
    pg = TempPostgres()
    settings = make_settings(tmp_path, [fake_engine.url], database_url=pg.url)
    settings.worker.embedded = False  # the job waits for the worker this test runs itself
    try:
        with TestClient(create_app(settings)) as client:
            tenant, headers = new_tenant(client)
            r = client.post("/v1/documents", headers=headers,
                            files={"file": ("notes.txt", b"The depot opens at 06:30 sharp.")})
            assert r.status_code == 202
            job_id = r.json()["job_id"]
            with Outage(pg):
                r = client.post("/v1/chat/completions", headers=headers, json=CHAT)
                assert_error(r, 503, "registry_unavailable")
                assert r.headers["retry-after"] == "5"
                r = client.post("/v1/documents", headers=headers,
                                files={"file": ("more.txt", b"Another note about depots.")})
                assert_error(r, 503, "registry_unavailable")
                ready = client.get("/readyz")
                assert ready.status_code == 503 and ready.json()["checks"]["registry"] != "ok"
                assert client.get("/healthz").status_code == 200
            assert client.post("/v1/chat/completions", headers=headers, json=CHAT).status_code \
                == 200
            assert client.get("/readyz").status_code == 200
            # the upload refused during the outage left nothing behind
            uploads = settings.data_dir / "uploads" / tenant
            assert [p.name for p in uploads.iterdir()] == [job_id]
            # the job accepted before the outage is still there, and a worker indexes it
            state = client.app.state.ragtune
            worker = make_worker(state.registry, state.store)
            assert worker.run_once()
            job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
            assert job["state"] == "succeeded" and job["chunks"] == 1
    finally:
        pg.drop()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs: a real ENOSPC (root and mount(8) needed; skipped where they are not)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_on_upload_is_a_clean_507_and_leaves_nothing(tmp_path, fake_engine, tiny_disk):
    settings = make_settings(tmp_path / "data", [fake_engine.url])
    with TestClient(create_app(settings)) as client:
        _, headers = new_tenant(client)
        uploads = settings.data_dir / "uploads"
        shutil.rmtree(uploads, ignore_errors=True)
        uploads.symlink_to(tiny_disk, target_is_directory=True)
        ballast = tiny_disk / "ballast"
        with open(ballast, "wb") as f:  # fill the disk but for a few KB
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        ballast.write_bytes(b"\0" * (ballast.stat().st_size - 32768))
        body = ("The warehouse opens at dawn. " * 4000).encode()  # ~116 KB: does not fit
        r = client.post("/v1/documents", headers=headers, files={"file": ("big.txt", body)})
        assert_error(r, 507, "insufficient_storage")
        assert [p for p in tiny_disk.rglob("*") if p.is_file()] == [ballast]
        assert client.get("/v1/documents", headers=headers).json()["data"] == []
        ballast.unlink()
        r = client.post("/v1/documents", headers=headers, files={"file": ("big.txt", body)})
        assert r.status_code == 202, r.text
