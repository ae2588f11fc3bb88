"""Tenant isolation across every endpoint (API.md: a tenant sees only its own documents, jobs,
adapters and answers; another tenant's id is 404, never 403).

Tenant A owns a document, its ingest job and an adapter with two versions; tenant B owns a
document of its own (so B's retrieval really searches) and nothing else. The table takes every
endpoint that takes an id and calls it with B's key and A's ids: tenant endpoints answer 404
with their own code, admin endpoints 403 admin_key_required; after each row A's things are
untouched. Then: B's chat never cites A's documents, not even asking A's exact sentence (plain,
forced rag, streamed, explain); B's /v1/models and /v1/adapters never show A's adapter;
/metrics holds no tenant id and no document text; rotated and revoked keys stop at once.

Pieces of this exist in tests/ingest/test_documents_api.py::test_tenant_isolation and
tests/adapters/test_adapters_api.py::test_tenants_never_reach_each_others_adapters; this is the
one suite across every endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import adapter_files as f
from tests.helpers.api import CHAT, indexed, wait_job
from tests.helpers.app import ADMIN, assert_error, make_settings, new_tenant
from tests.helpers.fake_engine import FakeEngine

A_TEXT = "The launch code of project Nimbus is 7741-ALPHA, kept in the blue safe of Hangar 9."
A_QUESTION = "What is the launch code of project Nimbus?"
B_TEXT = "Our office plants are watered on Mondays by the facilities team."
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class World:
    client: TestClient
    engine: FakeEngine
    a_id: str
    a: dict[str, str]
    b_id: str
    b: dict[str, str]
    job_id: str  # A's ingest job
    tmp: object
    vs: str  # A's vector store, holding A's document

    def ids(self) -> dict[str, str]:
        return {"doc": "nimbus", "job": self.job_id, "adapter": "warelang", "a": self.a_id,
                "b": self.b_id, "vs": self.vs}


def index(client, headers, name: str, text: str) -> str:
    return indexed(client, headers, name, text.encode())["job_id"]


def register(client, headers, tmp, name: str, label: str, rank: int = 8) -> dict:
    archive = f.tar_gz_of(f.valid_adapter(tmp / f"src-{label}", rank=rank), tmp / f"{label}.tgz")
    r = client.post("/v1/adapters", headers=headers,
                    files={"file": ("a.tar.gz", archive.read_bytes())},
                    data={"name": name, "description": "WARELANG rules for project Nimbus",
                          "examples": json.dumps([A_QUESTION, "Write a WARELANG pick rule"])})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("isolation")
    engine = FakeEngine().start()
    try:
        settings = make_settings(tmp / "srv", [engine.url], model_dir=f.base_model_dir(),
                                 adapters={"retire_grace_s": 0.05})
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            a_id, a = new_tenant(client)
            b_id, b = new_tenant(client)
            job_id = index(client, a, "nimbus.txt", A_TEXT)
            register(client, a, tmp, "warelang", "v1")
            register(client, a, tmp, "warelang", "v2", rank=4)
            index(client, b, "plants.txt", B_TEXT)
            vs = client.post("/v1/vector_stores", headers=a,
                             json={"name": "nimbus", "file_ids": ["nimbus"]}).json()["id"]
            yield World(client, engine, a_id, a, b_id, b, job_id, tmp, vs)
    finally:
        engine.stop()


def a_is_untouched(w: World) -> None:
    c = w.client
    assert c.get("/v1/documents/nimbus", headers=w.a).status_code == 200
    assert c.get(f"/v1/jobs/{w.job_id}", headers=w.a).json()["state"] == "succeeded"
    adapter = c.get("/v1/adapters/warelang", headers=w.a).json()
    assert adapter["version"] == 2, adapter  # nobody rolled it back or deleted it
    assert c.get("/v1/me", headers=w.a).json()["id"] == w.a_id  # A's key still works
    assert c.get(f"/v1/tenants/{w.a_id}", headers=ADMIN).json()["policy"]["mode"] == "auto"
    store = c.get(f"/v1/vector_stores/{w.vs}", headers=w.a).json()
    assert (store["name"], store["file_counts"]["total"]) == ("nimbus", 1), store
    out = c.post(CHAT, headers=w.a, json={"model": "warelang",
                                          "messages": [{"role": "user", "content": "hi"}]})
    assert out.status_code == 200 and out.json()["route"]["adapter"] == "warelang@2", out.text


# (name, method, path, kwargs, status, code): B's key, A's ids
ROWS = [
    ("get A's document", "GET", "/v1/documents/{doc}", {}, 404, "document_not_found"),
    ("delete A's document", "DELETE", "/v1/documents/{doc}", {}, 404, "document_not_found"),
    ("get A's job", "GET", "/v1/jobs/{job}", {}, 404, "job_not_found"),
    ("get A's adapter", "GET", "/v1/adapters/{adapter}", {}, 404, "adapter_not_found"),
    ("delete A's adapter", "DELETE", "/v1/adapters/{adapter}", {}, 404, "adapter_not_found"),
    ("roll back A's adapter", "POST", "/v1/adapters/{adapter}/rollback", {}, 404,
     "adapter_not_found"),
    ("roll back A's adapter to v1", "POST", "/v1/adapters/{adapter}/rollback",
     {"json": {"version": 1}}, 404, "adapter_not_found"),
    ("chat with A's adapter", "POST", CHAT,
     {"json": {"model": "{adapter}", "messages": [{"role": "user", "content": "hi"}]}}, 404,
     "model_not_found"),
    ("stream with A's adapter", "POST", CHAT,
     {"json": {"model": "{adapter}", "stream": True,
               "messages": [{"role": "user", "content": "hi"}]}}, 404, "model_not_found"),
    ("force adapter_rag with A's adapter", "POST", CHAT,
     {"json": {"model": "{adapter}", "route": "adapter_rag",
               "messages": [{"role": "user", "content": "hi"}]}}, 404, "model_not_found"),
    ("get A's file", "GET", "/v1/files/{doc}", {}, 404, "file_not_found"),
    ("read A's file", "GET", "/v1/files/{doc}/content", {}, 404, "file_not_found"),
    ("delete A's file", "DELETE", "/v1/files/{doc}", {}, 404, "file_not_found"),
    ("get A's vector store", "GET", "/v1/vector_stores/{vs}", {}, 404, "vector_store_not_found"),
    ("rename A's vector store", "POST", "/v1/vector_stores/{vs}", {"json": {"name": "mine"}},
     404, "vector_store_not_found"),
    ("delete A's vector store", "DELETE", "/v1/vector_stores/{vs}", {}, 404,
     "vector_store_not_found"),
    ("list A's store's files", "GET", "/v1/vector_stores/{vs}/files", {}, 404,
     "vector_store_not_found"),
    ("get A's store file", "GET", "/v1/vector_stores/{vs}/files/{doc}", {}, 404,
     "vector_store_not_found"),
    ("set A's store file's attributes", "POST", "/v1/vector_stores/{vs}/files/{doc}",
     {"json": {"attributes": {"a": "b"}}}, 404, "vector_store_not_found"),
    ("remove A's file from A's store", "DELETE", "/v1/vector_stores/{vs}/files/{doc}", {}, 404,
     "vector_store_not_found"),
    ("attach B's file to A's store", "POST", "/v1/vector_stores/{vs}/files",
     {"json": {"file_id": "plants"}}, 404, "vector_store_not_found"),
    ("search A's store", "POST", "/v1/vector_stores/{vs}/search", {"json": {"query": A_QUESTION}},
     404, "vector_store_not_found"),
    ("make a store of A's file", "POST", "/v1/vector_stores", {"json": {"file_ids": ["{doc}"]}},
     404, "file_not_found"),
    ("file_search A's store", "POST", "/v1/responses",
     {"json": {"input": A_QUESTION,
               "tools": [{"type": "file_search", "vector_store_ids": ["{vs}"]}]}}, 404,
     "vector_store_not_found"),
    ("file_search A's store, streamed", "POST", "/v1/responses",
     {"json": {"input": A_QUESTION, "stream": True,
               "tools": [{"type": "file_search", "vector_store_ids": ["{vs}"]}]}}, 404,
     "vector_store_not_found"),
    ("get tenant A", "GET", "/v1/tenants/{a}", {}, 403, "admin_key_required"),
    ("list the tenants", "GET", "/v1/tenants", {}, 403, "admin_key_required"),
    ("the operators' status", "GET", "/v1/admin/status", {}, 403, "admin_key_required"),
    ("a backup of every tenant", "POST", "/v1/admin/backup", {}, 403, "admin_key_required"),
    ("patch tenant A", "PATCH", "/v1/tenants/{a}", {"json": {"policy": {"mode": "prompt"}}},
     403, "admin_key_required"),
    ("rotate A's keys", "POST", "/v1/tenants/{a}/keys", {}, 403, "admin_key_required"),
    ("delete tenant A", "DELETE", "/v1/tenants/{a}", {}, 403, "admin_key_required"),
    ("get tenant B itself", "GET", "/v1/tenants/{b}", {}, 403, "admin_key_required"),
    ("patch tenant B itself", "PATCH", "/v1/tenants/{b}",
     {"json": {"policy": {"adapter": "warelang", "mode": "adapter_rag"}}}, 403,
     "admin_key_required"),
    ("rotate B's own keys", "POST", "/v1/tenants/{b}/keys", {}, 403, "admin_key_required"),
    ("create a tenant", "POST", "/v1/tenants", {"json": {"id": "intruder"}}, 403,
     "admin_key_required"),
]


def _fill(value, ids: dict[str, str]):
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


@pytest.mark.parametrize("name,method,path,kwargs,status,code", ROWS, ids=[r[0] for r in ROWS])
def test_b_with_a_ids(world: World, name, method, path, kwargs, status, code):
    ids = world.ids()
    resp = world.client.request(method, _fill(path, ids), headers=world.b, **_fill(kwargs, ids))
    err = assert_error(resp, status, code)
    assert A_TEXT not in json.dumps(err) and world.a_id not in json.dumps(err)
    a_is_untouched(world)


def test_b_uploading_a_document_id_of_a_makes_its_own(world: World):
    r = world.client.post("/v1/documents", headers=world.b, data={"document_id": "nimbus"},
                          files={"file": ("x.txt", b"B's own nimbus note: a cloud type.")})
    assert r.status_code == 202 and r.json()["documents"][0]["version"] == 1, r.text
    wait_job(world.client, world.b, r.json()["job_id"])
    assert world.client.get("/v1/documents/nimbus", headers=world.b).json()["current_version"] == 1
    a_doc = world.client.get("/v1/documents/nimbus", headers=world.a).json()
    assert a_doc["current_version"] == 1 and a_doc["source"] == "nimbus.txt"
    assert world.client.delete("/v1/documents/nimbus", headers=world.b).status_code == 204
    a_is_untouched(world)


def _cited(body: dict) -> set[str]:
    return {c["document_id"] for c in body.get("citations") or []}


@pytest.mark.parametrize("extra", [{}, {"route": "rag"}, {"route": "adapter_rag"},
                                   {"model": "auto"}, {"model": BASE}],
                         ids=["auto", "forced rag", "forced adapter_rag", "model auto", "base"])
def test_b_never_cites_a(world: World, extra):
    world.engine.requests.clear()
    r = world.client.post(CHAT, headers=world.b, json={
        "messages": [{"role": "user", "content": A_TEXT}], **extra})
    if extra.get("route") == "adapter_rag":  # B has no adapter: refused, A's is not taken
        assert_error(r, 400, "adapter_unavailable")
    else:
        assert r.status_code == 200, r.text
        assert "nimbus" not in _cited(r.json())
        assert "7741-ALPHA" not in json.dumps(r.json()["citations"])
        assert r.json()["route"]["adapter"] is None
    # what reached the engine: B's own question, no context or adapter of A's
    for req in world.engine.requests:
        context = [m for m in req["messages"] if m["role"] != "user"]
        assert "7741-ALPHA" not in json.dumps(context) and "Hangar" not in json.dumps(context)
        assert "warelang" not in req["model"] and world.a_id not in req["model"]


def test_b_file_search_never_reads_a(world: World):
    """B's own store, asked A's exact sentence through Responses: only B's document is read."""
    c = world.client
    vs = c.post("/v1/vector_stores", headers=world.b, json={"file_ids": ["plants"]}).json()["id"]
    world.engine.requests.clear()
    r = c.post("/v1/responses", headers=world.b, json={
        "input": A_TEXT, "include": ["file_search_call.results"],
        "tools": [{"type": "file_search", "vector_store_ids": [vs]}]})
    assert r.status_code == 200, r.text
    assert "7741-ALPHA" not in json.dumps(r.json()["output"][0]["results"])
    assert {c["document_id"] for c in r.json()["citations"]} <= {"plants"}
    for req in world.engine.requests:
        context = [m for m in req["messages"] if m["role"] != "user"]
        assert "7741-ALPHA" not in json.dumps(context) and "Hangar" not in json.dumps(context)


