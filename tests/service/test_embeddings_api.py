"""POST /v1/embeddings in process, with the real embedding model and store: OpenAI's shape, the
vector ingestion stored for the same text (found by it in the store at cosine > 0.999), base64
as float32, the tenant's limits, and each bad input with its code. The official `openai` client
against the real server is in tests/integration/test_openai_client.py."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.helpers.api import indexed
from tests.helpers.app import assert_error, new_tenant

TEXT = "The harbour office door code is QX-7731. The office opens at dawn."


def test_a_vector_equals_the_one_ingestion_stored_for_the_same_text(client, tenant):
    tid, headers = tenant
    indexed(client, headers, "harbour.txt", TEXT)
    r = client.post("/v1/embeddings", headers=headers, json={"input": TEXT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    (item,) = body["data"]
    assert (item["object"], item["index"]) == ("embedding", 0) and len(item["embedding"]) == 384
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 5
    store = client.app.state.ragtune.store
    (hit,) = store.search(tid, item["embedding"], 1)
    assert hit.text.strip() == TEXT and hit.score > 0.999


def test_a_list_in_order_and_base64_as_float32(client, tenant):
    _, headers = tenant
    texts = ["first text", "a second, different text", "third"]
    floats = client.post("/v1/embeddings", headers=headers, json={"input": texts}).json()
    packed = client.post("/v1/embeddings", headers=headers,
                         json={"input": texts, "encoding_format": "base64",
                               "model": "sentence-transformers/all-MiniLM-L6-v2"}).json()
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]
    for f, b in zip(floats["data"], packed["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert np.allclose(decoded, f["embedding"], atol=1e-6)
    a, b = (np.asarray(d["embedding"]) for d in floats["data"][:2])
    assert float(a @ b) < 0.99  # different texts, different vectors


def test_the_tenants_limits_apply(client):
    _, headers = new_tenant(client, {"requests_per_minute": 1})
    assert client.post("/v1/embeddings", headers=headers, json={"input": "x"}).status_code == 200
    assert_error(client.post("/v1/embeddings", headers=headers, json={"input": "x"}), 429,
                 "rate_limit_exceeded")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"input": ""}, 400, "invalid_input"),
        ({"input": []}, 400, "invalid_input"),
        ({"input": ["ok", "  "]}, 400, "invalid_input"),
        ({"input": [101, 2023]}, 400, "unsupported_input"),
        ({"input": "word " * 400}, 400, "input_too_long"),
        ({"input": ["x"] * 2049}, 400, "too_many_inputs"),
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "model_not_found"),
        ({"input": "x", "dimensions": 256}, 400, "dimensions_not_supported"),
        ({"input": "x", "encoding_format": "int8"}, 400, None),
        ({}, 400, None),
    ],
)
def test_bad_input_has_its_code(client, tenant, body, status, code):
    _, headers = tenant
    r = client.post("/v1/embeddings", headers=headers, json=body)
    assert r.status_code == status, r.text
    if code:
        assert_error(r, status, code)
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 401
