"""Gated adapter releases against fake engines (an adapter's answers name its engine name, so an
eval set's checks can tell versions apart): a version worse than the current one on the tenant's
set is kept `rejected` with the figures, unloaded and its files removed, and traffic stays; one
not worse switches and keeps its gate record; the allowance is honoured; the first version is
compared with `rag`; each bad gate is refused with its code before anything is stored. The same
through the real vLLM, with an adapter trained on shuffled answers, is in
tests/integration/test_hybrid_story.py."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.adapter_service import archive, register, stored_files
from tests.helpers.api import ask
from tests.helpers.app import assert_error, new_tenant


def eval_set(client, headers, checks: list[dict]) -> str:
    items = [{"id": f"i{n}", "query": f"Write pick rule {n}", "checks": c}
             for n, c in enumerate(checks)]
    r = client.post("/v1/eval-sets", headers=headers, json={"name": "gate", "items": items})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def gated(client, headers, tmp_path, set_id: str, min_delta: float = 0.0):
    gate = json.dumps({"eval_set": set_id, "min_delta": min_delta, "max_tokens": 16})
    return register(client, headers, archive(tmp_path), gate=gate)


def v1_only(tenant_id: str) -> dict:
    """Passes only on version 1's answers (they carry its engine name)."""
    return {"contains": [f"{tenant_id}--warelang--v1]"]}


def test_a_worse_version_is_rejected_and_traffic_stays(client, engines, tmp_path):
    tenant_id, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path)).status_code == 201
    set_id = eval_set(client, headers, [v1_only(tenant_id)] * 6)
    before = stored_files(client)

    with ThreadPoolExecutor(2) as pool:  # traffic while the gate evaluates the candidate
        gate = pool.submit(gated, client, headers, tmp_path, set_id)
        answers = [pool.submit(ask, client, headers, "Write a pick rule", model="warelang")
                   for _ in range(6)]
        r = gate.result()
        served = {a.result()["route"]["adapter"] for a in answers}
    assert served == {"warelang@1"}, "no request reached the candidate"
    err = assert_error(r, 422, "gate_failed")
    assert err["param"] == "gate"
    msg = err["message"]
    assert "passed 0 of 6 items (0%)" in msg and "6 of 6 (100%) for version 1" in msg, msg
    assert "-100.0 points" in msg and "eval_" in msg

    detail = client.get("/v1/adapters/warelang", headers=headers).json()
    assert detail["version"] == 1 and detail["status"] == "ready"
    v2 = next(v for v in detail["versions"] if v["version"] == 2)
    assert v2["status"] == "rejected"
    g = v2["gate"]
    assert (g["baseline"], g["candidate"]) == ("adapter_rag:warelang@1", "adapter_rag:warelang@2")
    assert (g["baseline_pass_rate"], g["pass_rate"], g["delta"], g["passed"]) == (1.0, 0.0, -1.0,
                                                                                  False)
    assert g["p_value"] == pytest.approx(2 / 2**6)  # exact McNemar, 6 discordant items
    # the evaluation is the tenant's to read, item by item
    ev = client.get(f"/v1/evaluations/{g['evaluation']}", headers=headers).json()
    assert ev["state"] == "succeeded" and ev["progress"] == {"done": 12, "total": 12}
    # nothing of the candidate left: not loaded, no files, not a rollback target, not evaluable
    assert all(not any(n.endswith("--v2") for n in e.loras) for e in engines)
    assert stored_files(client) == before
    assert ask(client, headers, "Write a pick rule", model="warelang")["route"]["adapter"] == (
        "warelang@1")
    assert_error(client.post("/v1/adapters/warelang/rollback", headers=headers,
                             json={"version": 2}), 400, "no_version_to_roll_back_to")
    r = client.post("/v1/evaluations", headers=headers,
                    json={"eval_set": set_id, "arms": ["adapter_rag:warelang@2"]})
    assert_error(r, 404, "model_not_found")

    # the next registration is version 3, and a version as good as the current one passes
    good = eval_set(client, headers, [{"contains": ["--warelang--v"]}] * 4)
    r = gated(client, headers, tmp_path, good)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["version"] == 3 and body["gate"]["passed"] is True
    assert body["gate"]["baseline"] == "adapter_rag:warelang@1"
    assert body["gate"]["delta"] == 0.0
    assert ask(client, headers, "Write a pick rule", model="warelang")["route"]["adapter"] == (
        "warelang@3")
    statuses = {v["version"]: v["status"] for v in client.get(
        "/v1/adapters/warelang", headers=headers).json()["versions"]}
    assert statuses == {1: "retired", 2: "rejected", 3: "ready"}


