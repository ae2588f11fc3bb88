from __future__ import annotations

import logging

from tests.helpers.app import new_tenant


def test_metrics_count_requests_by_bounded_labels(client, tenant):
    _, headers = tenant
    for _ in range(2):
        client.post(
            "/v1/chat/completions",
            headers=headers,
            json={"messages": [{"role": "user", "content": "m"}]},
        )
    client.post(
        "/v1/chat/completions",
        headers=headers,
        json={"messages": [{"role": "user", "content": "s"}], "stream": True},
    )
    text = client.get("/metrics").text
    assert 'ragtune_chat_requests_total{path="prompt",status="2xx"} 3.0' in text
    assert (
        'ragtune_http_requests_total{method="POST",route="/v1/chat/completions",status="2xx"}'
        in text
    )
    assert 'ragtune_chat_tokens_total{kind="completion",path="prompt"} 9.0' in text
    assert "ragtune_chat_time_to_first_token_seconds_count" in text
    assert "ragtune_engine_replicas_healthy 1.0" in text
    # unknown paths do not create a label per URL
    client.get("/v1/does-not-exist-123")
    text = client.get("/metrics").text
    assert "does-not-exist" not in text and 'route="unmatched"' in text


def test_request_id_is_returned_and_kept(client):
    r = client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    rid = r.headers["x-request-id"]
    assert rid != "bad id with spaces" and len(rid) == 32


def test_keys_never_logged(client, caplog):
    logging.getLogger("ragtune").propagate = True
    caplog.set_level(logging.DEBUG, logger="ragtune")
    r = client.post(
        "/v1/tenants", json={"id": "logcheck"}, headers={"Authorization": "Bearer test-admin-key"}
    )
    key = r.json()["api_key"]
    client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"messages": [{"role": "user", "content": "hi"}]},
    )
    client.post(
        "/v1/chat/completions",
        headers={"Authorization": "Bearer rt-wrong"},
        json={"messages": [{"role": "user", "content": "hi"}]},
    )
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "ragtune.access" in logged  # the access log did run
    assert key not in logged and "test-admin-key" not in logged and "rt-wrong" not in logged


def test_json_log_lines_carry_request_id():
    from core.observability import JsonFormatter, request_id_var

    token = request_id_var.set("rid-1")
    try:
        rec = logging.LogRecord("ragtune.x", logging.INFO, "f", 1, "hello %s", ("w",), None)
        rec.status = 200
        line = JsonFormatter().format(rec)
    finally:
        request_id_var.reset(token)
    import json

    out = json.loads(line)
    assert out["msg"] == "hello w" and out["request_id"] == "rid-1" and out["status"] == 200


def test_tenant_label_not_in_metrics(client):
    tenant_id, headers = new_tenant(client)
    client.post(
        "/v1/chat/completions",
        headers=headers,
        json={"messages": [{"role": "user", "content": "q"}]},
    )
    assert tenant_id not in client.get("/metrics").text
