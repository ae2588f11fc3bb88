"""POST /v1/embeddings: the served embedding model (the one ingestion and retrieval use, so a
vector from here equals the one stored for the same text), in OpenAI's shape, under the tenant's
key and limits."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
from fastapi import APIRouter

from core.errors import InvalidRequest, NotFound
from service.protocol.embeddings import EmbeddingList, EmbeddingRequest
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["embeddings"], route_class=JSONRoute)
MAX_INPUTS = 2048
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def model_name(state) -> str:
    path = state.settings.embedding.model_path
    return Path(path).name if path else DEFAULT_MODEL_NAME


def _texts(raw) -> list[str]:
    texts = [raw] if isinstance(raw, str) else list(raw)
    if not texts:
        raise InvalidRequest("'input' is empty", code="invalid_input", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("token arrays are not supported: send the text",
                             code="unsupported_input", param="input")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"at most {MAX_INPUTS} inputs per request",
                             code="too_many_inputs", param="input")
    for i, t in enumerate(texts):
        if not t.strip():
            raise InvalidRequest(f"input {i} is empty", code="invalid_input", param="input")
    return texts


@router.post("/embeddings", response_model=EmbeddingList)
async def embeddings(body: EmbeddingRequest, tenant: CurrentTenant, state: AppState) -> dict:
    name = model_name(state)
    if body.model not in (None, "", name):
        raise NotFound(f"the embedding model is {name!r}, not {body.model!r}",
                       code="model_not_found", param="model")
    texts = _texts(body.input)
    embedder = state.embedder
    if body.dimensions is not None and body.dimensions != embedder.dim:
        raise InvalidRequest(f"{name} embeds in {embedder.dim} dimensions only",
                             code="dimensions_not_supported", param="dimensions")
    limit = embedder.max_tokens
    counts = [embedder.count_tokens(t) for t in texts]
    for i, n in enumerate(counts):
        if n > limit:
            raise InvalidRequest(
                f"input {i} is {n} tokens; {name} reads at most {limit}",
                code="input_too_long", param="input")
    await state.chat.admit(tenant)
    vectors = await asyncio.to_thread(embedder.texts, texts)
    total = sum(counts)
    await state.chat.spend(tenant.id, tenant.policy, total)
    data = []
    for i, v in enumerate(vectors):
        if body.encoding_format == "base64":
            value = base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        else:
            value = [float(x) for x in v]
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": name,
            "usage": {"prompt_tokens": total, "total_tokens": total}}
