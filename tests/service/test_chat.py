"""The prompt path through the router, against the fake engine (the real vLLM runs in
tests/integration)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.api import chat
from tests.helpers.app import assert_error, new_tenant


def sse_events(resp) -> list:
    out = []
    for line in resp.text.split("\n"):
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_plain_chat_reports_route_and_citations(client, tenant):
    _, headers = tenant
    r = chat(client, headers, "what is 2+2?", max_tokens=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-route"] == "prompt"
    assert body["route"]["path"] == "prompt"
    assert body["route"]["reason"]
    assert body["route"]["adapter"] is None
    assert body["citations"] == []
    assert body["choices"][0]["message"]["content"].endswith("what is 2+2?")
    assert body["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert r.headers["x-request-id"]


def test_tenant_system_prompt_is_applied(client):
    _, headers = new_tenant(client, {"system_prompt": "Answer as a pirate."})
    r = chat(client, headers, "hi")
    assert "Answer as a pirate." in r.json()["choices"][0]["message"]["content"]
    # A system message of the caller's own is kept after the tenant's.
    r = client.post(
        "/v1/chat/completions",
        headers=headers,
        json={
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
            ]
        },
    )
    assert "Answer as a pirate.\n\nBe brief." in r.json()["choices"][0]["message"]["content"]


def test_sampling_fields_forwarded_and_max_tokens_defaulted(client, tenant, fake_engine):
    _, headers = tenant
    chat(client, headers, "x", temperature=0.3, seed=7, stop=["\n"], route="prompt")
    sent = fake_engine.requests[-1]
    assert sent["temperature"] == 0.3 and sent["seed"] == 7 and sent["stop"] == ["\n"]
    assert sent["max_tokens"] == 256
    assert "route" not in sent  # ragtune's own field never reaches the engine


def test_stream_first_chunk_carries_route_and_ends_with_done(client, tenant):
    _, headers = tenant
    r = chat(client, headers, "stream me", stream=True)
    assert r.status_code == 200
    assert r.headers["x-route"] == "prompt"
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    first = events[0]
    assert first["object"] == "chat.completion.chunk"
    assert first["route"]["path"] == "prompt" and first["citations"] == []
    assert all("route" not in e for e in events[1:-1])
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text.endswith("stream me")
    # usage only when the client asked for it
    assert not any(e.get("usage") and not e["choices"] for e in events[:-1])
    r = chat(client, headers, "again", stream=True, stream_options={"include_usage": True})
    assert any(e != "[DONE]" and e.get("usage") for e in sse_events(r))


def _timings(header: str) -> dict[str, float]:
    """Server-Timing entries: name -> dur (ms)."""
    out = {}
    for entry in header.split(","):
        name, *params = (p.strip() for p in entry.split(";"))
        out[name] = float(next(p for p in params if p.startswith("dur="))[4:])
    return out


def _decision_seconds_sum(client, path: str) -> float:
    text = client.get("/metrics").text
    prefix = f'ragtune_route_decision_duration_seconds_sum{{path="{path}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix))
                 .removeprefix(prefix))


def test_server_timing_reports_the_decision_and_the_engine(client, tenant):
    _, headers = tenant
    chat(client, headers, "warm up", max_tokens=2)
    before = _decision_seconds_sum(client, "prompt")
    r = chat(client, headers, "time me", max_tokens=2)
    t = _timings(r.headers["server-timing"])
    # auto, for a tenant with nothing to search or match: the registry read is the one step
    assert set(t) == {"route", "registry", "engine"}
    assert 0 < t["registry"] <= t["route"] and t["engine"] > 0
    # the same measurement as the decision histogram's (rounded to 0.01 ms in the header)
    added = (_decision_seconds_sum(client, "prompt") - before) * 1e3
    assert abs(added - t["route"]) < 0.01
    streamed = chat(client, headers, "stream me", stream=True)
    assert set(_timings(streamed.headers["server-timing"])) == {"route", "registry"}
    forced = chat(client, headers, "no decision to make", route="prompt", max_tokens=2)
    assert set(_timings(forced.headers["server-timing"])) == {"route", "engine"}


def test_stream_cut_mid_way_ends_with_error_event(client, tenant):
    _, headers = tenant
    r = chat(client, headers, "BREAK please", stream=True)
    assert r.status_code == 200
    events = sse_events(r)
    errors = [e for e in events if e != "[DONE]" and "error" in e]
    assert len(errors) == 1
    assert errors[0]["error"]["code"] == "engine_unavailable"
    assert events[-1] == "[DONE]"


def test_unknown_model_is_404_model_not_found(client, tenant):
    _, headers = tenant
    err = assert_error(chat(client, headers, model="gpt-4"), 404, "model_not_found")
    assert err["param"] == "model"
    for model in ("auto", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert chat(client, headers, model=model).status_code == 200


def test_route_adapter_rag_needs_an_adapter_and_policy_can_forbid_forcing(client):
    _, headers = new_tenant(client)
    assert_error(chat(client, headers, route="adapter_rag"), 400, "adapter_unavailable")
    _, strict = new_tenant(client, {"allow_route_override": []})
    assert_error(chat(client, strict, route="prompt"), 400, "route_not_allowed")


def test_context_length_maps_to_openai_code(client, tenant):
    _, headers = tenant
    err = assert_error(chat(client, headers, "TOO_LONG"), 400, "context_length_exceeded")
    assert err["param"] == "messages"


def test_engine_error_is_clean_5xx(client, tenant):
    _, headers = tenant
    assert_error(chat(client, headers, "CRASH"), 502, "upstream_error")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_an_error_after_the_decision_says_the_path_and_its_timing(client, tenant, path, stream):
    """The engine refused or failed after the path was decided: the error response carries
    X-Route and Server-Timing, as the answer would have."""
    _, headers = tenant
    body = ({"messages": [{"role": "user", "content": "TOO_LONG"}]} if "chat" in path
            else {"input": "TOO_LONG"})
    r = client.post(path, headers=headers, json={**body, "stream": stream})
    assert_error(r, 400, "context_length_exceeded")
    assert r.headers["x-route"] == "prompt"
    assert "route;dur=" in r.headers["server-timing"]


def test_engine_down_is_503_with_retry_after(client, tenant, fake_engine):
    _, headers = tenant
    fake_engine.healthy = False
    client.app.state.ragtune.pool.replicas[0].healthy = False
    for stream in (False, True):
        r = chat(client, headers, stream=stream)
        assert_error(r, 503, "engine_unavailable")
        assert int(r.headers["retry-after"]) > 0
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["llm"] == "down"
    fake_engine.healthy = True


def test_models_lists_base_model(client, tenant):
    _, headers = tenant
    r = client.get("/v1/models", headers=headers)
    assert r.status_code == 200
    ids = [m["id"] for m in r.json()["data"]]
    assert ids == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
