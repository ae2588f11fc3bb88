"""The official openai client against the running service, backed by the real vLLM."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.integration
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    key = server.new_tenant("oa-tenant")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def test_plain_completion_stops_at_im_end(client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert raw.headers["x-route"] == "prompt"
    resp = raw.parse()
    text = resp.choices[0].message.content
    assert "Paris" in text
    assert "<|im_end|>" not in text and "<|im_start|>" not in text
    assert resp.choices[0].finish_reason == "stop"  # stopped at <|im_end|>, not the length cap
    assert resp.model_extra["route"]["path"] == "prompt"
    assert resp.model_extra["citations"] == []
    assert resp.usage.completion_tokens > 0


def test_streaming(client):
    stream = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].model_extra["route"]["path"] == "prompt"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [BASE]


def test_errors_raise_the_openai_exceptions(server, client):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="rt-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert exc.value.code == "model_not_found"


def test_context_length_exceeded(client):
    long_prompt = "tell me about the sea " * 500  # ~2,500 tokens > max_model_len 2048
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": long_prompt}], max_tokens=8
        )
    assert exc.value.code == "context_length_exceeded"


def test_engine_admin_endpoints_only_on_loopback(server):
    # The runtime LoRA endpoints are reachable from this machine only: vLLM binds 127.0.0.1.
    host = server.engine_url.split("//")[1].split(":")[0]
    assert host == "127.0.0.1"
    cmd = open(f"/proc/{server.engine_pid()}/cmdline", "rb").read().split(b"\0")
    assert cmd[cmd.index(b"--host") + 1] == b"127.0.0.1"
    assert httpx.get(f"{server.engine_url}/health").status_code == 200


def test_embeddings_are_the_vectors_ingestion_makes(client):
    """The official client's embeddings.create against the served embedding model: each vector
    is the one the ingestion pipeline computes for that text (the same model, here in-process)."""
    from core.settings import EmbeddingSettings
    from ingest.embedding import shared_embedder

    texts = ["The harbour office door code is QX-7731.", "Orders leave the warehouse at noon."]
    resp = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=texts)
    assert [d.index for d in resp.data] == [0, 1] and resp.usage.prompt_tokens > 0
    local = shared_embedder(EmbeddingSettings()).texts(texts)
    for d, v in zip(resp.data, local, strict=True):
        a, b = np.asarray(d.embedding), np.asarray(v)
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999
    # (the SDK asked for base64 above on its own, and decoded it; asked for explicitly, the
    # string comes through as it is)
    packed = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2",
                                      input=texts[0], encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(packed.data[0].embedding), dtype="<f4")
    assert np.allclose(decoded, resp.data[0].embedding, atol=1e-6)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input="")
