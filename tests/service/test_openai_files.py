"""/v1/files and /v1/vector_stores in process, with the real embedding model, store and worker:
a file is a document (one store of documents), a vector store a named set of them whose files'
status is their indexing, and whose search reads only them. The official `openai` client runs
here over the in-process app; against the real server and vLLM in
tests/integration/test_openai_surface.py."""

from __future__ import annotations

import datetime as dt
import time

import openai
import pytest
from sqlalchemy import update

from core.registry.models import VectorStore
from tests.helpers.api import indexed, polled, sdk
from tests.helpers.app import assert_error, new_tenant

HARBOUR = b"The harbour office door code is QX-7731. The office opens at dawn."
BAKERY = b"The bakery on Mill Lane sells rye bread baked before six every morning."


def test_a_file_is_a_document_indexed_by_the_worker(client, tenant):
    tid, headers = tenant
    oc = sdk(client, headers)
    f = oc.files.create(file=("harbour.txt", HARBOUR), purpose="assistants")
    assert f.id.startswith("file-") and f.filename == "harbour.txt"
    assert (f.bytes, f.purpose, f.object) == (len(HARBOUR), "assistants", "file")
    deadline = time.monotonic() + 60
    while oc.files.retrieve(f.id).status != "processed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # One store of documents: /v1/documents sees it, and its chunks are in the index.
    doc = client.get(f"/v1/documents/{f.id}", headers=headers).json()
    assert doc["current_version"] == 1 and doc["source"] == "harbour.txt"
    assert client.app.state.ragtune.store.count(tid, f.id) == doc["chunks"] > 0
    assert oc.files.content(f.id).read() == HARBOUR
    # Every document is a file, whichever way it came; a second upload of the same name is a
    # new file, as on OpenAI.
    indexed(client, headers, "bakery.md", BAKERY)
    g = oc.files.create(file=("harbour.txt", HARBOUR), purpose="user_data")
    assert g.id != f.id
    listed = {x.id: x.purpose for x in oc.files.list()}
    assert listed == {f.id: "assistants", g.id: "user_data", "bakery": "assistants"}
    assert [x.id for x in oc.files.list(purpose="user_data")] == [g.id]
    ids = [x.id for x in oc.files.list(order="asc", limit=1).data]  # the first page only
    assert ids == sorted(listed)[:1]
    page = client.get("/v1/files", headers=headers,
                      params={"order": "asc", "limit": 2, "after": ids[0]}).json()
    assert [x["id"] for x in page["data"]] == sorted(listed)[1:] and not page["has_more"]


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        ({"file": ("a.txt", HARBOUR)}, {}, 400, "missing_field"),
        ({"file": ("a.txt", HARBOUR)}, {"purpose": "fine-tune"}, 400, "unsupported_purpose"),
        ({"file": ("a.txt", b"   ")}, {"purpose": "assistants"}, 422, "empty_document"),
        ({"file": ("a.exe", b"MZ\x90")}, {"purpose": "assistants"}, 415, "unsupported_file_type"),
        ({}, {"purpose": "assistants"}, 400, "missing_file"),
    ],
)
def test_a_bad_file_is_refused_and_leaves_nothing(client, tenant, files, data, status, code):
    tid, headers = tenant
    r = client.post("/v1/files", headers=headers, files=files or {"x": ("x", b"")}, data=data)
    assert_error(r, status, code)
    assert client.get("/v1/files", headers=headers).json()["data"] == []
    uploads = client.app.state.ragtune.documents.uploads_dir / tid
    assert not uploads.exists() or not any(uploads.iterdir())


