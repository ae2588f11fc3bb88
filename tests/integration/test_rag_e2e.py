"""The rag path end to end: a document uploaded through the API (and through `ragtune ingest`),
indexed by the server's own worker, retrieved and cited in answers of the real vLLM, asked
through the official openai client."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.helpers.api import wait_job
from tests.helpers.orbin import DOCUMENT, DOCUMENT_ID, FACT, FILENAME, MAX_TOKENS, QUESTION
from tests.helpers.server import ragtune_command

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 180


@dataclass
class KnowledgeBase:
    client: openai.OpenAI
    headers: dict[str, str]
    job: dict


@pytest.fixture(scope="module")
def kb(server) -> KnowledgeBase:
    key = server.new_tenant("rag-e2e", {"mode": "rag"})
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(
        f"{server.url}/v1/documents",
        headers=headers,
        files={"file": (FILENAME, DOCUMENT.encode(), "text/plain")},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["documents"] == [{"document_id": DOCUMENT_ID, "version": 1, "status": "queued"}]
    with httpx.Client(base_url=server.url) as http:
        job = wait_job(http, headers, body["job_id"], timeout=JOB_TIMEOUT_S)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    return KnowledgeBase(client, headers, job)


def ask(client: openai.OpenAI, **extra):
    return client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        **extra,
    )


def test_uploaded_document_is_indexed(kb):
    assert kb.job["state"] == "succeeded", kb.job
    assert kb.job["chunks"] >= 1
    (doc,) = kb.job["documents"]
    assert doc["document_id"] == DOCUMENT_ID and doc["state"] == "current"


def test_rag_answer_copies_the_fact_and_cites_the_document(kb):
    assert kb.job["state"] == "succeeded", kb.job
    raw = ask(kb.client)
    assert raw.headers["x-route"] == "rag"
    resp = raw.parse()
    route = resp.model_extra["route"]
    assert route["path"] == "rag", route
    assert route["signals"]["top_score"] >= 0.35, route  # above the policy's default floor
    citations = resp.model_extra["citations"]
    ours = [c for c in citations if c["document_id"] == DOCUMENT_ID]
    assert ours, citations
    assert FACT in ours[0]["text"] and ours[0]["source"] == FILENAME
    assert {"chunk_id", "score", "text", "source"} <= set(ours[0])
    answer = resp.choices[0].message.content
    assert FACT in answer, answer


def test_without_retrieval_the_fact_is_not_known(kb):
    # The control: the same question forced onto the prompt path gets no context and no code.
    raw = ask(kb.client, extra_body={"route": "prompt"})
    assert raw.headers["x-route"] == "prompt"
    resp = raw.parse()
    assert resp.model_extra["route"]["path"] == "prompt"
    assert resp.model_extra["citations"] == []
    assert FACT not in (resp.choices[0].message.content or "")


def test_streamed_rag_answer_carries_route_and_citations_first(kb):
    assert kb.job["state"] == "succeeded", kb.job
    with kb.client.chat.completions.with_streaming_response.create(
        model="auto",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
    ) as raw:
        assert raw.headers["x-route"] == "rag"
        chunks = list(raw.parse())
    first = chunks[0].model_extra
    assert first["route"]["path"] == "rag", first
    assert any(
        c["document_id"] == DOCUMENT_ID and FACT in c["text"] for c in first["citations"]
    ), first["citations"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert FACT in text, text


def test_ragtune_ingest_uploads_a_folder(server, tmp_path):
    key = server.new_tenant("rag-cli", {"mode": "rag"})
    folder = tmp_path / "kb"
    (folder / "sub").mkdir(parents=True)
    (folder / "alpha-notes.md").write_text("# Alpha\n\nThe alpha team meets on Tuesdays.\n")
    (folder / "beta.txt").write_text("Beta shipments leave from dock four.\n")
    (folder / "sub" / "gamma.html").write_text(
        "<html><head><title>Gamma</title></head><body><p>Gamma runs the night shift.</p>"
        "</body></html>"
    )
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # not a supported type: skipped

    def ingest(tenant: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*ragtune_command(), "ingest", str(folder), "--tenant", tenant,
             "--url", server.url, "--key", key],
            capture_output=True, text=True, timeout=300,
        )

    # A key of another tenant than the one named: refused before anything is uploaded.
    refused = ingest("someone-else")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "belongs to tenant 'rag-cli'" in refused.stderr

    done = ingest("rag-cli")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 of 3 files indexed" in done.stdout, done.stdout + done.stderr

    r = httpx.get(f"{server.url}/v1/documents", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    docs = r.json()["data"]
    assert sorted(d["document_id"] for d in docs) == ["alpha-notes", "beta", "gamma"]
    for d in docs:
        assert d["status"] == "current" and d["current_version"] == 1, d
        assert d["chunks"] >= 1, d
    assert {d["source"] for d in docs} == {"alpha-notes.md", "beta.txt", "gamma.html"}
