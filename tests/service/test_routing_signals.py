"""The decision's signals, measured the cheap way and still right: the query is embedded only
when something uses the vector, and the embedding started early for a tenant whose previous
decision needed it is never trusted over the registry (a knowledge base emptied or filled
since then decides the next query correctly)."""

from __future__ import annotations

from tests.conftest import new_tenant
from tests.ingest.test_documents_api import REFUND_V2, ask, upload, wait_job

QUESTION = "How many days do I have to return an item to Zephyr Outdoor Gear?"


def _counting(client) -> list[str]:
    embedder = client.app.state.ragtune.chat.router.retriever.embedder
    calls: list[str] = []
    real = embedder.query

    def query(text: str) -> list[float]:
        calls.append(text)
        return real(text)

    embedder.query = query
    return calls


def test_no_embedding_for_a_tenant_with_nothing_to_match(client):
    calls = _counting(client)
    _, headers = new_tenant(client)
    for _ in range(3):
        route = ask(client, headers, QUESTION)["route"]
        assert route["path"] == "prompt" and route["signals"]["top_score"] is None, route
    assert calls == []


def test_knowledge_base_emptied_then_filled_is_seen_at_the_next_query(client):
    calls = _counting(client)
    _, headers = new_tenant(client, {"min_score": 0.3})
    r = upload(client, headers, "refunds.txt", REFUND_V2, document_id="refunds")
    assert wait_job(client, headers, r.json()["job_id"])["state"] == "succeeded"
    first = ask(client, headers, QUESTION)["route"]
    assert first["path"] == "rag" and first["signals"]["chunks"] >= 1, first
    assert client.delete("/v1/documents/refunds", headers=headers).status_code == 204
    emptied = ask(client, headers, QUESTION)["route"]
    assert emptied["path"] == "prompt" and emptied["signals"]["top_score"] is None, emptied
    # the early embedding ran for the emptied tenant (its last decision needed it), unused
    assert len(calls) == 2
    again = ask(client, headers, "And what is the restocking fee?")["route"]
    assert again["path"] == "prompt" and len(calls) == 2  # no hint left: nothing embedded
    r = upload(client, headers, "refunds.txt", REFUND_V2, document_id="refunds")
    assert wait_job(client, headers, r.json()["job_id"])["state"] == "succeeded"
    refilled = ask(client, headers, QUESTION)["route"]
    assert refilled["path"] == "rag" and refilled["signals"]["top_score"] >= 0.3, refilled
    assert calls[-1] == QUESTION