@pytest.mark.parametrize(("min_delta", "status"), [(0.5, 201), (0.4, 422)])
def test_the_allowance_is_how_much_lower_the_pass_rate_may_be(client, tmp_path, min_delta,
                                                              status):
    tenant_id, headers = new_tenant(client)
    assert register(client, headers, archive(tmp_path)).status_code == 201
    # half the items only version 1 passes, half any version passes: v2 is 50 points lower
    set_id = eval_set(client, headers, [v1_only(tenant_id), {"contains": ["--warelang--"]}] * 2)
    r = gated(client, headers, tmp_path, set_id, min_delta)
    assert r.status_code == status, r.text
    current = client.get("/v1/adapters/warelang", headers=headers).json()
    assert current["version"] == (2 if status == 201 else 1)


def test_a_first_version_is_compared_with_rag(client, engines, tmp_path):
    _, headers = new_tenant(client)
    # the adapter's answers carry its name; rag's do not
    good = eval_set(client, headers, [{"contains": ["--warelang--v1]"]}] * 3)
    r = gated(client, headers, tmp_path, good)
    assert r.status_code == 201, r.text
    assert r.json()["gate"]["baseline"] == "rag" and r.json()["gate"]["pass_rate"] == 1.0

    _, other = new_tenant(client)
    worse = eval_set(client, other, [{"not_contains": ["--warelang--"]}] * 3)
    assert_error(gated(client, other, tmp_path, worse), 422, "gate_failed")
    # nothing serves, nothing is listed, nothing is loaded for that tenant
    assert client.get("/v1/adapters", headers=other).json()["data"] == []
    assert_error(client.get("/v1/adapters/warelang", headers=other), 404, "adapter_not_found")
    assert all(sum(n.endswith("--warelang--v1") for n in e.loras) == 1 for e in engines)


@pytest.mark.parametrize(
    ("gate", "status", "code"),
    [
        ("not json", 400, "invalid_gate"),
        (json.dumps({"eval_set": "evs_x", "min_delta": 2}), 400, "invalid_gate"),
        (json.dumps({"eval_set": "evs_x", "typo": 1}), 400, "invalid_gate"),
        (json.dumps({"min_delta": 0.1}), 400, "invalid_gate"),
        (json.dumps({"eval_set": "evs_nope"}), 404, "eval_set_not_found"),
        ("OTHER_TENANTS_SET", 404, "eval_set_not_found"),
        (json.dumps({"eval_set": "MINE", "max_tokens": 10**6}), 400, "max_tokens_too_large"),
    ],
)
def test_bad_gates_are_refused_before_anything_is_stored(client, engines, tmp_path, gate, status,
                                                         code):
    _, headers = new_tenant(client)
    mine = eval_set(client, headers, [{"contains": ["x"]}])
    if gate == "OTHER_TENANTS_SET":
        _, other = new_tenant(client)
        gate = json.dumps({"eval_set": eval_set(client, other, [{"contains": ["x"]}])})
    gate = gate.replace("MINE", mine)
    r = register(client, headers, archive(tmp_path), gate=gate)
    assert_error(r, status, code)
    assert client.get("/v1/adapters", headers=headers).json()["data"] == []
    assert stored_files(client) == []
    assert all(not e.loras for e in engines)
    assert client.get("/v1/evaluations", headers=headers).json()["data"] == []


def test_a_gate_in_a_json_registration_is_checked_too(client, tmp_path):
    _, headers = new_tenant(client)
    r = client.post("/v1/adapters", headers=headers, json={
        "name": "warelang", "uri": "nowhere", "gate": {"eval_set": "evs_x", "min_delta": -1}})
    assert_error(r, 400, "invalid_gate")
    r = client.post("/v1/adapters", headers=headers, json={
        "name": "warelang", "uri": "nowhere", "gate": {"eval_set": "evs_x"}})
    assert_error(r, 404, "eval_set_not_found")
