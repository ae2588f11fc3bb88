"""The knowledge base's vector store: chunks of every tenant's documents in ONE Qdrant collection.

Qdrant's multitenancy advice: one collection, a `tenant_id` keyword payload index marked
`is_tenant` (points of a tenant are stored together), and HNSW links built per tenant
(`m=0`, `payload_m=16`) instead of one global graph that no query uses. Every search filters on
the tenant; a tenant never gets another tenant's chunk, whatever it passes.

Retrieval is dense (cosine over the embedding model's vectors) or hybrid (`QdrantSettings.
retrieval`): beside each dense vector the stores keep a BM25 sparse vector of the chunk's text
(ingest/sparse.py), and a hybrid search fuses a dense and a sparse candidate list with Qdrant's
own query API (prefetch + reciprocal rank fusion), both lists under the same tenant filter and
the same `exclude`. Whatever the mode, `Hit.score` is the chunk's dense cosine to the query and
`Hits.top_score` the best dense cosine over the tenant's visible chunks (what a dense search's
first hit scores): the routing signal and the floor stay calibrated in one unit. Hybrid changes
which chunks come back and their order (the fused rank), and marks the ones the term side found
(`Hit.terms`, their BM25 score).

Two implementations behind `ChunkStore` (ingest/stores.py opens the one settings name):
- `EdgeChunkStore` (ingest/store_edge.py): Qdrant Edge, Qdrant's engine in this process, on local
  disk. The embedded default (`url` unset).
- `ServerChunkStore` (ingest/store_qdrant.py): a Qdrant server through qdrant-client and
  llama-index's `QdrantVectorStore` (`url` set). qdrant-client's local mode stands in for it
  in tests.

The methods are synchronous; the async service calls them from a worker thread.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

# uuid5 namespace of chunk ids: fixed forever, or re-running a job would stop overwriting.
CHUNK_ID_NAMESPACE = uuid.UUID("6f1d4c0e-3a52-5b8e-9c7d-2f0a8e4b7c31")

# Payload keys, shared by both implementations (llama-index also writes `document_id`).
TENANT_KEY = "tenant_id"
DOCUMENT_KEY = "document_id"
DOC_VERSION_KEY = "doc_version"  # "<document_id>@<version>": what `exclude` and deletes match on
VERSION_KEY = "version"
CHUNK_INDEX_KEY = "chunk_index"
SOURCE_KEY = "source"
TEXT_KEY = "text"
METADATA_KEY = "metadata"  # the upload's user metadata, nested so it never shadows our keys
TOKENS_KEY = "tokens"  # the chunk's length in the embedding model's tokens (the context budget's)


@dataclass(frozen=True)
class Chunk:
    id: str  # chunk_id(...): re-running a job overwrites the same points
    tenant_id: str
    document_id: str
    version: int
    chunk_index: int
    text: str
    source: str  # file name
    vector: Sequence[float]
    metadata: dict = field(default_factory=dict)  # user metadata from the upload (JSON-able)
    tokens: int | None = None  # counted at ingestion, so serving need not count again


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    document_id: str
    version: int
    chunk_index: int
    score: float
    source: str
    text: str
    metadata: dict
    tokens: int | None = None  # None: indexed before counts were stored; count when needed
    # Hybrid search only: the chunk's BM25 score when the term side (the sparse candidates)
    # found it, else None. Dense search leaves it None.
    terms: float | None = None


class Hits(list):
    """`search`'s answer: the hits (best first: by cosine, or by fused rank in hybrid search)
    and `top_score`, the best dense cosine of the tenant's visible chunks to the query. In
    dense search that is the first hit's score; in hybrid search the dense top may rank below
    `top_k` after fusion and still sets `top_score`, so the routing signal is the dense one."""

    def __init__(self, hits=(), top_score: float | None = None) -> None:
        super().__init__(hits)
        if top_score is None and self:
            top_score = max(h.score for h in self)
        self.top_score = top_score


class ChunkStore(Protocol):
    def ensure_collection(self, dim: int) -> None: ...

    def upsert(self, chunks: Sequence[Chunk]) -> None: ...

    def search(
        self,
        tenant_id: str,
        vector: Sequence[float],
        top_k: int,
        *,
        min_score: float | None = None,
        exclude: Collection[tuple[str, int]] = (),
        text: str | None = None,
        documents: Collection[str] | None = None,
    ) -> list[Hit]:
        """The tenant's `top_k` best chunks, none of the (document_id, version) pairs in
        `exclude` and, when `documents` is given, only chunks of those documents (a vector
        store's files; empty: nothing), each scored by its cosine to `vector` and at least
        `min_score`. Dense mode
        (or no `text`): the nearest, best first. Hybrid mode: the dense and the term (BM25 of
        `text`) candidates fused by rank, in fused order (see the module docstring)."""
        ...

    def delete_version(self, tenant_id: str, document_id: str, version: int) -> None: ...

    def delete_document(self, tenant_id: str, document_id: str) -> None: ...

    def delete_tenant(self, tenant_id: str) -> None:
        """Every chunk of the tenant (the tenant was deleted)."""
        ...

    def count(
        self, tenant_id: str, document_id: str | None = None, version: int | None = None
    ) -> int: ...

    def ping(self) -> None:
        """Raises if the store is unusable (for /readyz)."""
        ...

    def close(self) -> None: ...


class DeletesByFilter:
    """The deletions both stores share: each is one filtered delete, built from the store's own
    `_match(key, value)` condition and run by its `_delete(*conditions)`."""

    def delete_version(self, tenant_id: str, document_id: str, version: int) -> None:
        require_tenant(tenant_id)
        self._delete(
            self._match(TENANT_KEY, tenant_id),
            self._match(DOC_VERSION_KEY, doc_version(document_id, version)),
        )

    def delete_document(self, tenant_id: str, document_id: str) -> None:
        require_tenant(tenant_id)
        self._delete(self._match(TENANT_KEY, tenant_id), self._match(DOCUMENT_KEY, document_id))

    def delete_tenant(self, tenant_id: str) -> None:
        require_tenant(tenant_id)
        self._delete(self._match(TENANT_KEY, tenant_id))


class VectorStoreError(RuntimeError):
    """The store cannot do what was asked (not created yet, wrong dimension, closed)."""


class StoreFull(VectorStoreError):
    """The store's disk has too little free space for a write: an outage that passes (space is
    freed), not a fault of the document being written."""


def chunk_id(tenant_id: str, document_id: str, version: int, chunk_index: int) -> str:
    """Deterministic point id: the same chunk of the same version always lands on the same point."""
    name = f"{tenant_id}\x1f{document_id}\x1f{version}\x1f{chunk_index}"
    return str(uuid.uuid5(CHUNK_ID_NAMESPACE, name))


def doc_version(document_id: str, version: int) -> str:
    return f"{document_id}@{version}"


def chunk_payload(chunk: Chunk) -> dict:
    """A chunk's flat payload (Edge stores it as is; the server maps it onto a llama-index node)."""
    return {
        TENANT_KEY: chunk.tenant_id,
        DOCUMENT_KEY: chunk.document_id,
        VERSION_KEY: chunk.version,
        DOC_VERSION_KEY: doc_version(chunk.document_id, chunk.version),
        CHUNK_INDEX_KEY: chunk.chunk_index,
        SOURCE_KEY: chunk.source,
        TEXT_KEY: chunk.text,
        METADATA_KEY: dict(chunk.metadata),
        TOKENS_KEY: chunk.tokens,
    }


