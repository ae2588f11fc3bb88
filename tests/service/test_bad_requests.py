"""Table-driven bad requests: each gets its status and code, and the server stays healthy."""

from __future__ import annotations

import pytest

from tests.helpers.app import ADMIN_KEY, assert_error

CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]

CASES = [
    # (name, method, path, auth, kwargs, status, code)
    ("no auth", "POST", CHAT, None, {"json": {"messages": OK_MESSAGES}}, 401, "missing_api_key"),
    (
        "wrong key",
        "POST",
        CHAT,
        "rt-0123456789abcdef-" + "x" * 43,
        {"json": {"messages": OK_MESSAGES}},
        401,
        "invalid_api_key",
    ),
    (
        "garbage key",
        "POST",
        CHAT,
        "nope",
        {"json": {"messages": OK_MESSAGES}},
        401,
        "invalid_api_key",
    ),
    (
        "admin key on chat",
        "POST",
        CHAT,
        "admin",
        {"json": {"messages": OK_MESSAGES}},
        403,
        "tenant_key_required",
    ),
    (
        "malformed json",
        "POST",
        CHAT,
        "tenant",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    ("missing messages", "POST", CHAT, "tenant", {"json": {}}, 400, "missing_field"),
    ("empty messages", "POST", CHAT, "tenant", {"json": {"messages": []}}, 400, "invalid_value"),
    (
        "bad role",
        "POST",
        CHAT,
        "tenant",
        {"json": {"messages": [{"role": "wizard", "content": "x"}]}},
        400,
        "invalid_value",
    ),
    (
        "n=2",
        "POST",
        CHAT,
        "tenant",
        {"json": {"messages": OK_MESSAGES, "n": 2}},
        400,
        "invalid_value",
    ),
    (
        "negative max_tokens",
        "POST",
        CHAT,
        "tenant",
        {"json": {"messages": OK_MESSAGES, "max_tokens": -1}},
        400,
        "invalid_value",
    ),
    (
        "max_tokens over cap",
        "POST",
        CHAT,
        "tenant",
        {"json": {"messages": OK_MESSAGES, "max_tokens": 100000}},
        400,
        "max_tokens_too_large",
    ),
    (
        "temperature out of range",
        "POST",
        CHAT,
        "tenant",
        {"json": {"messages": OK_MESSAGES, "temperature": 9}},
        400,
        "invalid_value",
    ),
    (
        "too many messages",
        "POST",
        CHAT,
        "tenant",
        {"json": {"messages": OK_MESSAGES * 300}},
        400,
        "too_many_messages",
    ),
    (
        "message too long",
        "POST",
        CHAT,
        "tenant",
        {"json": {"messages": [{"role": "user", "content": "a" * 40_000}]}},
        400,
        "message_too_long",
    ),
    (
        "body too large",
        "POST",
        CHAT,
        "tenant",
        {"json": {"messages": [{"role": "user", "content": "a" * (2 << 20)}]}},
        413,
        "request_too_large",
    ),
    ("unknown route", "GET", "/v1/nothing", "tenant", {}, 404, "not_found"),
    ("wrong method", "DELETE", CHAT, "tenant", {}, 405, "method_not_allowed"),
    (
        "tenant key on admin",
        "POST",
        "/v1/tenants",
        "tenant",
        {"json": {"id": "zz"}},
        403,
        "admin_key_required",
    ),
    (
        "bad tenant id",
        "POST",
        "/v1/tenants",
        "admin",
        {"json": {"id": "Bad_ID!"}},
        400,
        "invalid_tenant_id",
    ),
    (
        "unknown policy field",
        "POST",
        "/v1/tenants",
        "admin",
        {"json": {"id": "ok-id", "policy": {"colour": "blue"}}},
        400,
        "invalid_value",
    ),
    (
        "bad policy mode",
        "POST",
        "/v1/tenants",
        "admin",
        {"json": {"id": "ok-id2", "policy": {"mode": "magic"}}},
        400,
        "invalid_value",
    ),
    (
        "bad policy adapter_context",
        "POST",
        "/v1/tenants",
        "admin",
        {"json": {"id": "ok-id3", "policy": {"adapter_context": "always"}}},
        400,
        "invalid_value",
    ),
    ("unknown tenant", "GET", "/v1/tenants/ghost", "admin", {}, 404, "tenant_not_found"),
    (
        "patch bad adapter_context",
        "PATCH",
        "/v1/tenants/{tenant}",
        "admin",
        {"json": {"policy": {"adapter_context": 1}}},
        400,
        "invalid_policy",
    ),
    (
        "patch bad policy",
        "PATCH",
        "/v1/tenants/{tenant}",
        "admin",
        {"json": {"policy": {"mode": "magic"}}},
        400,
        "invalid_policy",
    ),
]


@pytest.mark.parametrize(
    "name,method,path,auth,kwargs,status,code", CASES, ids=[c[0] for c in CASES]
)
def test_bad_request(client, tenant, name, method, path, auth, kwargs, status, code):
    tenant_id, tenant_headers = tenant
    headers = dict(kwargs.pop("headers", {}))
    if auth == "tenant":
        headers.update(tenant_headers)
    elif auth == "admin":
        headers["Authorization"] = f"Bearer {ADMIN_KEY}"
    elif auth is not None:
        headers["Authorization"] = f"Bearer {auth}"
    resp = client.request(method, path.format(tenant=tenant_id), headers=headers, **kwargs)
    assert_error(resp, status, code)
    # nothing was created by a rejected tenant request, and the server is still healthy
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    ok = client.post(CHAT, json={"messages": OK_MESSAGES}, headers=tenant_headers)
    assert ok.status_code == 200


def test_rejected_tenant_creation_leaves_nothing(client, admin):
    client.post("/v1/tenants", json={"id": "ok-id", "policy": {"colour": "blue"}}, headers=admin)
    assert_error(client.get("/v1/tenants/ok-id", headers=admin), 404, "tenant_not_found")
