"""The chunk store at scale: a Qdrant server through qdrant-client and llama-index's vector store.

Split of the work:
- llama-index's `QdrantVectorStore` writes and reads the points (`add`, `query`): chunks are
  stored as llama-index `TextNode`s (text and metadata in its payload layout, the document as the
  node's source), so llama-index retrievers and query engines can read the same collection.
- qdrant-client does what QdrantVectorStore cannot express: the collection's multitenancy schema
  (per-tenant HNSW `m=0, payload_m`, an `is_tenant` index), exact counts, and deletes scoped by
  tenant (its `delete(ref_doc_id)` is not: document ids are only unique within a tenant).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient, models

from core.settings import QdrantSettings
from ingest.vector_store import (
    CHUNK_INDEX_KEY,
    DOC_VERSION_KEY,
    DOCUMENT_KEY,
    METADATA_KEY,
    SOURCE_KEY,
    TENANT_KEY,
    TOKENS_KEY,
    VERSION_KEY,
    Chunk,
    DeletesByFilter,
    Hit,
    VectorStoreError,
    check_chunks,
    doc_version,
    require_tenant,
)

log = logging.getLogger("ragtune.vector_store")


class ServerChunkStore(DeletesByFilter):
    def __init__(self, client: QdrantClient, settings: QdrantSettings) -> None:
        self._client = client
        self._settings = settings
        self._collection = settings.collection
        self._dim: int | None = None
        self._store: QdrantVectorStore | None = None
        self._closed = False
        if client.collection_exists(self._collection):
            self._open_existing()

    @classmethod
    def connect(cls, settings: QdrantSettings) -> ServerChunkStore:
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        client = QdrantClient(url=settings.url, api_key=api_key, timeout=int(settings.timeout_s))
        return cls(client, settings)

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_collection(self, dim: int) -> None:
        s = self._settings
        if not self._client.collection_exists(self._collection):
            try:
                self._client.create_collection(
                    self._collection,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                    # m=0: no global graph (every query filters on a tenant); links per tenant.
                    hnsw_config=models.HnswConfigDiff(
                        m=0,
                        payload_m=s.payload_m,
                        ef_construct=s.ef_construct,
                        full_scan_threshold=s.full_scan_threshold_kb,
                    ),
                )
                log.info("created Qdrant collection %s (%d-d, cosine)", self._collection, dim)
            except Exception:
                # Another replica may have created it between the check and the create.
                if not self._client.collection_exists(self._collection):
                    raise
        self._open_existing()
        if self._dim != dim:
            raise VectorStoreError(
                f"Qdrant collection {self._collection} holds {self._dim}-d vectors, "
                f"the embedding model makes {dim}-d: re-index into a new collection"
            )
        # Idempotent on the server; ignored (with a warning) by qdrant-client's local mode.
        self._client.create_payload_index(
            self._collection,
            TENANT_KEY,
            models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
        )
        for key in (DOCUMENT_KEY, DOC_VERSION_KEY):
            self._client.create_payload_index(
                self._collection, key, models.PayloadSchemaType.KEYWORD
            )

    def _open_existing(self) -> None:
        params = self._client.get_collection(self._collection).config.params
        vectors = params.vectors
        if isinstance(vectors, dict):  # named vectors: llama-index's own layout
            vectors = next(iter(vectors.values()))
        self._dim = vectors.size
        # index_doc_id=False: our own indexes (above) cover document_id.
        self._store = QdrantVectorStore(self._collection, client=self._client, index_doc_id=False)

    def ping(self) -> None:
        if self._closed:
            raise VectorStoreError("the vector store client is closed")
        self._client.get_collections()

    def close(self) -> None:
        self._closed = True
        self._client.close()

    # -- writes ------------------------------------------------------------------------------

    def upsert(self, chunks: Sequence[Chunk]) -> None:
        if not chunks:
            return
        store = self._require_store()
        check_chunks(chunks, self._dim)
        store.add([_node(c) for c in chunks])

    @staticmethod
    def _match(key: str, value: str):
        return _match(key, value)

    def _delete(self, *must: models.FieldCondition) -> None:
        if self._store is None:
            return
        self._client.delete(
            self._collection,
            points_selector=models.FilterSelector(filter=models.Filter(must=list(must))),
            wait=True,
        )

    # -- reads -------------------------------------------------------------------------------

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
        require_tenant(tenant_id)
        store = self._store
        if store is None or top_k <= 0:
            return []
        if len(vector) != self._dim:
            raise ValueError(f"query vector has {len(vector)} dimensions, expected {self._dim}")
        must_not = None
        if exclude:
            excluded = sorted({doc_version(d, v) for d, v in exclude})
            must_not = [
                models.FieldCondition(key=DOC_VERSION_KEY, match=models.MatchAny(any=excluded))
            ]
        s = self._settings
        result = store.query(
            VectorStoreQuery(query_embedding=[float(x) for x in vector], similarity_top_k=top_k),
            qdrant_filters=models.Filter(must=[_match(TENANT_KEY, tenant_id)], must_not=must_not),
            search_params=models.SearchParams(
                hnsw_ef=max(s.hnsw_ef, top_k),
                acorn=models.AcornSearchParams(enable=True) if s.acorn else None,
            ),
        )
        hits = []
        # QdrantVectorStore.query has no score threshold; results come best first, so cutting
        # them here gives the same top_k as the server's score_threshold would.
        for node, score in zip(result.nodes, result.similarities or [], strict=True):
            if min_score is not None and score < min_score:
                break
            meta = node.metadata
            hits.append(
                Hit(
                    chunk_id=node.node_id,
                    document_id=node.ref_doc_id or "",
                    version=int(meta[VERSION_KEY]),
                    chunk_index=int(meta[CHUNK_INDEX_KEY]),
                    score=float(score),
                    source=meta.get(SOURCE_KEY, ""),
                    text=node.get_content(),
                    metadata=meta.get(METADATA_KEY) or {},
                    tokens=meta.get(TOKENS_KEY),
                )
            )
        return hits

    def count(
        self, tenant_id: str, document_id: str | None = None, version: int | None = None
    ) -> int:
        require_tenant(tenant_id)
        if self._store is None:
            return 0
        must = [_match(TENANT_KEY, tenant_id)]
        if document_id is not None and version is not None:
            must.append(_match(DOC_VERSION_KEY, doc_version(document_id, version)))
        elif document_id is not None:
            must.append(_match(DOCUMENT_KEY, document_id))
        elif version is not None:
            raise ValueError("count by version needs the document_id")
        return self._client.count(
            self._collection, count_filter=models.Filter(must=must), exact=True
        ).count

    def _require_store(self) -> QdrantVectorStore:
        if self._store is None:
            raise VectorStoreError(
                f"Qdrant collection {self._collection} does not exist: call ensure_collection"
            )
        return self._store


def _node(chunk: Chunk) -> TextNode:
    return TextNode(
        id_=chunk.id,
        text=chunk.text,
        embedding=[float(x) for x in chunk.vector],
        metadata={
            TENANT_KEY: chunk.tenant_id,
            VERSION_KEY: chunk.version,
            DOC_VERSION_KEY: doc_version(chunk.document_id, chunk.version),
            CHUNK_INDEX_KEY: chunk.chunk_index,
            SOURCE_KEY: chunk.source,
            METADATA_KEY: dict(chunk.metadata),
            TOKENS_KEY: chunk.tokens,
        },
        # llama-index writes the source's id as payload `document_id` (and doc_id, ref_doc_id).
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=chunk.document_id)},
    )


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))
