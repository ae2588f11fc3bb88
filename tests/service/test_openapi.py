"""/openapi.json documents what a client gets back, not only what it sends: every operation that
answers JSON names its success body (a route's `response_model=`, a model with its fields), and
the bodies the service answers validate against what is declared and hold no field it does not
name (response models let unnamed fields through rather than drop them, so nothing else would
notice a model falling behind its route)."""

from __future__ import annotations

import time

from jsonschema import Draft202012Validator

NOT_JSON = {("GET", "/metrics"), ("GET", "/v1/evaluations/{evaluation_id}/items"),  # text, JSONL
            ("GET", "/v1/files/{file_id}/content"),  # the file as uploaded
            ("POST", "/v1/admin/backup")}  # the backup file (a tar)


def _json_success(op: dict) -> tuple[str, dict] | None:
    """(status, schema) of the operation's 2xx JSON answer; None when it answers no body."""
    for status, response in op["responses"].items():
        if status.startswith("2") and status != "204":
            return status, response.get("content", {}).get("application/json", {}).get("schema")
    return None


def _resolve(schema: dict, components: dict) -> dict:
    while "$ref" in schema:
        schema = components[schema["$ref"].rpartition("/")[2]]
    return schema


def test_every_json_operation_declares_its_success_body(client):
    doc = client.get("/openapi.json").json()
    components = doc["components"]["schemas"]
    checked, undeclared = 0, []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if (method.upper(), path) in NOT_JSON or "204" in op["responses"]:
                continue
            success = _json_success(op)
            schema = (success or ("", None))[1] or {}
            # A route without response_model still gets `{"type": "object"}` from its `-> dict`
            # annotation (or `{}` when it returns a Response): only a model names the fields.
            if "$ref" not in schema or not _resolve(schema, components).get("properties"):
                undeclared.append(f"{method.upper()} {path}: {success}")
            checked += 1
    assert checked >= 15, doc["paths"].keys()
    assert not undeclared, "no response_model naming the success body:\n" + "\n".join(undeclared)


def test_readyz_declares_its_not_ready_body(client):
    op = client.get("/openapi.json").json()["paths"]["/readyz"]["get"]
    schema = op["responses"]["503"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/NotReady"}


def _undocumented(value, schema: dict, components: dict, where: str = "") -> list[str]:
    """Where `value` holds a field that its schema does not name."""
    schema = _resolve(schema, components)
    if "anyOf" in schema:
        if value is None:
            return []
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"]
        return _undocumented(value, branches[0], components, where) if len(branches) == 1 else []
    if isinstance(value, dict) and "properties" in schema:
        named = schema["properties"]
        out = [f"{where}.{k}" for k in value if k not in named]
        for k, v in value.items():
            if k in named:
                out += _undocumented(v, named[k], components, f"{where}.{k}")
        return out
    if isinstance(value, list) and "items" in schema:
        return [bad for i, v in enumerate(value)
                for bad in _undocumented(v, schema["items"], components, f"{where}[{i}]")]
    return []


class Document:
    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self.components = doc["components"]["schemas"]

    def check(self, method: str, path: str, response) -> None:
        """`response` is a status the operation declares, and its body matches that schema."""
        responses = self.doc["paths"][path][method.lower()]["responses"]
        status = str(response.status_code)
        assert status in responses, (method, path, status, response.text)
        schema = responses[status]["content"]["application/json"]["schema"]
        body = response.json()
        # The refs are "#/components/schemas/...": resolved against a root that holds them.
        Draft202012Validator({**schema, "components": self.doc["components"]}).validate(body)
        assert not _undocumented(body, schema, self.components), (method, path, body)


TRAINING_FILE = "\n".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}' for i in range(60))


