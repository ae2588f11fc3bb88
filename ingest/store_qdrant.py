"""The chunk store at scale: a Qdrant server through qdrant-client and llama-index's vector store.

Split of the work:
- llama-index's `QdrantVectorStore` writes and reads the points (`add`, `query`): chunks are
  stored as llama-index `TextNode`s (text and metadata in its payload layout, the document as the
  node's source), so llama-index retrievers and query engines can read the same collection.
- qdrant-client does what QdrantVectorStore cannot express: the collection's multitenancy schema
  (per-tenant HNSW `m=0, payload_m`, an `is_tenant` index), exact counts, and deletes scoped by
  tenant (its `delete(ref_doc_id)` is not: document ids are only unique within a tenant).
- Hybrid search: llama-index writes the BM25 term vector beside the dense one (its hybrid mode,
  with ingest/sparse.py's encoder as its `sparse_doc_fn`: the same vectors Edge stores, nothing
  from fastembed or a hub). Its hybrid *query* fuses client-side by relative score and returns
  fused scores, not cosines, so a hybrid search is qdrant-client's `query_batch_points` (one
  round trip) of three: the dense top-1 (the routing signal), the term list alone (each hit's
  BM25 score), and Qdrant's RRF over a dense and a term prefetch, both under the search's
  filter, with the dense vectors (each hit's cosine); llama-index turns the points back into
  nodes (`parse_to_query_result`).
- A collection made before hybrid search has no term vector. Opening it adds one
  (`create_vector_name`: recent servers, e.g. the 1.20 of docker-compose.yml, and qdrant-client's
  local mode) and backfills the points that lack it from their text, batch by batch (a crash
  halfway is finished by the next open; replicas opening at once write the same vectors). A
  server that cannot add a vector keeps working dense-only, with a warning, until the
  collection is rebuilt (re-upload into a new `collection`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

from llama_index.core.schema import BaseNode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery
from llama_index.core.vector_stores.utils import metadata_dict_to_node
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient, models

from core.settings import QdrantSettings
from ingest.sparse import RRF_K, SPARSE_VECTOR, document_terms, query_terms
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
    Hits,
    VectorStoreError,
    check_chunks,
    doc_version,
    fuse,
    require_tenant,
)

log = logging.getLogger("ragtune.vector_store")
_BACKFILL_BATCH = 256


class ServerChunkStore(DeletesByFilter):
    def __init__(self, client: QdrantClient, settings: QdrantSettings) -> None:
        self._client = client
        self._settings = settings
        self._collection = settings.collection
        self._dim: int | None = None
        self._store: QdrantVectorStore | None = None
        self._terms = False  # the collection has the term vector (hybrid search possible)
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
                    # IDF: Qdrant weighs each term by its rarity among the points at search time.
                    sparse_vectors_config={
                        SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
                    },
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
        self._terms = SPARSE_VECTOR in (params.sparse_vectors or {}) or self._add_term_vector()
        # index_doc_id=False: our own indexes (above) cover document_id. The dense vector is
        # the unnamed one (llama-index detects that layout); the term vector is ours.
        self._store = QdrantVectorStore(
            self._collection,
            client=self._client,
            index_doc_id=False,
            enable_hybrid=self._terms,
            sparse_vector_name=SPARSE_VECTOR,
            sparse_doc_fn=_document_terms,
            sparse_query_fn=_query_terms,
        )
        if self._terms:
            self._backfill_terms()

    def _add_term_vector(self) -> bool:
        try:
            self._client.create_vector_name(
                self._collection,
                SPARSE_VECTOR,
                models.SparseVectorNameConfig(
                    sparse=models.SparseVectorConfig(modifier=models.Modifier.IDF)
                ),
            )
        except Exception as exc:  # noqa: BLE001 - an older server: dense-only, said loudly
            log.warning(
                "Qdrant collection %s has no term vectors and the server cannot add them "
                "(%s): searching dense only until it is rebuilt",
                self._collection,
                exc,
            )
            return False
        log.warning("Qdrant collection %s had no term vectors: adding them", self._collection)
        return True

    def _backfill_terms(self) -> None:
        """Give the term vector to the points that lack one (a collection from before hybrid
        search, or an upgrade a crash cut short), from their text."""
        lacking = models.Filter(must_not=[models.HasVectorCondition(has_vector=SPARSE_VECTOR)])
        done, offset = 0, None
        while True:
            records, offset = self._client.scroll(
                self._collection,
                scroll_filter=lacking,
                limit=_BACKFILL_BATCH,
                offset=offset,
                with_payload=True,
            )
            if records:
                self._client.update_vectors(
                    self._collection,
                    [
                        models.PointVectors(
                            id=r.id,
                            vector={SPARSE_VECTOR: _sparse(document_terms(_text(r.payload)))},
                        )
                        for r in records
                    ],
                    wait=True,
                )
                done += len(records)
            if offset is None:
                break
        if done:
            log.warning(
                "Qdrant collection %s: added term vectors to %d points", self._collection, done
            )

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
        documents: Collection[str] | None = None,
    ) -> list[Hit]:
        require_tenant(tenant_id)
        store = self._store
        if store is None or top_k <= 0 or (documents is not None and not documents):
            return Hits()
        if len(vector) != self._dim:
            raise ValueError(f"query vector has {len(vector)} dimensions, expected {self._dim}")
        must_not = None
        if exclude:
            excluded = sorted({doc_version(d, v) for d, v in exclude})
            must_not = [
                models.FieldCondition(key=DOC_VERSION_KEY, match=models.MatchAny(any=excluded))
            ]
        s = self._settings
        must = [_match(TENANT_KEY, tenant_id)]
        if documents is not None:
            only = models.MatchAny(any=sorted(documents))
            must.append(models.FieldCondition(key=DOCUMENT_KEY, match=only))
        flt = models.Filter(must=must, must_not=must_not)
        vector = [float(x) for x in vector]
        terms = query_terms(text) if self._terms and s.retrieval == "hybrid" else ([], [])
        if terms[0]:
            return self._hybrid(store, flt, vector, _sparse(terms), top_k, min_score)
        result = store.query(
            VectorStoreQuery(query_embedding=vector, similarity_top_k=top_k),
            qdrant_filters=flt,
            search_params=self._params(top_k),
        )
        hits = []
        # QdrantVectorStore.query has no score threshold; results come best first, so cutting
        # them here gives the same top_k as the server's score_threshold would.
        for node, score in zip(result.nodes, result.similarities or [], strict=True):
            if min_score is not None and score < min_score:
                break
            hits.append(_hit(node, score))
        return Hits(hits)

    def _hybrid(self, store, flt, vector, terms, top_k: int, min_score: float | None) -> Hits:
        depth = max(top_k, self._settings.hybrid_candidates)
        dense = models.Prefetch(query=vector, filter=flt, limit=depth, params=self._params(depth))
        top, term_list, fused = self._client.query_batch_points(
            self._collection,
            [
                # The dense search alone, for top_score: the routing signal stays dense.
                models.QueryRequest(
                    query=vector,
                    filter=flt,
                    limit=1,
                    params=self._params(top_k),
                    with_payload=False,
                ),
                # The term candidates alone, for each hit's BM25 score.
                models.QueryRequest(
                    query=terms, using=SPARSE_VECTOR, filter=flt, limit=depth, with_payload=False
                ),
                models.QueryRequest(
                    prefetch=[
                        dense,
                        models.Prefetch(query=terms, using=SPARSE_VECTOR, filter=flt, limit=depth),
                    ],
                    query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
                    filter=flt,
                    limit=top_k,
                    with_payload=True,
                    with_vector=[""],
                ),
            ],
        )
        nodes = store.parse_to_query_result(fused.points).nodes
        return fuse(
            vector,
            [
                (_hit(node, 0.0), node.embedding, p.score)
                for node, p in zip(nodes, fused.points, strict=True)
            ],
            {str(p.id): p.score for p in term_list.points},
            top.points[0].score if top.points else None,
            min_score,
        )

    def _params(self, top_k: int) -> models.SearchParams:
        s = self._settings
        return models.SearchParams(
            hnsw_ef=max(s.hnsw_ef, top_k),
            acorn=models.AcornSearchParams(enable=True) if s.acorn else None,
        )

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


def _hit(node: BaseNode, score: float) -> Hit:
    meta = node.metadata
    return Hit(
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


def _node(chunk: Chunk) -> TextNode:
    metadata = {
        TENANT_KEY: chunk.tenant_id,
        VERSION_KEY: chunk.version,
        DOC_VERSION_KEY: doc_version(chunk.document_id, chunk.version),
        CHUNK_INDEX_KEY: chunk.chunk_index,
        SOURCE_KEY: chunk.source,
        METADATA_KEY: dict(chunk.metadata),
        TOKENS_KEY: chunk.tokens,
    }
    return TextNode(
        id_=chunk.id,
        text=chunk.text,
        embedding=[float(x) for x in chunk.vector],
        metadata=metadata,
        # The text alone is what llama-index hands `sparse_doc_fn` (as it is what we embed).
        excluded_embed_metadata_keys=list(metadata),
        # llama-index writes the source's id as payload `document_id` (and doc_id, ref_doc_id).
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=chunk.document_id)},
    )


def _document_terms(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
    """llama-index's `sparse_doc_fn`: (indices per text, values per text)."""
    pairs = [document_terms(t) for t in texts]
    return [i for i, _ in pairs], [v for _, v in pairs]


def _query_terms(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
    pairs = [query_terms(t) for t in texts]
    return [i for i, _ in pairs], [v for _, v in pairs]


def _sparse(terms: tuple[list[int], list[float]]) -> models.SparseVector:
    return models.SparseVector(indices=terms[0], values=terms[1])


def _text(payload: dict | None) -> str:
    try:
        return metadata_dict_to_node(payload or {}).get_content()
    except (ValueError, KeyError, TypeError):
        return ""


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))
