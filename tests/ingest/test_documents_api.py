"""Documents through the API: upload, jobs, versions, deletion, isolation, bad files; the rag
path's retrieval and citations (the fake engine shows what context reached the model)."""

from __future__ import annotations

import pytest

from tests.helpers.api import ask, indexed, upload, wait_job
from tests.helpers.app import assert_error, make_settings, new_tenant

REFUND = (
    "Refund policy of Zephyr Outdoor Gear. Customers may return unused items within 45 days "
    "of delivery for a full refund. Items bought on clearance can only be exchanged."
)
REFUND_V2 = (
    "Refund policy of Zephyr Outdoor Gear, revised. Returns are accepted within 14 days of "
    "delivery only, and a restocking fee of 9 percent applies to every return."
)


def test_upload_index_and_answer_with_citations(client, tenant, fake_engine):
    _, headers = tenant
    job = indexed(client, headers, "refunds.md", REFUND.encode(), metadata='{"team": "support"}')
    assert job["chunks"] >= 1
    listed = client.get("/v1/documents", headers=headers).json()["data"]
    assert [d["document_id"] for d in listed] == ["refunds"]
    doc = client.get("/v1/documents/refunds", headers=headers).json()
    assert doc["current_version"] == 1 and doc["metadata"] == {"team": "support"}

    body = ask(client, headers, "How many days do I have to return an item for a refund?")
    assert body["route"]["path"] == "rag", body["route"]
    assert body["route"]["signals"]["top_score"] >= 0.35
    cites = body["citations"]
    assert cites and cites[0]["document_id"] == "refunds" and cites[0]["source"] == "refunds.md"
    assert set(cites[0]) >= {"document_id", "chunk_id", "score", "source", "text"}
    system = fake_engine.requests[-1]["messages"][0]
    assert system["role"] == "system" and "[1] " in system["content"]
    assert "45 days" in system["content"]

    # A question the knowledge base does not cover takes the prompt path, with no context.
    body = ask(client, headers, "What is the capital of Spain?")
    assert body["route"]["path"] == "prompt" and body["citations"] == []
    assert "below" not in body["route"]["reason"] or "<" in body["route"]["reason"]


def test_streamed_rag_answer_carries_citations_in_first_chunk(client, tenant):
    _, headers = tenant
    indexed(client, headers, "refunds.txt", REFUND.encode())
    r = client.post(
        "/v1/chat/completions", headers=headers,
        json={"messages": [{"role": "user", "content": "refund window in days?"}],
              "stream": True, "route": "rag"},
    )
    assert r.headers["x-route"] == "rag"
    first = r.text.split("\n\n")[0]
    assert '"citations":[{' in first.replace(" ", "") and '"refunds"' in first


def test_new_version_replaces_old_and_delete_removes(client, tenant):
    _, headers = tenant
    indexed(client, headers, "refunds.txt", REFUND.encode())
    indexed(client, headers, "policy.txt", REFUND_V2.encode(), document_id="refunds")
    doc = client.get("/v1/documents/refunds", headers=headers).json()
    assert doc["current_version"] == 2
    assert [v["state"] for v in doc["versions"]] == ["current", "retired"]
    store = client.app.state.ragtune.store
    tenant_id = client.app.state.ragtune.tenants.authenticate(
        headers["Authorization"].split()[1]).id
    assert store.count(tenant_id, "refunds", 1) == 0  # old points are gone
    body = ask(client, headers, "refund policy return days", route="rag")
    texts = " ".join(c["text"] for c in body["citations"])
    assert "14 days" in texts and "45 days" not in texts

    assert client.delete("/v1/documents/refunds", headers=headers).status_code == 204
    assert_error(client.get("/v1/documents/refunds", headers=headers), 404, "document_not_found")
    assert store.count(tenant_id) == 0
    body = ask(client, headers, "refund policy return days", route="rag")
    assert body["citations"] == []
    assert client.get("/v1/documents", headers=headers).json()["data"] == []