def test_success_bodies_match_their_declared_schemas(client, admin, fake_engine):
    doc = Document(client.get("/openapi.json").json())
    created = client.post("/v1/tenants", json={"id": "acme", "policy": {"system_prompt": "hi"}},
                          headers=admin)
    doc.check("POST", "/v1/tenants", created)
    key = {"Authorization": f"Bearer {created.json()['api_key']}"}
    doc.check("GET", "/v1/me", client.get("/v1/me", headers=key))
    doc.check("GET", "/v1/tenants/{tenant_id}", client.get("/v1/tenants/acme", headers=admin))
    doc.check("PATCH", "/v1/tenants/{tenant_id}",
              client.patch("/v1/tenants/acme", json={"policy": {"top_k": 4}}, headers=admin))
    doc.check("POST", "/v1/tenants/{tenant_id}/keys",
              client.post("/v1/tenants/acme/keys", json={"revoke_existing": False},
                          headers=admin))
    doc.check("GET", "/healthz", client.get("/healthz"))
    doc.check("GET", "/readyz", client.get("/readyz"))
    chat = {"messages": [{"role": "user", "content": "hello"}]}
    doc.check("POST", "/v1/chat/completions",
              client.post("/v1/chat/completions", json=chat, headers=key))
    doc.check("GET", "/v1/models", client.get("/v1/models", headers=key))
    doc.check("POST", "/v1/policy/explain",
              client.post("/v1/policy/explain", json={"queries": ["hello"]}, headers=key))
    for body in ({}, {"sample_texts": ["zorp blik quux"], "training_file": TRAINING_FILE}):
        doc.check("POST", "/v1/advisor", client.post("/v1/advisor", json=body, headers=key))

    fake_engine.healthy = False  # the engine is shared by the whole session: put it back
    try:
        deadline = time.monotonic() + 10
        while (r := client.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        fake_engine.healthy = True
    assert r.status_code == 503, r.text
    doc.check("GET", "/readyz", r)


def test_the_openai_surfaces_bodies_match_their_declared_schemas(client, tenant):
    doc = Document(client.get("/openapi.json").json())
    _, key = tenant
    made = client.post("/v1/files", headers=key, data={"purpose": "assistants"},
                       files={"file": ("a.txt", b"The harbour office door code is QX-7731.")})
    doc.check("POST", "/v1/files", made)
    file_id = made.json()["id"]
    doc.check("GET", "/v1/files", client.get("/v1/files", headers=key))
    doc.check("GET", "/v1/files/{file_id}", client.get(f"/v1/files/{file_id}", headers=key))
    vs = client.post("/v1/vector_stores", headers=key,
                     json={"name": "kb", "metadata": {"team": "ops"},
                           "expires_after": {"anchor": "last_active_at", "days": 7}})
    doc.check("POST", "/v1/vector_stores", vs)
    vs_id = vs.json()["id"]
    at = f"/v1/vector_stores/{vs_id}"
    doc.check("POST", "/v1/vector_stores/{vector_store_id}/files",
              client.post(f"{at}/files", headers=key,
                          json={"file_id": file_id, "attributes": {"year": 2026}}))
    deadline = time.monotonic() + 60
    while client.get(f"{at}/files/{file_id}", headers=key).json()["status"] == "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    doc.check("GET", "/v1/vector_stores/{vector_store_id}/files/{file_id}",
              client.get(f"{at}/files/{file_id}", headers=key))
    doc.check("POST", "/v1/vector_stores/{vector_store_id}/files/{file_id}",
              client.post(f"{at}/files/{file_id}", headers=key, json={"attributes": {"a": "b"}}))
    doc.check("GET", "/v1/vector_stores/{vector_store_id}/files",
              client.get(f"{at}/files", headers=key))
    doc.check("GET", "/v1/vector_stores", client.get("/v1/vector_stores", headers=key))
    doc.check("GET", "/v1/vector_stores/{vector_store_id}", client.get(at, headers=key))
    doc.check("POST", "/v1/vector_stores/{vector_store_id}",
              client.post(at, headers=key, json={"name": "renamed"}))
    doc.check("POST", "/v1/vector_stores/{vector_store_id}/search",
              client.post(f"{at}/search", headers=key, json={"query": "door code"}))
    tools = [{"type": "file_search", "vector_store_ids": [vs_id]}]
    doc.check("POST", "/v1/responses",
              client.post("/v1/responses", headers=key,
                          json={"input": "What is the door code?", "tools": tools,
                                "include": ["file_search_call.results"]}))
    doc.check("POST", "/v1/embeddings", client.post("/v1/embeddings", headers=key,
                                                    json={"input": "x"}))
    doc.check("DELETE", "/v1/vector_stores/{vector_store_id}/files/{file_id}",
              client.delete(f"{at}/files/{file_id}", headers=key))
    doc.check("DELETE", "/v1/vector_stores/{vector_store_id}", client.delete(at, headers=key))
    doc.check("DELETE", "/v1/files/{file_id}", client.delete(f"/v1/files/{file_id}", headers=key))
