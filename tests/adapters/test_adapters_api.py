"""Adapters through the API against fake engines (the router and lifecycle; the real vLLM runs in
tests/integration/test_adapters_e2e.py): register, serve, hot swap, rollback, delete, bad
adapters leaving nothing behind, tenant isolation, several replicas, reconcile, LRU residency."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import adapter_files as f
from tests.helpers.api import chat
from tests.helpers.app import assert_error, make_settings, new_tenant
from tests.helpers.fake_engine import FakeEngine

MAX_BYTES = 16 << 20  # the server's cap in the bad-adapter table (a rank-8 adapter is ~10 MB)
EXAMPLES = ["Write a pick rule for zone heron", "Translate this into WARELANG"]


@pytest.fixture
def engines():
    started = [FakeEngine().start(), FakeEngine().start()]
    yield started
    for e in started:
        e.stop()


def make_client(tmp_path: Path, engines: list[FakeEngine], **adapters) -> TestClient:
    settings = make_settings(
        tmp_path,
        [e.url for e in engines],
        model_dir=f.base_model_dir(),
        adapters={"retire_grace_s": 0.05, "reconcile_interval_s": 0.2, **adapters},
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path, engines):
    with make_client(tmp_path, engines) as c:
        yield c


def archive(tmp_path: Path, rank: int = 8, mutate=None, name: str = "a.tar.gz") -> bytes:
    folder = f.valid_adapter(tmp_path / f"src-{name}-{time.monotonic_ns()}", rank=rank)
    if mutate is not None:
        mutate(folder)
    return f.tar_gz_of(folder, tmp_path / name).read_bytes()


def register(client, headers, data: bytes, name="warelang", **fields):
    return client.post(
        "/v1/adapters",
        headers=headers,
        files={"file": ("adapter.tar.gz", data, "application/gzip")},
        data={"name": name, "description": "WARELANG rules", "examples": json.dumps(EXAMPLES),
              **fields},
    )


def stored_files(client) -> list[Path]:
    """The files under the adapter root; os.walk, not rglob: a delete may be removing the
    folders while this looks (rglob raises on a folder gone mid-scan, os.walk skips it)."""
    root = client.app.state.ragtune.settings.resolved_adapters_root
    return sorted(Path(d) / n for d, _, names in os.walk(root) for n in names)


def test_register_serve_list_and_models(client, engines, tmp_path):
    tenant, headers = new_tenant(client)
    r = register(client, headers, archive(tmp_path))
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["name"], body["version"], body["status"]) == ("warelang", 1, "ready")
    assert body["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and body["rank"] == 8
    ename = f"{tenant}--warelang--v1"
    assert all(ename in e.loras for e in engines), "loaded on every replica"
    assert Path(engines[0].loras[ename]).name == "v1"

    r = chat(client, headers, model="warelang")
    assert r.status_code == 200, r.text
    out = r.json()
    assert r.headers["x-route"] == "adapter_rag"
    assert out["route"]["path"] == "adapter_rag" and out["route"]["adapter"] == "warelang@1"
    assert out["model"] == "warelang"
    assert out["choices"][0]["message"]["content"].startswith(f"echo[{ename}]")

    assert [a["name"] for a in client.get("/v1/adapters", headers=headers).json()["data"]] == [
        "warelang"
    ]
    one = client.get("/v1/adapters/warelang", headers=headers).json()
    assert one["examples"] == EXAMPLES and [v["version"] for v in one["versions"]] == [1]
    models = client.get("/v1/models", headers=headers).json()["data"]
    assert [(m["id"], m["parent"]) for m in models][1:] == [
        ("warelang", "HuggingFaceTB/SmolLM2-135M-Instruct")
    ]


def test_streamed_adapter_answer(client, tmp_path):
    _, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path)).status_code == 201
    with client.stream(
        "POST", "/v1/chat/completions", headers=headers,
        json={"model": "warelang", "stream": True,
              "messages": [{"role": "user", "content": "hi"}]},
    ) as r:
        assert r.status_code == 200 and r.headers["x-route"] == "adapter_rag"
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    first = json.loads(events[0])
    assert first["route"]["adapter"] == "warelang@1" and first["model"] == "warelang"
    assert events[-1] == "[DONE]"


def test_new_version_switches_traffic_then_old_unloads_and_rollback(client, engines, tmp_path):
    tenant, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path, name="1.tgz")).status_code == 201
    r = register(client, headers, archive(tmp_path, rank=4, name="2.tgz"))
    assert r.status_code == 201 and r.json()["version"] == 2 and r.json()["rank"] == 4
    out = chat(client, headers, model="warelang").json()
    assert out["route"]["adapter"] == "warelang@2"
    v1, v2 = f"{tenant}--warelang--v1", f"{tenant}--warelang--v2"
    deadline = time.monotonic() + 5
    while any(v1 in e.loras for e in engines) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(v1 not in e.loras and v2 in e.loras for e in engines)
    versions = client.get("/v1/adapters/warelang", headers=headers).json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [(2, "ready"), (1, "retired")]

    r = client.post("/v1/adapters/warelang/rollback", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert chat(client, headers, model="warelang").json()["route"]["adapter"] == "warelang@1"
    assert all(v1 in e.loras for e in engines)
    assert_error(
        client.post("/v1/adapters/warelang/rollback", headers=headers, json={"version": 7}),
        400, "no_version_to_roll_back_to",
    )


def test_hot_swap_under_load_loses_no_request(client, tmp_path):
    _, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path, name="1.tgz")).status_code == 201
    v2 = archive(tmp_path, rank=4, name="2.tgz")
    seen, failures, stop = [], [], threading.Event()  # seen: (started, ended, adapter)

    def loop():
        while not stop.is_set():
            started = time.monotonic()
            r = chat(client, headers, model="warelang")
            if r.status_code != 200:
                failures.append(r.text)
            else:
                seen.append((started, time.monotonic(), r.json()["route"]["adapter"]))

    def wait_for(cond, timeout=60):
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cond(), (seen, failures)

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(seen) >= 8)
        registering = time.monotonic()
        assert register(client, headers, v2).status_code == 201
        switched = time.monotonic()
        wait_for(lambda: sum(s[0] > switched for s in seen) >= 8)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert all(a == "warelang@1" for _, ended, a in seen if ended < registering)
    assert all(a == "warelang@2" for started, _, a in seen if started > switched)


def test_delete_unloads_and_removes_everything(client, engines, tmp_path):
    tenant, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path)).status_code == 201
    assert client.delete("/v1/adapters/warelang", headers=headers).status_code == 204
    assert_error(chat(client, headers, model="warelang"), 404, "model_not_found")
    deadline = time.monotonic() + 5
    while (stored_files(client) or any(e.loras for e in engines)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_files(client) == [] and all(not e.loras for e in engines)
    assert client.get("/v1/adapters", headers=headers).json()["data"] == []
    assert_error(client.get("/v1/adapters/warelang", headers=headers), 404, "adapter_not_found")
    # the name is free again, numbering restarts with the adapter
    r = register(client, headers, archive(tmp_path, name="again.tgz"))
    assert r.status_code == 201 and r.json()["version"] == 1


BAD_ARCHIVES = {
    "symlink in archive": (lambda d, t: f.tar_symlink(d), "link_in_archive"),
    ".. path": (lambda d, t: f.tar_dotdot(d), "path_escape"),
    "zip bomb": (lambda d, t: f.zip_bomb(d, 2 * MAX_BYTES), "archive_too_large"),
    "not an archive": (lambda d, t: f.not_an_archive(d), "invalid_archive"),
}


@pytest.mark.parametrize(
    "label", [*f.BAD_ADAPTERS, *BAD_ARCHIVES, "oversized upload", "engine refuses"]
)
def test_bad_adapters_are_refused_and_leave_nothing(tmp_path, engines, label):
    with make_client(tmp_path / "srv", engines, max_archive_bytes=MAX_BYTES) as client:
        _, headers = new_tenant(client)
        if label in f.BAD_ADAPTERS:
            mutate, code = f.BAD_ADAPTERS[label]
            data = archive(tmp_path, mutate=mutate)
        elif label in BAD_ARCHIVES:
            build, code = BAD_ARCHIVES[label]
            data = build(tmp_path / "bad.tar.gz", tmp_path).read_bytes()
        elif label == "oversized upload":
            # past the cap, inside the request body limit: refused while being stored
            data, code = b"\x1f\x8b" + b"\0" * (MAX_BYTES + (256 << 10)), "archive_too_large"
        else:
            data, code = archive(tmp_path), "engine_rejected_adapter"
            for e in engines:
                e.refuse_loads = True
        try:
            r = register(client, headers, data)
        finally:
            for e in engines:
                e.refuse_loads = False
        assert_error(r, 422, code)
        assert client.get("/v1/adapters", headers=headers).json()["data"] == []
        assert stored_files(client) == []
        assert all(not e.loras for e in engines), "nothing left loaded"
        root = client.app.state.ragtune.settings.resolved_adapters_root
        assert not any(p.is_dir() and p.name != ".incoming" for p in root.iterdir())
        assert list((root / ".incoming").iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"name": ""}, "missing_name"),
        ({"name": "has space"}, "invalid_adapter_name"),
        ({"name": "a--b"}, "invalid_adapter_name"),
        ({"name": "auto"}, "invalid_adapter_name"),
        ({"examples": "not json"}, "invalid_examples"),
        ({"examples": json.dumps([1, 2])}, "invalid_examples"),
        ({"examples": json.dumps({"a": 1})}, "invalid_examples"),
    ],
)
def test_bad_fields(client, tmp_path, fields, code):
    _, headers = new_tenant(client)
    assert_error(register(client, headers, archive(tmp_path), **fields), 400, code)
    assert stored_files(client) == []


def test_register_needs_a_file_or_json(client):
    _, headers = new_tenant(client)
    r = client.post("/v1/adapters", headers=headers, files={"x": ("a", b"1")},
                    data={"name": "n"})
    assert_error(r, 400, "missing_file")
    r = client.post("/v1/adapters", headers={**headers, "content-type": "text/plain"},
                    content=b"x")
    assert_error(r, 400, "invalid_content_type")


def test_register_by_uri_under_the_root(client, engines, tmp_path):
    tenant, headers = new_tenant(client)
    root = client.app.state.ragtune.settings.resolved_adapters_root
    src = f.valid_adapter(root / "drop" / "mine")
    r = client.post("/v1/adapters", headers=headers,
                    json={"name": "fromdisk", "uri": str(src), "examples": EXAMPLES})
    assert r.status_code == 201, r.text
    assert (root / tenant / "fromdisk" / "v1" / "adapter_config.json").exists()
    assert src.exists(), "the source folder is copied, not taken"
    outside = f.valid_adapter(tmp_path / "outside")
    r = client.post("/v1/adapters", headers=headers, json={"name": "x", "uri": str(outside)})
    assert_error(r, 422, "path_escape")
    r = client.post("/v1/adapters", headers=headers,
                    json={"name": "x", "uri": str(root / "nothing-here")})
    assert_error(r, 422, "uri_not_found")


def test_tenants_never_reach_each_others_adapters(client, engines, tmp_path):
    _, a = new_tenant(client)
    _, b = new_tenant(client)
    assert register(client, a, archive(tmp_path)).status_code == 201
    assert_error(chat(client, b, model="warelang"), 404, "model_not_found")
    assert client.get("/v1/adapters", headers=b).json()["data"] == []
    assert_error(client.get("/v1/adapters/warelang", headers=b), 404, "adapter_not_found")
    assert_error(client.delete("/v1/adapters/warelang", headers=b), 404, "adapter_not_found")
    assert_error(client.post("/v1/adapters/warelang/rollback", headers=b), 404,
                 "adapter_not_found")
    assert [m["id"] for m in client.get("/v1/models", headers=b).json()["data"]] == [
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    ]
    # b may own an adapter of the same name: a different one
    assert register(client, b, archive(tmp_path, name="b.tgz")).status_code == 201
    out_a = chat(client, a, model="warelang").json()["choices"][0]["message"]["content"]
    out_b = chat(client, b, model="warelang").json()["choices"][0]["message"]["content"]
    assert out_a != out_b
    # a's adapter still serves a: b's delete took b's
    assert client.delete("/v1/adapters/warelang", headers=b).status_code == 204
    assert chat(client, a, model="warelang").status_code == 200


def test_restarted_replica_gets_its_adapters_back(client, engines, tmp_path):
    tenant, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path)).status_code == 201
    ename = f"{tenant}--warelang--v1"
    engines[1].loras.clear()  # a restart: vLLM forgets runtime adapters
    engines[1].healthy = False
    time.sleep(0.5)
    engines[1].healthy = True
    deadline = time.monotonic() + 5
    while ename not in engines[1].loras and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ename in engines[1].loras


def test_foreign_adapters_on_a_replica_are_left_alone(client, engines, tmp_path):
    engines[0].loras["operators-own"] = str(tmp_path)
    engines[0].loras["gone--stale--v9"] = str(tmp_path)  # ragtune's name, not in the registry
    deadline = time.monotonic() + 5
    while "gone--stale--v9" in engines[0].loras and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "gone--stale--v9" not in engines[0].loras
    assert "operators-own" in engines[0].loras


def test_capacity_loads_on_demand_least_recently_used_first(tmp_path, engines):
    with make_client(tmp_path / "srv", engines[:1], max_resident=2) as client:
        tenant, headers = new_tenant(client)
        for n in ("one", "two", "three"):
            assert register(client, headers, archive(tmp_path, name=f"{n}.tgz"), name=n,
                            examples="[]").status_code == 201
        held = set(engines[0].loras)
        assert len(held) == 2 and f"{tenant}--three--v1" in held
        for n in ("one", "two", "three", "one"):
            r = chat(client, headers, model=n)
            assert r.status_code == 200, r.text
            assert f"{tenant}--{n}--v1" in r.json()["choices"][0]["message"]["content"]
            assert len(engines[0].loras) <= 2
        # each load evicted the least recently used: "two" went when "one" came back
        assert set(engines[0].loras) == {f"{tenant}--three--v1", f"{tenant}--one--v1"}


def test_request_to_an_adapter_another_process_evicted_is_reloaded(client, engines, tmp_path):
    tenant, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path)).status_code == 201
    for e in engines:
        e.loras.clear()  # unloaded behind this process's back
    r = chat(client, headers, model="warelang")
    assert r.status_code == 200, r.text
    assert f"{tenant}--warelang--v1" in r.json()["choices"][0]["message"]["content"]


def test_auto_takes_the_adapter_whose_examples_match(client, tmp_path):
    _, headers = new_tenant(client, {"adapter_match_min": 0.6})
    r = register(client, headers, archive(tmp_path), examples=json.dumps(
        ["Write a WARELANG rule that moves pallets from zone heron to zone kite",
         "WARELANG: pick 12 units of SKU 400123 in zone wren"]))
    assert r.status_code == 201
    near = chat(client, headers, "Write a WARELANG rule moving pallets from heron to kite").json()
    assert near["route"]["path"] == "adapter_rag", near["route"]
    assert near["route"]["adapter"] == "warelang@1"
    assert near["route"]["signals"]["adapter_match"] >= 0.6
    far = chat(client, headers, "What is the capital of France?").json()
    assert far["route"]["path"] == "prompt", far["route"]
    assert far["route"]["signals"]["adapter_match"] < 0.6
    assert "no adapter matches" in far["route"]["reason"]


def test_a_name_registered_again_after_delete_matches_its_new_examples(client, tmp_path):
    """The router caches a version's example vectors; `warelang@1` registered again after a
    delete is another version with other examples, and auto must match those."""
    _, headers = new_tenant(client, {"adapter_match_min": 0.6})
    query = "Write a WARELANG rule moving pallets from heron to kite"
    r = register(client, headers, archive(tmp_path), examples=json.dumps(
        ["Write a WARELANG rule that moves pallets from zone heron to zone kite"]))
    assert r.status_code == 201
    assert chat(client, headers, query).json()["route"]["path"] == "adapter_rag"
    assert client.delete("/v1/adapters/warelang", headers=headers).status_code == 204
    deadline = time.monotonic() + 5
    while client.get("/v1/adapters", headers=headers).json()["data"] and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    r = register(client, headers, archive(tmp_path, name="again.tgz"),
                 description="Bakes sourdough bread",
                 examples=json.dumps(["How long should sourdough proof overnight?"]))
    assert r.status_code == 201 and r.json()["version"] == 1
    again = chat(client, headers, query).json()["route"]
    assert again["path"] == "prompt", again
    assert again["signals"]["adapter_match"] < 0.6
    bread = chat(client, headers, "How long do I proof sourdough overnight?").json()["route"]
    assert bread["path"] == "adapter_rag" and bread["adapter"] == "warelang@1", bread


def test_policy_mode_adapter_rag_uses_the_policys_adapter(client, tmp_path):
    tenant, headers = new_tenant(client, {"mode": "adapter_rag", "adapter": "second"})
    for n in ("first", "second"):
        assert register(client, headers, archive(tmp_path, name=f"{n}.tgz"),
                        name=n).status_code == 201
    out = chat(client, headers).json()
    assert out["route"]["path"] == "adapter_rag" and out["route"]["adapter"] == "second@1"
    assert "policy's adapter" in out["route"]["reason"]


def test_adapter_metrics(client, tmp_path):
    _, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path)).status_code == 201
    assert chat(client, headers, model="warelang").status_code == 200
    text = client.get("/metrics").text
    assert "ragtune_adapter_loads_total 2.0" in text  # two replicas
    assert 'ragtune_adapter_requests_total{adapter="warelang@1"} 1.0' in text
    assert "ragtune_adapter_load_duration_seconds_count 2.0" in text


def test_reconcile_finishes_a_delete_a_dead_process_left_half_done(client, engines, tmp_path):
    tenant, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path)).status_code == 201
    state = client.app.state.ragtune
    state.adapters.mark_deleting(tenant, "warelang")  # ... and the process died before purging
    assert_error(chat(client, headers, model="warelang"), 404, "model_not_found")
    deadline = time.monotonic() + 5  # the reconcile loop runs every 0.2 s here
    while (stored_files(client) or any(e.loras for e in engines)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_files(client) == [] and all(not e.loras for e in engines)
    from core.registry.models import Adapter

    with state.registry.session() as s:
        assert s.get(Adapter, (tenant, "warelang")) is None
