"""The decision's signals, measured the cheap way and still right: the query is embedded only
when something uses the vector, read from the registry at each query (a knowledge base emptied
or filled since the previous query decides the next one correctly)."""

from __future__ import annotations

import dataclasses

from tests.helpers.api import ask, upload, wait_job
from tests.helpers.app import ADMIN, new_tenant

QUESTION = "How many days do I have to return an item to Zephyr Outdoor Gear?"
REFUND_V2 = (
    "Refund policy of Zephyr Outdoor Gear, revised. Returns are accepted within 14 days of "
    "delivery only, and a restocking fee of 9 percent applies to every return."
)


def _counting(client) -> list[str]:
    router = client.app.state.ragtune.chat.router
    router.background.vectors()  # the startup's embedding of the background questions, done
    embedder = router.retriever.embedder
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
    assert calls == [QUESTION]  # nothing left to search: the emptied tenant's query is not embedded
    r = upload(client, headers, "refunds.txt", REFUND_V2, document_id="refunds")
    assert wait_job(client, headers, r.json()["job_id"])["state"] == "succeeded"
    refilled = ask(client, headers, QUESTION)["route"]
    assert refilled["path"] == "rag" and refilled["signals"]["top_score"] >= 0.3, refilled
    assert calls[-1] == QUESTION


DOCS = {  # each one chunk of more than 32 tokens (the smallest budget a policy may set)
    "returns": "Zephyr Outdoor Gear accepts returns of unused items within 45 days of delivery. "
               "Items must be in their original packaging, with tags, and bought from us or "
               "from one of our authorised dealers.",
    "exchanges": "Zephyr Outdoor Gear exchanges clearance items for another size or colour "
                 "within 30 days; clearance items are never refunded, and an exchange ships "
                 "free of charge inside the country.",
    "shipping": "Zephyr Outdoor Gear emails a prepaid return label within two days of a "
                "return request; returns from abroad pay their own postage and customs, which "
                "are not refunded.",
}


def test_context_fits_the_budget_with_token_counts_stored_at_ingestion(client):
    router = client.app.state.ragtune.chat.router
    embedder = router.retriever.embedder
    counted: list[str] = []
    real = router.count_tokens
    router.count_tokens = lambda text: counted.append(text) or real(text)
    tid, headers = new_tenant(client, {"min_score": -1, "top_k": 3})
    for name, text in DOCS.items():
        r = upload(client, headers, f"{name}.txt", text, document_id=name)
        assert wait_job(client, headers, r.json()["job_id"])["state"] == "succeeded"
    hits = router.retriever.store.search(tid, embedder.query(QUESTION), 3)
    assert [h.tokens for h in hits] == [embedder.count_tokens(h.text) for h in hits]

    def given(budget: int) -> list[dict]:
        r = client.patch(f"/v1/tenants/{tid}", headers=ADMIN,
                         json={"policy": {"context_max_tokens": budget}})
        assert r.status_code == 200, r.text
        r = client.post("/v1/chat/completions", headers=headers, json={
            "messages": [{"role": "user", "content": QUESTION}], "route": "rag"})
        body = r.json()
        assert body["route"]["signals"]["chunks"] == len(body["citations"])
        timing = {e.split(";")[0].strip(): float(e.split("dur=")[1].split(";")[0])
                  for e in r.headers["server-timing"].split(",")}
        steps = [timing[k] for k in ("registry", "embed", "search")]
        assert all(x > 0 for x in steps) and sum(steps) <= timing["route"], timing
        return body["citations"]

    two = hits[0].tokens + hits[1].tokens
    assert [c["chunk_id"] for c in given(two)] == [h.chunk_id for h in hits[:2]]
    assert [c["chunk_id"] for c in given(two - 1)] == [hits[0].chunk_id]
    cut = given(32)  # below the first chunk's count: its start, cut to about the budget
    assert len(cut) == 1 and hits[0].text.startswith(cut[0]["text"])
    assert 0 < len(cut[0]["text"]) < len(hits[0].text)
    assert counted == []  # every count came from the index


def test_chunks_indexed_without_a_count_are_counted_when_served(client):
    router = client.app.state.ragtune.chat.router
    counted: list[str] = []
    real = router.count_tokens
    router.count_tokens = lambda text: counted.append(text) or real(text)
    tid, headers = new_tenant(client, {"min_score": -1, "top_k": 2})
    store = router.retriever.store
    real_upsert = store.upsert  # as an index written before counts were stored
    store.upsert = lambda chunks: real_upsert([dataclasses.replace(c, tokens=None)
                                               for c in chunks])
    try:
        r = upload(client, headers, "returns.txt", DOCS["returns"], document_id="returns")
        assert wait_job(client, headers, r.json()["job_id"])["state"] == "succeeded"
    finally:
        store.upsert = real_upsert
    body = ask(client, headers, QUESTION, route="rag")
    assert body["route"]["signals"]["chunks"] == 1
    assert counted == [body["citations"][0]["text"]]