def test_tenant_isolation(client):
    _, a = new_tenant(client)
    _, b = new_tenant(client)
    job = indexed(client, a, "secret.txt", b"The launch code of project Nimbus is 7741-ALPHA.")
    job_id = job["job_id"]
    for method, path in [
        ("GET", "/v1/documents/secret"),
        ("DELETE", "/v1/documents/secret"),
        ("GET", f"/v1/jobs/{job_id}"),
    ]:
        r = client.request(method, path, headers=b)
        assert r.status_code == 404, (method, path, r.text)
    assert client.get("/v1/documents", headers=b).json()["data"] == []
    body = ask(client, b, "What is the launch code of project Nimbus?", route="rag")
    assert body["citations"] == []
    # A still has it, untouched by B's attempts
    body = ask(client, a, "What is the launch code of project Nimbus?", route="rag")
    assert body["citations"][0]["document_id"] == "secret"


def _pdf(text: str) -> bytes:
    """A minimal one-page PDF with a text stream, offsets computed."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return out


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("notes.md", b"# Notes\n\nThe warehouse opens at 06:30.", "06:30"),
        ("page.html", b"<html><body><p>The warehouse opens at 06:30.</p>"
                      b"<script>var x='hidden';</script></body></html>", "06:30"),
        ("hours.json", b'{"warehouse": {"opens": "06:30"}}', "06:30"),
        ("rows.jsonl", b'{"q": "opening"}\n{"warehouse_opens": "06:30"}\n', "06:30"),
        ("manual.pdf", _pdf("The warehouse opens at 06:30."), "06:30"),
    ],
)
def test_readers(client, tenant, name, content, needle):
    _, headers = tenant
    indexed(client, headers, name, content)
    body = ask(client, headers, "When does the warehouse open?", route="rag")
    assert body["citations"] and needle in body["citations"][0]["text"]
    assert "hidden" not in body["citations"][0]["text"]


BAD_FILES = [
    ("empty", "empty.txt", b"", 422, "empty_document"),
    ("whitespace only", "blank.md", b"  \n\n\t ", 422, "empty_document"),
    ("binary as txt", "data.txt", bytes(range(256)) * 4, 422, "unreadable_file"),
    ("latin-1 as txt", "old.txt", "café".encode("latin-1"), 422, "unreadable_file"),
    ("broken pdf", "broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ngarbage", 422,
     "unreadable_file"),
    ("not a pdf", "fake.pdf", b"hello, I am text", 422, "unreadable_file"),
    ("broken json", "x.json", b'{"a": ', 422, "unreadable_file"),
    ("unknown type", "tool.exe", b"MZ\x90\x00", 415, "unsupported_file_type"),
    ("no extension", "README", b"text", 415, "unsupported_file_type"),
    ("path in name", "../../etc/passwd.txt", b"root:x:0:0", 400, "invalid_filename"),
    ("hidden name", ".env.txt", b"A=1", 400, "invalid_filename"),
    ("oversize", "big.txt", b"a" * 70_000, 413, "file_too_large"),
]


@pytest.mark.parametrize("label,name,content,status,code", BAD_FILES,
                         ids=[b[0] for b in BAD_FILES])
def test_bad_files_rejected_and_nothing_left(tmp_path, fake_engine, label, name, content, status,
                                             code):
    from fastapi.testclient import TestClient

    from service.app import create_app

    settings = make_settings(tmp_path, [fake_engine.url], documents={"max_file_bytes": 65_536})
    with TestClient(create_app(settings)) as client:
        _, headers = new_tenant(client)
        assert_error(upload(client, headers, name, content), status, code)
        assert client.get("/v1/documents", headers=headers).json()["data"] == []
        with client.app.state.ragtune.registry.session() as s:
            from sqlalchemy import text

            assert s.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
            assert s.execute(text("SELECT count(*) FROM document_versions")).scalar() == 0
        uploads = tmp_path / "uploads"
        assert not uploads.exists() or not any(p.is_file() for p in uploads.rglob("*"))


@pytest.mark.parametrize(
    "kwargs,code",
    [
        ({"data": {"document_id": "../escape"}}, "invalid_document_id"),
        ({"data": {"document_id": "a/b"}}, "invalid_document_id"),
        ({"data": {"metadata": "{not json"}}, "invalid_metadata"),
        ({"data": {"metadata": "[1, 2]"}}, "invalid_metadata"),
    ],
)
def test_bad_upload_fields(client, tenant, kwargs, code):
    _, headers = tenant
    r = client.post("/v1/documents", headers=headers, files={"file": ("a.txt", b"hello")},
                    **kwargs)
    assert_error(r, 400, code)


def test_upload_needs_multipart_and_a_file(client, tenant):
    _, headers = tenant
    assert_error(client.post("/v1/documents", headers=headers, json={"x": 1}), 400,
                 "invalid_content_type")
    assert_error(client.post("/v1/documents", headers=headers, data={"document_id": "x"},
                             files={"other": ("a.txt", b"x")}), 400, "missing_file")


def test_retrieval_down_degrades_or_fails_per_policy(client, fake_engine):
    _, degrade = new_tenant(client, {"on_retrieval_error": "degrade"})
    _, fail = new_tenant(client, {"on_retrieval_error": "fail"})
    for headers in (degrade, fail):  # retrieval only touches the store once something is indexed
        indexed(client, headers, "refunds.md", REFUND.encode())
    store = client.app.state.ragtune.store
    original = store.search

    def broken(*args, **kwargs):
        raise ConnectionError("qdrant is gone")

    store.search = broken
    try:
        body = ask(client, degrade, "anything", route="rag")
        assert body["route"]["path"] == "prompt"
        assert "unavailable" in body["route"]["reason"]
        r = client.post("/v1/chat/completions", headers=fail,
                        json={"messages": [{"role": "user", "content": "x"}], "route": "rag"})
        assert_error(r, 503, "retrieval_unavailable")
    finally:
        store.search = original


def test_metrics_cover_jobs_and_retrieval(client, tenant):
    _, headers = tenant
    indexed(client, headers, "a.txt", REFUND.encode())
    ask(client, headers, "refund days", route="rag")
    text = client.get("/metrics").text
    assert 'ragtune_jobs{state="succeeded"} 1.0' in text
    assert "ragtune_chunks_indexed_total" in text
    assert "ragtune_retrieval_duration_seconds_count 1.0" in text
    assert "ragtune_ingest_job_duration_seconds_count 1.0" in text


def test_many_files_answer_in_the_upload_order(client, tenant):
    # rows are locked in document-id order (no deadlock between two uploads); the answer
    # still lists the documents in the order the files came
    _, headers = tenant
    r = client.post("/v1/documents", headers=headers, files=[
        ("file", ("zeta.txt", REFUND.encode())), ("file", ("alpha.txt", REFUND_V2.encode()))])
    assert r.status_code == 202, r.text
    assert [d["document_id"] for d in r.json()["documents"]] == ["zeta", "alpha"]
    assert wait_job(client, headers, r.json()["job_id"])["state"] == "succeeded"


def test_an_upload_during_a_delete_keeps_its_points(client, tenant, monkeypatch):
    """DELETE hides the document, then deletes its points and purges it. An upload of the same
    id in between revives it: the DELETE goes on with the versions it hid, so the new version's
    points stay (deleting every point of the document took them, leaving a current version
    with nothing indexed)."""
    tenant_id, headers = tenant
    indexed(client, headers, "refunds.txt", REFUND.encode())
    state = client.app.state.ragtune
    # the worker's sweep would otherwise finish this delete itself while the worker is idle
    monkeypatch.setattr(state.worker, "sweep_deletions", lambda: None)
    hid = state.documents.mark_deleting(tenant_id, "refunds")  # the DELETE's first step
    assert hid == [1]
    indexed(client, headers, "refunds.txt", REFUND_V2.encode(), document_id="refunds")
    state.documents.finish_delete(state.store, tenant_id, "refunds", hid)  # the DELETE goes on
    doc = client.get("/v1/documents/refunds", headers=headers).json()
    assert doc["current_version"] == 2 and doc["chunks"] >= 1, doc
    assert state.store.count(tenant_id, "refunds", 2) == doc["chunks"]
    route = ask(client, headers, "What is the restocking fee?", route="rag")["route"]
    assert route["signals"]["top_score"] is not None  # the current version is searchable
