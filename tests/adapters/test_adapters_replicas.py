"""Adapters on several engine replicas, against fake engines: a restarted replica gets its adapters
back, foreign adapters are left alone, capacity loads on demand least recently used first, an
adapter evicted behind this process's back is reloaded, and reconcile finishes a delete a dead
process left half done."""

from __future__ import annotations

import time

from tests.helpers.adapter_service import archive, make_client, register, stored_files
from tests.helpers.api import chat
from tests.helpers.app import assert_error, new_tenant


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
    root = client.app.state.ragtune.settings.resolved_adapters_root
    engines[0].loras["operators-own"] = str(tmp_path)
    # ragtune's name and root, not in the registry: a leftover of this deployment
    engines[0].loras["gone--stale--v9"] = str(root / "gone" / "stale" / "v9")
    # ragtune's name, another root: another deployment sharing the engine
    other = tmp_path.parent / f"{tmp_path.name}-other" / "adapters"
    engines[0].loras["theirs--sql--v1"] = str(other / "theirs" / "sql" / "v1")
    deadline = time.monotonic() + 5
    while "gone--stale--v9" in engines[0].loras and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "gone--stale--v9" not in engines[0].loras
    assert "operators-own" in engines[0].loras
    assert "theirs--sql--v1" in engines[0].loras


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