def test_b_never_cites_a_streamed(world: World):
    with world.client.stream("POST", CHAT, headers=world.b, json={
            "messages": [{"role": "user", "content": A_QUESTION}], "stream": True,
            "route": "rag"}) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    first = json.loads(events[0])
    assert "nimbus" not in _cited(first) and "7741-ALPHA" not in "".join(events)


def test_b_explain_and_advisor_see_only_b(world: World):
    r = world.client.post("/v1/policy/explain", headers=world.b,
                          json={"queries": [A_QUESTION, A_TEXT]})
    assert r.status_code == 200, r.text
    for item in r.json()["data"]:  # each echoes its query; its route says nothing of A's
        route = item["route"]
        assert route["path"] == "prompt" and route["adapter"] is None, route
        assert route["signals"]["top_score"] < 0.35, route  # B's plants, not A's Nimbus
        assert "7741-ALPHA" not in json.dumps(route) and "warelang" not in json.dumps(route)
    r = world.client.post("/v1/advisor", headers=world.b, json={})
    assert r.status_code == 200, r.text
    assert "7741-ALPHA" not in r.text and "Nimbus" not in r.text
    assert r.json()["knowledge_base"]["documents"] == 1  # B's own


def test_a_sees_its_own(world: World):
    """The control: the same questions do reach A's document and adapter for A."""
    body = world.client.post(CHAT, headers=world.a, json={
        "messages": [{"role": "user", "content": A_QUESTION}], "route": "rag"}).json()
    assert "nimbus" in _cited(body)