def test_a_file_larger_than_the_limit_is_413(client, tenant):
    _, headers = tenant
    limit = client.app.state.ragtune.documents.limits.max_file_bytes
    r = client.post("/v1/files", headers=headers, data={"purpose": "assistants"},
                    files={"file": ("big.txt", b"a " * (limit // 2 + 1))})
    assert_error(r, 413, "file_too_large")


def test_a_vector_store_reports_its_files_indexing_and_searches_only_them(client, tenant):
    tid, headers = tenant
    oc = sdk(client, headers)
    harbour = oc.files.create(file=("harbour.txt", HARBOUR), purpose="assistants")
    indexed(client, headers, "bakery.md", BAKERY)  # in the knowledge base, not in the store
    vs = oc.vector_stores.create(name="harbour", metadata={"team": "ops"})
    assert (vs.name, vs.metadata, vs.file_counts.total) == ("harbour", {"team": "ops"}, 0)
    r = client.post(f"/v1/vector_stores/{vs.id}/files", headers=headers,
                    json={"file_id": harbour.id})
    assert r.json()["status"] in ("in_progress", "completed")
    vf = polled(oc, vs.id, harbour.id, attributes={"site": "harbour", "year": 2026})
    assert (vf.status, vf.last_error, vf.vector_store_id) == ("completed", None, vs.id)
    assert vf.attributes == {"site": "harbour", "year": 2026} and vf.usage_bytes == len(HARBOUR)
    got = oc.vector_stores.retrieve(vs.id)
    assert got.status == "completed" and got.file_counts.completed == got.file_counts.total == 1
    assert got.usage_bytes == len(HARBOUR)

    hits = list(oc.vector_stores.search(vector_store_id=vs.id, query="harbour door code"))
    assert [h.file_id for h in hits] == [harbour.id]
    assert "QX-7731" in hits[0].content[0].text and hits[0].filename == "harbour.txt"
    assert hits[0].attributes == {"site": "harbour", "year": 2026} and hits[0].score > 0.5
    # The bakery's chunk is in the index, and the store does not read it.
    assert list(oc.vector_stores.search(vector_store_id=vs.id, query="rye bread Mill Lane",
                                        ranking_options={"score_threshold": 0.5})) == []
    # Attribute filters: comparison and compound, on what was given on attaching.
    for flt, found in [
        ({"type": "eq", "key": "site", "value": "harbour"}, 1),
        ({"type": "gte", "key": "year", "value": 2027}, 0),
        ({"type": "or", "filters": [{"type": "eq", "key": "site", "value": "mill"},
                                    {"type": "lt", "key": "year", "value": 2030}]}, 1),
        ({"type": "nin", "key": "site", "value": ["harbour"]}, 0),
    ]:
        page = oc.vector_stores.search(vector_store_id=vs.id, query="door code", filters=flt)
        assert len(list(page)) == found, flt
    assert_error(client.post(f"/v1/vector_stores/{vs.id}/search", headers=headers,
                             json={"query": "x", "filters": {"type": "near", "key": "a"}}),
                 400, "invalid_filter")
    assert_error(client.post(f"/v1/vector_stores/{vs.id}/search", headers=headers,
                             json={"query": "x", "rewrite_query": True}),
                 400, "unsupported_parameter")
    # Several queries: each searched, each chunk once.
    many = oc.vector_stores.search(vector_store_id=vs.id, query=["door code", "office hours"])
    assert [h.file_id for h in many] == [harbour.id]


def test_removing_a_file_from_a_store_keeps_the_document_and_deleting_it_leaves_both(
    client, tenant
):
    tid, headers = tenant
    oc = sdk(client, headers)
    store = client.app.state.ragtune.store
    f = oc.files.create(file=("harbour.txt", HARBOUR), purpose="assistants")
    a = oc.vector_stores.create(name="a", file_ids=[f.id])
    b = oc.vector_stores.create(name="b")
    polled(oc, b.id, f.id)
    assert oc.vector_stores.files.delete(file_id=f.id, vector_store_id=b.id).deleted
    assert list(oc.vector_stores.files.list(b.id)) == []
    assert oc.files.retrieve(f.id).status == "processed" and store.count(tid, f.id) > 0
    assert [x.id for x in oc.vector_stores.files.list(a.id)] == [f.id]
    # Deleting the store leaves the document, too.
    assert oc.vector_stores.delete(b.id).deleted
    assert_error(client.get(f"/v1/vector_stores/{b.id}", headers=headers), 404,
                 "vector_store_not_found")
    assert oc.files.retrieve(f.id).id == f.id
    # Deleting the file: it leaves the index, /v1/documents and every store.
    assert oc.files.delete(f.id).deleted
    assert store.count(tid, f.id) == 0
    assert_error(client.get(f"/v1/documents/{f.id}", headers=headers), 404, "document_not_found")
    assert list(oc.vector_stores.files.list(a.id)) == []
    assert oc.vector_stores.retrieve(a.id).file_counts.total == 0
    assert list(oc.vector_stores.search(vector_store_id=a.id, query="door code")) == []
    with pytest.raises(openai.NotFoundError):
        oc.files.retrieve(f.id)


def test_nothing_is_left_of_a_refused_store_or_attachment(client, tenant):
    _, headers = tenant
    oc = sdk(client, headers)
    f = oc.files.create(file=("harbour.txt", HARBOUR), purpose="assistants")
    with pytest.raises(openai.NotFoundError) as exc:
        oc.vector_stores.create(name="x", file_ids=[f.id, "file-nope"])
    assert exc.value.code == "file_not_found"
    assert list(oc.vector_stores.list()) == []
    vs = oc.vector_stores.create(name="x")
    for body, status, code in [
        ({"file_id": "file-nope"}, 404, "file_not_found"),
        ({"file_id": f.id, "chunking_strategy": {"type": "static"}}, 400,
         "unsupported_chunking_strategy"),
        ({"file_id": f.id, "attributes": {"k": {"nested": 1}}}, 400, "invalid_attributes"),
        ({"file_id": f.id, "attributes": {f"k{i}": i for i in range(17)}}, 400,
         "invalid_attributes"),
    ]:
        assert_error(client.post(f"/v1/vector_stores/{vs.id}/files", headers=headers,
                                 json=body), status, code)
    assert list(oc.vector_stores.files.list(vs.id)) == []
    assert_error(client.post("/v1/vector_stores", headers=headers,
                             json={"metadata": {"k": 1}}), 400, "invalid_metadata")
    assert [s.id for s in oc.vector_stores.list()] == [vs.id]


def test_another_tenants_store_and_files_are_404(client, tenant):
    _, headers = tenant
    oc = sdk(client, headers)
    f = oc.files.create(file=("harbour.txt", HARBOUR), purpose="assistants")
    vs = oc.vector_stores.create(name="mine", file_ids=[f.id])
    other = sdk(client, new_tenant(client)[1])
    theirs = other.vector_stores.create(name="theirs")
    for call in (
        lambda: other.vector_stores.retrieve(vs.id),
        lambda: other.vector_stores.search(vector_store_id=vs.id, query="door code"),
        lambda: other.vector_stores.files.list(vs.id),
        lambda: other.vector_stores.files.create(vector_store_id=vs.id, file_id=f.id),
        lambda: other.vector_stores.files.create(vector_store_id=theirs.id, file_id=f.id),
        lambda: other.vector_stores.delete(vs.id),
        lambda: other.files.retrieve(f.id),
        lambda: other.files.delete(f.id),
        lambda: other.responses.create(
            input="door code?", tools=[{"type": "file_search", "vector_store_ids": [vs.id]}]),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [x.id for x in oc.vector_stores.files.list(vs.id)] == [f.id]


def test_an_expired_store_says_so_and_cannot_be_searched(client, tenant):
    _, headers = tenant
    oc = sdk(client, headers)
    vs = oc.vector_stores.create(name="x", expires_after={"anchor": "last_active_at", "days": 1})
    assert vs.status == "completed" and vs.expires_at == vs.last_active_at + 86400
    with client.app.state.ragtune.registry.session() as s:
        s.execute(update(VectorStore).where(VectorStore.id == vs.id).values(
            last_active_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2)))
    assert oc.vector_stores.retrieve(vs.id).status == "expired"
    assert_error(client.post(f"/v1/vector_stores/{vs.id}/search", headers=headers,
                             json={"query": "x"}), 400, "vector_store_expired")
    # Changing its expiry makes it live again, counted from now.
    assert oc.vector_stores.update(vs.id, expires_after={"anchor": "last_active_at",
                                                         "days": 3}).status == "completed"


def test_a_file_whose_indexing_fails_is_failed_in_its_store(client, tenant, monkeypatch):
    _, headers = tenant
    oc = sdk(client, headers)
    worker = client.app.state.ragtune.worker
    monkeypatch.setattr(worker, "settings", worker.settings.model_copy(update={"backoff_s": 0.01}))

    def on_fire(*args, **kwargs):
        raise RuntimeError("embedder on fire")

    monkeypatch.setattr(worker.pipeline, "run", on_fire)
    f = oc.files.create(file=("harbour.txt", HARBOUR), purpose="assistants")
    vs = oc.vector_stores.create(name="x")
    vf = polled(oc, vs.id, f.id)
    assert vf.status == "failed" and vf.last_error.code == "server_error"
    assert "embedder on fire" in vf.last_error.message
    got = oc.vector_stores.retrieve(vs.id)
    assert (got.file_counts.failed, got.file_counts.total, got.status) == (1, 1, "completed")
    assert oc.files.retrieve(f.id).status == "error"
    assert "embedder on fire" in oc.files.retrieve(f.id).status_details
    assert [x.id for x in oc.vector_stores.files.list(vs.id, filter="failed")] == [f.id]
    assert list(oc.vector_stores.files.list(vs.id, filter="completed")) == []
