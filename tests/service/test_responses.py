"""POST /v1/responses in process, against the fake engine (it echoes the system prompt and the
last user message, so what the model was given shows in the answer), through the official
`openai` client: the path decision as on chat, file_search reading only its vector stores and
asking for retrieval, file_citation annotations and the file_search_call item, the event
stream, and each refusal with its code. The real vLLM answers in
tests/integration/test_openai_surface.py."""

from __future__ import annotations

import json

import openai
import pytest

from tests.helpers.api import indexed, polled, sdk
from tests.helpers.app import assert_error, new_tenant

HARBOUR = b"The harbour office door code is QX-7731. The office opens at dawn."
BAKERY = b"The bakery on Mill Lane sells rye bread baked before six every morning."
QUESTION = "What is the harbour office door code?"


@pytest.fixture
def world(client):
    """A tenant with the harbour file in a vector store, and the bakery document beside it in
    the knowledge base only."""
    tid, headers = new_tenant(client)
    oc = sdk(client, headers)
    f = oc.files.create(file=("harbour.txt", HARBOUR), purpose="assistants")
    vs = oc.vector_stores.create(name="harbour")
    polled(oc, vs.id, f.id, attributes={"site": "harbour"})
    indexed(client, headers, "bakery.md", BAKERY)
    return oc, headers, f, vs


def search(vs_id: str, **extra) -> list[dict]:
    return [{"type": "file_search", "vector_store_ids": [vs_id], **extra}]


def test_a_plain_response_takes_the_policys_path(client, tenant, fake_engine):
    _, headers = tenant
    oc = sdk(client, headers)
    raw = oc.responses.with_raw_response.create(
        model="auto", input="What is 2+2?", instructions="Answer briefly.", temperature=0,
        max_output_tokens=16)
    r = raw.parse()
    assert raw.headers["x-route"] == "prompt" and raw.headers["server-timing"]
    assert r.status == "completed" and r.object == "response" and r.store is False
    assert r.output_text == "echo: Answer briefly. | What is 2+2?"
    assert [item.type for item in r.output] == ["message"]
    assert r.output[0].content[0].annotations == []
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (7, 3, 10)
    assert r.model_extra["route"]["path"] == "prompt" and r.model_extra["citations"] == []
    sent = fake_engine.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert (sent["max_tokens"], sent["temperature"]) == (16, 0)


def test_message_items_become_the_conversation(client, tenant, fake_engine):
    _, headers = tenant
    oc = sdk(client, headers)
    r = oc.responses.create(input=[
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi. "},
                                     {"type": "input_text", "text": "Who are you?"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "A model."}]},
        {"role": "user", "content": "And what is 2+2?"},
    ])
    assert r.output_text.endswith("| And what is 2+2?")
    roles = [m["role"] for m in fake_engine.requests[-1]["messages"]]
    assert roles == ["developer", "user", "assistant", "user"]


def test_file_search_reads_only_its_stores_and_cites_the_file(world, fake_engine):
    oc, _, f, vs = world
    r = oc.responses.create(model="auto", input=QUESTION, tools=search(vs.id),
                            include=["file_search_call.results"])
    assert r.model_extra["route"]["path"] == "rag"
    call, message = r.output
    assert (call.type, call.status, call.queries) == ("file_search_call", "completed", [QUESTION])
    assert [x.file_id for x in call.results] == [f.id]
    assert "QX-7731" in call.results[0].text and call.results[0].attributes == {"site": "harbour"}
    assert "QX-7731" in r.output_text  # the passage reached the model (the fake echoes it)
    (annotation,) = message.content[0].annotations
    assert (annotation.type, annotation.file_id, annotation.filename) == (
        "file_citation", f.id, "harbour.txt")
    assert annotation.index == len(r.output_text)
    assert [c["document_id"] for c in r.model_extra["citations"]] == [f.id]
    # The bakery document is in the knowledge base, relevant, and not in the store: never read.
    r = oc.responses.create(input="Where is rye bread baked before six?", tools=search(vs.id))
    assert "rye" not in r.output_text.split("|")[0]
    assert all(c["document_id"] == f.id for c in r.model_extra["citations"])
    # Without the tool, the policy searches all of the tenant's documents, as chat does.
    r = oc.responses.create(input="Where is rye bread baked before six?")
    assert r.model_extra["route"]["path"] == "rag" and "Mill Lane" in r.output_text
    assert r.output[0].type == "file_search_call" and r.output[0].results is None
    assert r.output[1].content[0].annotations[0].file_id == "bakery"


def test_file_search_asks_for_retrieval_where_the_policy_would_not(client, fake_engine):
    # A question nothing in the store answers: auto alone would take the prompt path.
    _, headers = new_tenant(client)
    oc = sdk(client, headers)
    f = oc.files.create(file=("harbour.txt", HARBOUR), purpose="assistants")
    vs = oc.vector_stores.create(name="h", file_ids=[f.id])
    polled(oc, vs.id, f.id)
    plain = oc.responses.create(input="What is the capital of France?")
    assert plain.model_extra["route"]["path"] == "prompt"
    r = oc.responses.create(input="What is the capital of France?", tools=search(vs.id))
    route = r.model_extra["route"]
    assert (route["path"], route["reason_kind"]) == ("rag", "file_search")
    assert "file_search" in route["reason"]
    # A prompt-only policy that lets a request choose rag: rag; one that does not: refused.
    _, headers = new_tenant(client, {"mode": "prompt"})
    oc2 = sdk(client, headers)
    g = oc2.files.create(file=("harbour.txt", HARBOUR), purpose="assistants")
    vs2 = oc2.vector_stores.create(name="h", file_ids=[g.id])
    polled(oc2, vs2.id, g.id)
    r = oc2.responses.create(input=QUESTION, tools=search(vs2.id))
    assert r.model_extra["route"]["reason_kind"] == "file_search" and "QX-7731" in r.output_text
    _, headers = new_tenant(client, {"mode": "prompt", "allow_route_override": ["prompt"]})
    oc3 = sdk(client, headers)
    vs3 = oc3.vector_stores.create(name="empty")
    with pytest.raises(openai.BadRequestError) as exc:
        oc3.responses.create(input=QUESTION, tools=search(vs3.id))
    assert exc.value.code == "route_not_allowed"
    # tool_choice none: the tool is not used.
    r = oc.responses.create(input="What is the capital of France?", tools=search(vs.id),
                            tool_choice="none")
    assert r.model_extra["route"]["path"] == "prompt"


