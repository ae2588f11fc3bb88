"""Schemathesis against the app's own OpenAPI document, in-process, every operation.

One app (a fake engine, the real base model's config for adapter validation) holds a tenant
with an indexed document and a ready adapter. Schemathesis generates valid and invalid requests
for each operation (its examples, coverage and fuzzing phases; derandomized, so a run is
repeatable) and each response must:
- never be a 5xx;
- have a status and content type the document declares, and a body conforming to the declared
  schema (every 4XX is declared as the one error shape of API.md);
- for every 4xx, be exactly `{"error": {"message", "type", "param", "code"}}` (checked here too,
  not only through the document, so a document that stopped declaring it would not hide it).

Requests go through Starlette's TestClient, which also runs the app's lifespan, so every request
runs on the event loop that started the app's clients. Tenant operations use the tenant's key,
/v1/tenants* the admin key, the operations endpoints none; AUTH below names every operation and
test_every_operation_is_fuzzed fails when one is added without an entry. Nothing is excluded.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from tests.helpers import adapter_files as f
from tests.helpers.api import indexed
from tests.helpers.app import ADMIN, make_settings, new_tenant
from tests.helpers.fake_engine import FakeEngine

MAX_EXAMPLES = 25

# (method, path) -> whose key the operation is called with
AUTH = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("POST", "/v1/tenants"): "admin",
    ("GET", "/v1/tenants"): "admin",
    ("GET", "/v1/admin/status"): "admin",
    ("POST", "/v1/admin/backup"): "admin",
    ("GET", "/v1/tenants/{tenant_id}"): "admin",
    ("PATCH", "/v1/tenants/{tenant_id}"): "admin",
    ("DELETE", "/v1/tenants/{tenant_id}"): "admin",
    ("POST", "/v1/tenants/{tenant_id}/keys"): "admin",
    ("GET", "/v1/me"): "tenant",
    ("POST", "/v1/chat/completions"): "tenant",
    ("GET", "/v1/models"): "tenant",
    ("POST", "/v1/documents"): "tenant",
    ("GET", "/v1/documents"): "tenant",
    ("GET", "/v1/jobs/{job_id}"): "tenant",
    ("GET", "/v1/documents/{document_id}"): "tenant",
    ("DELETE", "/v1/documents/{document_id}"): "tenant",
    ("GET", "/v1/adapters"): "tenant",
    ("POST", "/v1/adapters"): "tenant",
    ("GET", "/v1/adapters/{name}"): "tenant",
    ("DELETE", "/v1/adapters/{name}"): "tenant",
    ("POST", "/v1/adapters/{name}/rollback"): "tenant",
    ("POST", "/v1/advisor"): "tenant",
    ("POST", "/v1/policy/explain"): "tenant",
    ("POST", "/v1/policy/calibrate"): "tenant",
    ("POST", "/v1/embeddings"): "tenant",
    ("POST", "/v1/eval-sets"): "tenant",
    ("GET", "/v1/eval-sets"): "tenant",
    ("GET", "/v1/eval-sets/{set_id}"): "tenant",
    ("DELETE", "/v1/eval-sets/{set_id}"): "tenant",
    ("POST", "/v1/evaluations"): "tenant",
    ("GET", "/v1/evaluations"): "tenant",
    ("GET", "/v1/evaluations/{evaluation_id}"): "tenant",
    ("GET", "/v1/evaluations/{evaluation_id}/items"): "tenant",
    ("POST", "/v1/responses"): "tenant",
    ("POST", "/v1/files"): "tenant",
    ("GET", "/v1/files"): "tenant",
    ("GET", "/v1/files/{file_id}"): "tenant",
    ("GET", "/v1/files/{file_id}/content"): "tenant",
    ("DELETE", "/v1/files/{file_id}"): "tenant",
    ("POST", "/v1/vector_stores"): "tenant",
    ("GET", "/v1/vector_stores"): "tenant",
    ("GET", "/v1/vector_stores/{vector_store_id}"): "tenant",
    ("POST", "/v1/vector_stores/{vector_store_id}"): "tenant",
    ("DELETE", "/v1/vector_stores/{vector_store_id}"): "tenant",
    ("POST", "/v1/vector_stores/{vector_store_id}/files"): "tenant",
    ("GET", "/v1/vector_stores/{vector_store_id}/files"): "tenant",
    ("GET", "/v1/vector_stores/{vector_store_id}/files/{file_id}"): "tenant",
    ("POST", "/v1/vector_stores/{vector_store_id}/files/{file_id}"): "tenant",
    ("DELETE", "/v1/vector_stores/{vector_store_id}/files/{file_id}"): "tenant",
    ("POST", "/v1/vector_stores/{vector_store_id}/search"): "tenant",
}


class Env:
    def __init__(self, client: TestClient, tenant_key: dict[str, str], ids: dict[str, str]):
        self.client = client
        self.keys = {None: {}, "admin": dict(ADMIN), "tenant": tenant_key}
        self.ids = ids  # path parameter -> an id that exists


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("fuzz")
    engine = FakeEngine().start()
    try:
        settings_ = make_settings(tmp / "srv", [engine.url], model_dir=f.base_model_dir())
        with TestClient(create_app(settings_), raise_server_exceptions=False) as client:
            _, headers = new_tenant(client)
            victim, _ = new_tenant(client)  # the tenant whose policy the admin operations fuzz
            job_id = indexed(client, headers, "refunds.md",
                             b"Refunds are accepted within 45 days of delivery.")["job_id"]
            archive = f.tar_gz_of(f.valid_adapter(tmp / "adapter"), tmp / "a.tar.gz")
            for _ in range(2):  # two versions: rollbacks have somewhere to go
                r = client.post("/v1/adapters", headers=headers,
                                files={"file": ("a.tar.gz", archive.read_bytes())},
                                data={"name": "warelang",
                                      "examples": json.dumps(["a WARELANG rule"])})
                assert r.status_code == 201, r.text
            eval_set = client.post("/v1/eval-sets", headers=headers, json={
                "name": "refunds", "items": [{"query": "How long for refunds?",
                                              "checks": {"contains": ["45"]}}]}).json()["id"]
            evaluation = client.post("/v1/evaluations", headers=headers, json={
                "eval_set": eval_set, "arms": ["prompt"], "max_tokens": 8}).json()["id"]
            store = client.post("/v1/vector_stores", headers=headers,
                                json={"name": "kb", "file_ids": ["refunds"]}).json()["id"]
            yield Env(client, headers, {"document_id": "refunds", "job_id": job_id,
                                        "name": "warelang", "tenant_id": victim,
                                        "set_id": eval_set, "evaluation_id": evaluation,
                                        "file_id": "refunds", "vector_store_id": store})
    finally:
        engine.stop()


def _document() -> dict:
    """The app's OpenAPI document, built without starting the app (nothing is touched on disk);
    test_every_operation_is_fuzzed checks it is the one the running app serves."""
    unused = Path(tempfile.gettempdir()) / "ragtune-fuzz-unused"
    return create_app(make_settings(unused, ["http://127.0.0.1:9"])).openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def error_shape(ctx, response, case) -> bool | None:
    """Every 4xx body is exactly the one error shape (API.md)."""
    if not 400 <= response.status_code < 500:
        return None
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {body}"
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, f"not the error shape: {body}"
    assert isinstance(err["message"], str) and err["message"], body
    assert isinstance(err["code"], str) and err["code"], body
    assert isinstance(err["type"], str) and err["type"], body
    assert err["param"] is None or isinstance(err["param"], str), body
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    # Not negative_data_rejection: pydantic's lax mode takes `"temperature": false` as 0.0 or
    # `"n": "1"` as 1, which that check reports; lenient, not unsafe. Negative data is still
    # generated: it must get no 5xx and, when refused, the one error shape.
    error_shape,
]


def test_every_operation_is_fuzzed(env: Env):
    assert env.client.get("/openapi.json").json() == DOCUMENT
    assert {op for op in EXISTING} <= set(AUTH)
    declared = {(op.method.upper(), op.path)
                for op in (result.ok() for result in schema.get_all_operations())}
    assert declared == set(AUTH), "give every operation of the document its key in AUTH"


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api(case, env: Env):
    _call_and_validate(case, env)


# The same, with the path naming something that exists (generated ids almost never do), so
# queries and bodies are fuzzed against a real document, job, adapter and tenant. Not here: the
# DELETEs and the key rotation, which would take away what the other examples need (the pass
# above and tests/security/test_isolation.py cover them).
EXISTING = {
    ("GET", "/v1/documents/{document_id}"), ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/adapters/{name}"), ("POST", "/v1/adapters/{name}/rollback"),
    ("GET", "/v1/tenants/{tenant_id}"), ("PATCH", "/v1/tenants/{tenant_id}"),
    ("GET", "/v1/eval-sets/{set_id}"), ("GET", "/v1/evaluations/{evaluation_id}"),
    ("GET", "/v1/evaluations/{evaluation_id}/items"),
    ("GET", "/v1/files/{file_id}"), ("GET", "/v1/files/{file_id}/content"),
    ("GET", "/v1/vector_stores/{vector_store_id}"), ("POST", "/v1/vector_stores/{vector_store_id}"),
    ("POST", "/v1/vector_stores/{vector_store_id}/files"),
    ("GET", "/v1/vector_stores/{vector_store_id}/files"),
    ("GET", "/v1/vector_stores/{vector_store_id}/files/{file_id}"),
    ("POST", "/v1/vector_stores/{vector_store_id}/files/{file_id}"),
    ("POST", "/v1/vector_stores/{vector_store_id}/search"),
}


@schema.include(lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in EXISTING
                ).parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_on_existing_resources(case, env: Env):
    case.path_parameters = {name: env.ids[name] for name in case.path_parameters or {}}
    _call_and_validate(case, env)


def _call_and_validate(case, env: Env) -> None:
    method, path = case.operation.method.upper(), case.operation.path
    kwargs = case.as_transport_kwargs(base_url="http://testserver",
                                      headers=env.keys[AUTH[(method, path)]])
    response = env.client.request(**_httpx_kwargs(kwargs))
    case.validate_response(response, checks=CHECKS, headers=kwargs["headers"])


def _httpx_kwargs(kwargs: dict) -> dict:
    """Schemathesis serializes for `requests`; the TestClient is httpx. Bodies are encoded by
    `requests` itself, so the bytes sent are the ones schemathesis would send."""
    out = {k: v for k, v in kwargs.items() if k not in ("data", "files", "json", "cookies")}
    headers = dict(out.pop("headers", None) or {})
    if any(kwargs.get(k) is not None for k in ("data", "files", "json")):
        prepared = requests.PreparedRequest()
        prepared.prepare_headers({})
        prepared.prepare_body(kwargs.get("data"), kwargs.get("files"), kwargs.get("json"))
        body = prepared.body
        out["content"] = body.encode() if isinstance(body, str) else (body or b"")
        if "Content-Type" in prepared.headers:
            headers.setdefault("Content-Type", prepared.headers["Content-Type"])
    if kwargs.get("cookies"):
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in kwargs["cookies"].items())
    out["headers"] = headers
    return out
