"""An OpenAI RAG app moved to ragtune by its base_url: the official `openai` client, unchanged,
against the session's real `ragtune serve` and vLLM. It uploads a file, puts it in a vector
store, waits with the SDK's own poll helper, and asks through Responses with file_search, plain
and streamed; it searches the store, and deletes the file."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers.orbin import DOCUMENT, FACT, MAX_TOKENS, QUESTION

pytestmark = pytest.mark.integration

# The same question answered from another document the tenant has, outside the store: an answer
# with this code read what file_search must not read.
OTHER_FACT = "ZB-9027"
OTHER = DOCUMENT.replace(FACT, OTHER_FACT).replace("facilities notice", "old notice")


@pytest.fixture(scope="module")
def app(server):
    key = server.new_tenant("oa-surface")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    f = client.files.create(file=("orbin-facilities.txt", DOCUMENT.encode()),
                            purpose="assistants")
    vs = client.vector_stores.create(name="facilities")
    attached = client.vector_stores.files.create_and_poll(
        vector_store_id=vs.id, file_id=f.id, poll_interval_ms=200, max_wait_seconds=180)
    other = client.files.create(file=("old-notice.txt", OTHER.encode()), purpose="assistants")
    return client, f, vs, attached, other, key


def test_the_file_is_indexed_into_the_store(app, server):
    client, f, vs, attached, _, key = app
    assert (attached.status, attached.last_error) == ("completed", None)
    store = client.vector_stores.retrieve(vs.id)
    assert store.status == "completed" and store.file_counts.completed == 1
    # One store of documents: the knowledge base's API sees the file as a document.
    doc = httpx.get(f"{server.url}/v1/documents/{f.id}",
                    headers={"Authorization": f"Bearer {key}"}).json()
    assert doc["current_version"] == 1 and doc["chunks"] >= 1


def ask(client, vs_id: str, **extra):
    return client.responses.create(
        model="auto", input=QUESTION, temperature=0, max_output_tokens=MAX_TOKENS,
        tools=[{"type": "file_search", "vector_store_ids": [vs_id]}], **extra)


def test_file_search_answers_from_the_store_with_a_file_citation(app):
    client, f, vs, *_ = app
    r = ask(client, vs.id, include=["file_search_call.results"])
    assert FACT in r.output_text and OTHER_FACT not in r.output_text, r.output_text
    call, message = r.output
    assert call.type == "file_search_call" and {x.file_id for x in call.results} == {f.id}
    annotations = message.content[0].annotations
    assert [(a.type, a.file_id, a.filename) for a in annotations] == [
        ("file_citation", f.id, "orbin-facilities.txt")]
    assert r.model_extra["route"]["path"] == "rag" and r.status == "completed"
    assert r.usage.output_tokens > 0


def test_the_same_streamed(app):
    client, f, vs, *_ = app
    events = list(ask(client, vs.id, stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert FACT in text, text
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == text
    cited = [e.annotation.file_id for e in events
             if e.type == "response.output_text.annotation.added"]
    assert cited == [f.id]


def test_another_tenants_vector_store_is_404(app, server):
    _, _, vs, *_ = app
    stranger = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.new_tenant("oa-other"),
                             max_retries=0)
    with pytest.raises(openai.NotFoundError):
        ask(stranger, vs.id)
    with pytest.raises(openai.NotFoundError):
        stranger.vector_stores.search(vector_store_id=vs.id, query=QUESTION)


def test_vector_store_search_returns_the_passage(app):
    client, f, vs, *_ = app
    hits = list(client.vector_stores.search(vector_store_id=vs.id, query=QUESTION))
    assert [h.file_id for h in hits] == [f.id]
    assert FACT in hits[0].content[0].text and hits[0].filename == "orbin-facilities.txt"


def test_zz_deleting_the_file_takes_it_out_of_the_store_and_the_index(app):
    client, f, vs, *_ = app
    assert client.files.delete(f.id).deleted
    assert list(client.vector_stores.files.list(vs.id)) == []
    assert list(client.vector_stores.search(vector_store_id=vs.id, query=QUESTION)) == []
    r = ask(client, vs.id)
    assert r.model_extra["citations"] == [] and FACT not in r.output_text
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
