"""Adapters through the API against fake engines (the router and lifecycle; the real vLLM runs in
tests/integration/test_adapters_e2e.py): register, serve, hot swap, rollback, delete, register by
uri, tenant isolation, metrics. Bad adapters leaving nothing behind are test_adapters_refused.py,
several replicas, reconcile and LRU residency test_adapters_replicas.py, choosing the adapter
test_adapters_routing.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.helpers import adapter_files as f
from tests.helpers.adapter_service import EXAMPLES, archive, register, stored_files
from tests.helpers.api import chat
from tests.helpers.app import assert_error, new_tenant


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
    # An adapter's `created` is when its served version was registered, not the process start.
    time.sleep(1.1)
    assert register(client, headers, archive(tmp_path), name="later").status_code == 201
    created = {m["id"]: m["created"] for m in client.get("/v1/models", headers=headers).json()[
        "data"]}
    assert created["later"] > created["warelang"] >= created["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert abs(created["later"] - time.time()) < 5


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


def test_adapter_metrics(client, tmp_path):
    _, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path)).status_code == 201
    assert chat(client, headers, model="warelang").status_code == 200
    text = client.get("/metrics").text
    assert "ragtune_adapter_loads_total 2.0" in text  # two replicas
    assert 'ragtune_adapter_requests_total{adapter="warelang@1"} 1.0' in text
    assert "ragtune_adapter_load_duration_seconds_count 2.0" in text
