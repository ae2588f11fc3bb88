"""The knowledge base's vector store: chunks of every tenant's documents in ONE Qdrant collection.

Qdrant's multitenancy advice: one collection, a `tenant_id` keyword payload index marked
`is_tenant` (points of a tenant are stored together), and HNSW links built per tenant
(`m=0`, `payload_m=16`) instead of one global graph that no query uses. Every search filters on
the tenant; a tenant never gets another tenant's chunk, whatever it passes.

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
from dataclasses import dataclass, field
from typing import Protocol

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
    ) -> list[Hit]:
        """The tenant's `top_k` nearest chunks (cosine, best first), at least `min_score`, none of
        the (document_id, version) pairs in `exclude`. `text`: the query's words, for stores
        that also match terms (sparse vectors); a store that does not ignores it."""
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


def require_tenant(tenant_id: str) -> None:
    # An empty tenant must never reach a filter: it is a bug upstream, not "no filter".
    if not isinstance(tenant_id, str) or not tenant_id:
        raise ValueError("tenant_id must be a non-empty string")


def check_chunks(chunks: Sequence[Chunk], dim: int) -> None:
    for c in chunks:
        require_tenant(c.tenant_id)
        if len(c.vector) != dim:
            raise ValueError(f"chunk {c.id}: vector has {len(c.vector)} dimensions, expected {dim}")
