"""The scaled-out topology without containers: two API processes and two `ragtune worker`
processes on one PostgreSQL registry and one external vLLM (the session's engine).

Uploads through either API are claimed and indexed exactly once by one of the workers; an adapter
registered through one API serves through the other (both reconcile the same engine). What this
machine cannot run is the shared Qdrant server such a deployment uses (no Docker image can be
pulled): here each process keeps its own embedded store, so retrieval across processes is not
checked; with `RAGTUNE_TEST_QDRANT_URL` set, every process uses that server and it is.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tests.helpers.app import ADMIN_KEY
from tests.helpers.postgres import TempPostgres, postgres_available
from tests.helpers.random_lora import make_random_lora
from tests.helpers.server import RagtuneProcess, RagtuneServer

pytestmark = pytest.mark.integration
QDRANT_URL = os.environ.get("RAGTUNE_TEST_QDRANT_URL")


@pytest.fixture(scope="module")
def topology(server, base_model_dir, tmp_path_factory):
    if not postgres_available():
        pytest.skip("no PostgreSQL at RAGTUNE_TEST_POSTGRES_URL")
    tmp = tmp_path_factory.mktemp("topology")
    pg = TempPostgres()
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "RAGTUNE_ADMIN_KEY": ADMIN_KEY,
        "RAGTUNE_DATABASE_URL": pg.url, "RAGTUNE_MODEL_DIR": str(base_model_dir),
        "RAGTUNE_ENGINE__URLS": f'["{server.engine_url}"]', "RAGTUNE_WORKER__EMBEDDED": "false",
        "RAGTUNE_ADAPTERS__ROOT": str(tmp / "adapters"), "RAGTUNE_LOG_JSON": "false",
        "RAGTUNE_WORKER__POLL_S": "0.2",
    }
    if QDRANT_URL:
        env["RAGTUNE_QDRANT__URL"] = QDRANT_URL
    apis = [
        RagtuneServer(tmp / name, admin_key=ADMIN_KEY, engine_urls=[server.engine_url],
                      model_dir=base_model_dir, env=env, log_path=tmp / f"{name}.log")
        for name in ("api-a", "api-b")
    ]
    workers = [
        RagtuneProcess(["worker", "--data-dir", str(tmp / name)], env=env,
                       log_path=tmp / f"{name}.log")
        for name in ("worker-1", "worker-2")
    ]
    try:
        for p in [*apis, *workers]:
            p.start()
        for api in apis:
            api.wait_ready(180)
        for w in workers:
            w.wait_for(lambda w=w: "ingestion worker" in w.log_text() and "started" in w.log_text(),
                       str(w.log_path), 180)
        yield [api.url for api in apis], workers, pg
    finally:
        for p in [*apis, *workers]:
            p.stop(30)
        pg.drop()


def test_uploads_through_either_api_are_indexed_once(topology):
    (a, b), workers, pg = topology
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(f"{a}/v1/tenants", headers=admin, json={"id": "topo", "policy": {}})
    assert r.status_code == 201, r.text
    key = {"Authorization": f"Bearer {r.json()['api_key']}"}
    jobs = []
    for i in range(6):
        api = (a, b)[i % 2]
        text = f"Document {i}. " + " ".join(f"Fact {i}.{j} is about shelf {j}." for j in range(40))
        r = httpx.post(f"{api}/v1/documents", headers=key,
                       files={"file": (f"doc{i}.txt", text.encode())}, timeout=60)
        assert r.status_code == 202, r.text
        jobs.append(r.json()["job_id"])
    deadline = time.monotonic() + 180
    done = {}
    while len(done) < len(jobs) and time.monotonic() < deadline:
        for i, job in enumerate(jobs):
            other = (b, a)[i % 2]  # read through the API that did not take the upload
            body = httpx.get(f"{other}/v1/jobs/{job}", headers=key).json()
            if body["state"] in ("succeeded", "failed"):
                done[job] = body
        time.sleep(0.3)
    assert len(done) == len(jobs), done
    assert all(j["state"] == "succeeded" and j["attempts"] == 1 and j["chunks"] > 0
               for j in done.values()), done
    from sqlalchemy import create_engine, text

    engine = create_engine(pg.url)
    with engine.connect() as conn:
        leased = conn.execute(text("SELECT leased_by FROM jobs")).scalars().all()
    engine.dispose()
    assert len(leased) == 6 and all(leased), leased
    listed = httpx.get(f"{b}/v1/documents", headers=key).json()["data"]
    assert sorted(d["document_id"] for d in listed) == [f"doc{i}" for i in range(6)]


def test_an_adapter_registered_through_one_api_serves_through_the_other(topology,
                                                                        base_model_dir, tmp_path):
    (a, b), _, _ = topology
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(f"{b}/v1/tenants", headers=admin, json={"id": "topo-ad", "policy": {}})
    key = {"Authorization": f"Bearer {r.json()['api_key']}"}
    folder = make_random_lora(tmp_path / "lora", base_model_dir, seed=3, rank=8)
    from adapters.pack import pack_adapter

    r = httpx.post(f"{a}/v1/adapters", headers=key, timeout=120,
                   files={"file": ("x.tar.gz", pack_adapter(folder), "application/gzip")},
                   data={"name": "shared", "examples": "[]"})
    assert r.status_code == 201, r.text
    try:
        r = httpx.post(f"{b}/v1/chat/completions", headers=key, timeout=120, json={
            "model": "shared", "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hello"}]})
        assert r.status_code == 200, r.text
        assert r.json()["route"]["adapter"] == "shared@1"
        models = httpx.get(f"{b}/v1/models", headers=key).json()["data"]
        assert "shared" in [m["id"] for m in models]
    finally:
        assert httpx.delete(f"{b}/v1/adapters/shared", headers=key).status_code == 204