def test_file_search_options_narrow_what_is_read(world):
    oc, _, f, vs = world
    r = oc.responses.create(input=QUESTION, tools=search(
        vs.id, filters={"type": "eq", "key": "site", "value": "mill"}))
    assert r.model_extra["citations"] == [] and r.output[0].type == "file_search_call"
    r = oc.responses.create(input=QUESTION, tools=search(
        vs.id, ranking_options={"score_threshold": 0.99}))
    assert r.model_extra["citations"] == []
    assert r.model_extra["route"]["signals"]["min_score"] == 0.99
    r = oc.responses.create(input=QUESTION, tools=search(vs.id, max_num_results=1))
    assert r.model_extra["route"]["signals"]["top_k"] == 1


def test_the_event_stream(world):
    oc, _, f, vs = world
    events = list(oc.responses.create(input=QUESTION, tools=search(vs.id), stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:7] == ["response.output_item.added", "response.file_search_call.in_progress",
                          "response.file_search_call.searching",
                          "response.file_search_call.completed", "response.output_item.done"]
    assert kinds[7:9] == ["response.output_item.added", "response.content_part.added"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2
    assert kinds[-5:] == ["response.output_text.annotation.added", "response.output_text.done",
                          "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output_text == "".join(deltas) and "QX-7731" in done.output_text
    assert done.usage.total_tokens == 10
    assert done.model_extra["route"]["path"] == "rag"
    assert events[-5].annotation.file_id == f.id
    assert events[0].response.model_extra["route"]["path"] == "rag"


def test_an_engine_failure_mid_stream_ends_with_response_failed(client, tenant):
    _, headers = tenant
    oc = sdk(client, headers)
    events = list(oc.responses.create(input="please BREAK now", stream=True))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-1].response.status == "failed" and events[-1].response.error.message
    # Before the first token, the failure is a plain error status, not a stream.
    with pytest.raises(openai.InternalServerError):
        oc.responses.create(input="please CRASH now", stream=True)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"previous_response_id": "resp_1"}, 400, "responses_not_stored", "previous_response_id"),
        ({"store": True}, 400, "responses_not_stored", "store"),
        ({"conversation": "conv_1"}, 400, "responses_not_stored", "conversation"),
        ({"background": True}, 400, "unsupported_parameter", "background"),
        ({"tools": [{"type": "function", "name": "f"}]}, 400, "unsupported_tool", "tools.0.type"),
        ({"tools": [{"type": "web_search"}]}, 400, "unsupported_tool", "tools.0.type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, 400, "invalid_value",
         "tools.0.vector_store_ids"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_nope"]}]}, 404,
         "vector_store_not_found", "tools.0.vector_store_ids"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_a"], "max_num_results": 0}]},
         400, "invalid_value", "tools.0.max_num_results"),
        ({"tool_choice": "required"}, 400, "invalid_value", "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "f"}}, 400, "unsupported_tool",
         "tool_choice"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, 400,
         "unsupported_input", "input.0"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         400, "unsupported_input", "input.0.content.0"),
        ({"input": [{"role": "assistant", "content": "only me"}]}, 400, "invalid_input", "input"),
        ({"input": "  "}, 400, "invalid_input", "input"),
        ({"text": {"format": {"type": "xml"}}}, 400, "invalid_value", "text.format"),
        ({"max_output_tokens": 10**6}, 400, "max_tokens_too_large", "max_output_tokens"),
        ({"model": "gpt-4o"}, 404, "model_not_found", "model"),
        ({"route": "prompt", "tools": "VS"}, 400, "route_conflicts_with_file_search", "route"),
    ],
)
def test_each_refusal_names_its_code(client, tenant, body, status, code, param):
    _, headers = tenant
    if body.get("tools") == "VS":
        vs = client.post("/v1/vector_stores", headers=headers, json={"name": "x"}).json()
        body = {**body, "tools": search(vs["id"])}
    r = client.post("/v1/responses", headers=headers, json={"input": "hello", **body})
    err = assert_error(r, status, code)
    assert err["param"] == param


def test_json_formats_reach_the_engine(client, tenant, fake_engine):
    _, headers = tenant
    oc = sdk(client, headers)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    oc.responses.create(input="hi", text={"format": {"type": "json_schema", "name": "x",
                                                     "schema": schema, "strict": True}})
    assert fake_engine.requests[-1]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    oc.responses.create(input="hi", text={"format": {"type": "json_object"}})
    assert fake_engine.requests[-1]["response_format"] == {"type": "json_object"}


def test_the_tenants_limits_apply(client):
    _, headers = new_tenant(client, {"requests_per_minute": 1})
    oc = sdk(client, headers)
    oc.responses.create(input="hi")
    with pytest.raises(openai.RateLimitError):
        oc.responses.create(input="hi")
    assert json.loads(
        client.post("/v1/responses", headers=headers, json={"input": "hi"}).text
    )["error"]["code"] == "rate_limit_exceeded"