def test_lists_show_only_ones_own(world: World):
    c = world.client
    assert [m["id"] for m in c.get("/v1/models", headers=world.b).json()["data"]] == [BASE]
    assert c.get("/v1/adapters", headers=world.b).json()["data"] == []
    docs = c.get("/v1/documents", headers=world.b, params={"limit": 1000}).json()["data"]
    assert [d["document_id"] for d in docs] == ["plants"]
    for after in ("", "a", "nimbus", "0"):
        page = c.get("/v1/documents", headers=world.b, params={"after": after}).json()["data"]
        assert "nimbus" not in [d["document_id"] for d in page]
    assert c.get("/v1/me", headers=world.b).json()["id"] == world.b_id
    assert [x["id"] for x in c.get("/v1/files", headers=world.b).json()["data"]] == ["plants"]
    stores = c.get("/v1/vector_stores", headers=world.b).json()["data"]
    assert world.vs not in [x["id"] for x in stores]
    # and A's lists do show A's
    assert [m["id"] for m in c.get("/v1/models", headers=world.a).json()["data"]] == [
        BASE, "warelang"]
    assert [a["name"] for a in c.get("/v1/adapters", headers=world.a).json()["data"]] == [
        "warelang"]


def test_metrics_hold_no_tenant_ids_or_document_text(world: World):
    c = world.client
    c.post(CHAT, headers=world.a, json={"messages": [{"role": "user", "content": A_QUESTION}],
                                        "route": "rag"})
    c.post(CHAT, headers=world.b, json={"messages": [{"role": "user", "content": A_QUESTION}]})
    text = c.get("/metrics").text
    assert "ragtune_http_requests_total" in text
    for needle in (world.a_id, world.b_id, "7741-ALPHA", "Nimbus", "nimbus", "plants",
                   "watered", "Hangar", A_QUESTION):
        assert needle not in text, needle