def hit_from_payload(point_id: object, score: float, payload: dict) -> Hit:
    return Hit(
        chunk_id=str(point_id),
        document_id=payload[DOCUMENT_KEY],
        version=int(payload[VERSION_KEY]),
        chunk_index=int(payload[CHUNK_INDEX_KEY]),
        score=float(score),
        source=payload.get(SOURCE_KEY, ""),
        text=payload.get(TEXT_KEY, ""),
        metadata=payload.get(METADATA_KEY) or {},
        tokens=payload.get(TOKENS_KEY),
    )


def fuse(
    vector: Sequence[float],
    fused: Sequence[tuple[Hit, Sequence[float], float]],
    terms: dict[str, float],
    dense_top: float | None,
    min_score: float | None,
) -> Hits:
    """A hybrid search's answer from what Qdrant returned: `fused`, the fusion's top hits as
    (hit, its stored dense vector, its fused score); `terms`, the BM25 scores of the term
    candidates by chunk id; `dense_top`, the best cosine of the dense search alone. Each hit's
    score becomes its cosine to `vector`. Ties of fused rank (a dense-only first and a
    term-only first) go to the higher cosine."""
    if dense_top is not None and min_score is not None and dense_top < min_score:
        dense_top = None
    if not fused:
        return Hits([], dense_top)
    q = np.asarray(vector, dtype=np.float32)
    q /= np.linalg.norm(q) or 1.0
    stored = np.asarray([v for _, v, _ in fused], dtype=np.float32)
    cosines = stored @ q / np.maximum(np.linalg.norm(stored, axis=1), 1e-12)
    ranked = sorted(zip(fused, cosines.tolist(), strict=True), key=lambda x: (-x[0][2], -x[1]))
    return Hits(
        [
            replace(hit, score=cos, terms=terms.get(hit.chunk_id))
            for (hit, _, _), cos in ranked
            if min_score is None or cos >= min_score
        ],
        dense_top,
    )


def require_tenant(tenant_id: str) -> None:
    # An empty tenant must never reach a filter: it is a bug upstream, not "no filter".
    if not isinstance(tenant_id, str) or not tenant_id:
        raise ValueError("tenant_id must be a non-empty string")


def check_chunks(chunks: Sequence[Chunk], dim: int) -> None:
    for c in chunks:
        require_tenant(c.tenant_id)
        if len(c.vector) != dim:
            raise ValueError(f"chunk {c.id}: vector has {len(c.vector)} dimensions, expected {dim}")