def test_a_rotated_key_stops_at_once(world: World):
    c = world.client
    tenant_id, old = new_tenant(c)
    r = c.post(f"/v1/tenants/{tenant_id}/keys", headers=ADMIN)
    assert r.status_code == 201, r.text
    new = {"Authorization": f"Bearer {r.json()['api_key']}"}
    assert_error(c.get("/v1/me", headers=old), 401, "invalid_api_key")
    assert_error(c.post(CHAT, headers=old, json={"messages": [{"role": "user", "content": "x"}]}),
                 401, "invalid_api_key")
    assert c.get("/v1/me", headers=new).json()["id"] == tenant_id
    # keeping the existing keys, then revoking them all with the next rotation
    r = c.post(f"/v1/tenants/{tenant_id}/keys", headers=ADMIN, json={"revoke_existing": False})
    newer = {"Authorization": f"Bearer {r.json()['api_key']}"}
    assert c.get("/v1/me", headers=new).status_code == 200
    assert c.get("/v1/me", headers=newer).status_code == 200
    r = c.post(f"/v1/tenants/{tenant_id}/keys", headers=ADMIN)
    newest = {"Authorization": f"Bearer {r.json()['api_key']}"}
    for dead in (old, new, newer):
        assert_error(c.get("/v1/documents", headers=dead), 401, "invalid_api_key")
    assert c.get("/v1/documents", headers=newest).status_code == 200


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/me"), ("POST", CHAT), ("GET", "/v1/models"), ("GET", "/v1/documents"),
    ("POST", "/v1/documents"), ("GET", "/v1/adapters"), ("POST", "/v1/policy/explain"),
])
def test_a_deleted_tenants_key_stops_at_once(world: World, method, path):
    c = world.client
    tenant_id, headers = new_tenant(c)
    assert c.get("/v1/me", headers=headers).status_code == 200
    assert c.delete(f"/v1/tenants/{tenant_id}", headers=ADMIN).status_code == 204
    kwargs = {"json": {"messages": [{"role": "user", "content": "x"}], "queries": ["x"]}}
    if path == "/v1/documents" and method == "POST":
        kwargs = {"files": {"file": ("a.txt", b"x")}}
    assert_error(c.request(method, path, headers=headers, **kwargs), 401, "invalid_api_key")
    assert_error(c.get(f"/v1/tenants/{tenant_id}", headers=ADMIN), 404, "tenant_not_found")


def test_a_deleted_tenants_data_never_reaches_a_new_tenant_of_the_same_id(world: World):
    c = world.client
    tenant_id, old = new_tenant(c)
    index(c, old, "vault.txt", "The vault of the old tenant opens with the phrase amber fox 3390.")
    assert c.delete(f"/v1/tenants/{tenant_id}", headers=ADMIN).status_code == 204
    r = c.post("/v1/tenants", headers=ADMIN, json={"id": tenant_id})
    assert r.status_code == 201, r.text
    new = {"Authorization": f"Bearer {r.json()['api_key']}"}
    assert c.get("/v1/documents", headers=new).json()["data"] == []
    index(c, new, "weather.txt", "The weather in Lisbon is mostly sunny in July.")
    body = c.post(CHAT, headers=new, json={
        "messages": [{"role": "user", "content": "What phrase opens the vault?"}],
        "route": "rag"}).json()
    assert "vault" not in _cited(body) and "amber fox" not in json.dumps(body), body
