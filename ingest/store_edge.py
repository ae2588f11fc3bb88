"""The embedded chunk store: Qdrant Edge (qdrant-edge-py), Qdrant's engine inside this process.

Facts this is built on (qdrant-edge-py 0.9.0; its stubs and measurements in bench/retrieval.py):
- One `EdgeShard` per folder; the folder is locked to one process (a second open fails with
  "Can't init WAL: WouldBlock"), so the serving process owns it. That second open loads the
  segments before it meets the lock, and the load breaks the holder's store (its next flush
  fails: "Tracker journal ... is shorter than expected"), so `held_by_another` probes the lock
  (an flock on the `wal` folder) first and a held folder is never opened.
- Updates go to a write-ahead log first: points written survive a killed process without a
  flush. `flush()` writes the segments and lets the WAL be truncated; we flush after each write.
- Edge optimizes nothing in the background. `optimize()` runs the merge, indexing and vacuum
  optimizers inline until none has work, and holds the GIL meanwhile (the event loop of the
  serving process stalls), so it runs rarely: once `optimize_after_points` points were written
  or deleted since the last run (across restarts: `points_count - indexed_vectors_count`).
  New points are searchable at once in the appendable segment, which is scanned exactly.
- Filtered search plans per segment: a tenant whose vectors are smaller than
  `full_scan_threshold_kb` is scored exactly through the `tenant_id` index (recall 1.0, no short
  results); a bigger tenant uses the per-tenant HNSW links (`m=0`, `payload_m`).
- Hybrid search (ingest/vector_store.py): each point holds the dense vector (unnamed) and a BM25
  sparse vector `text-bm25` with Qdrant's `idf` modifier, computed here from the chunk's text.
  A hybrid search is one `query_batch` of three: the dense top-1 (the routing signal), the term
  list alone (each hit's BM25 score), and the fusion (RRF) of a dense and a term prefetch, both
  filtered like the dense search, returned with the dense vectors (each hit's cosine).
- A shard made before hybrid search has no sparse vector. Opening it upgrades it in place: Edge
  can add a named vector to a shard (`create_sparse_vector`), and the points get theirs from
  the `text` of their payload (`update_vectors`, in batches). The backfill picks the points
  that lack the vector, so a crash halfway is finished on the next open.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import qdrant_edge as qe

from core.settings import QdrantSettings
from ingest.sparse import RRF_K, SPARSE_VECTOR, document_terms, query_terms
from ingest.vector_store import (
    DOC_VERSION_KEY,
    DOCUMENT_KEY,
    TENANT_KEY,
    TEXT_KEY,
    Chunk,
    DeletesByFilter,
    Hits,
    StoreFull,
    VectorStoreError,
    check_chunks,
    chunk_payload,
    doc_version,
    fuse,
    hit_from_payload,
    require_tenant,
)

log = logging.getLogger("ragtune.vector_store")

# Written by EdgeShard.create: its presence means "a shard is here".
_CONFIG_FILE = "edge_config.json"
_BACKFILL_BATCH = 512


class EdgeChunkStore(DeletesByFilter):
    def __init__(self, path: Path, settings: QdrantSettings) -> None:
        self.path = path
        self._settings = settings
        self._lock = threading.RLock()  # writes, optimize and close; reads need none
        self._shard: qe.EdgeShard | None = None
        self._dim: int | None = None
        self._closed = False
        self._unoptimized = 0
        if (path / _CONFIG_FILE).is_file():
            if held_by_another(path):
                raise VectorStoreError(f"the vector store at {path} is open in another store "
                                       "(its WAL is locked: a running ragtune serve?)")
            self._dim = _stored_dim(path)
            sparse = _stored_sparse(path)
            config = self._config(self._dim, sparse=sparse) if self._dim else None
            # A changed tuning (hnsw, thresholds) is written over the stored config on load.
            self._shard = qe.EdgeShard.load(str(path), config)
            self._add_term_vectors(sparse)
            info = self._shard.info()
            self._unoptimized = max(0, info.points_count - info.indexed_vectors_count)
            log.info(
                "opened Qdrant Edge store at %s: %d points, %d not yet optimized",
                path,
                info.points_count,
                self._unoptimized,
            )
            self._optimize_if_due()

    # -- lifecycle ---------------------------------------------------------------------------

    def _add_term_vectors(self, declared: bool) -> None:
        """Upgrade a shard from before hybrid search: declare the sparse vector, then give it
        to every point that lacks one, from the text in its payload."""
        shard = self._shard
        if not declared:
            shard.update(qe.UpdateOperation.create_sparse_vector(SPARSE_VECTOR, qe.Modifier.Idf))
            shard.flush()
            log.warning("Qdrant Edge store at %s had no term vectors: adding them", self.path)
        lacking = qe.Filter(must_not=[qe.HasVectorCondition(SPARSE_VECTOR)])
        started, done, offset = time.monotonic(), 0, None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(
                    offset=offset, limit=_BACKFILL_BATCH, filter=lacking, with_payload=[TEXT_KEY]
                )
            )
            vectors = []
            for r in records:
                terms = document_terms((r.payload or {}).get(TEXT_KEY) or "")
                if terms[0]:  # text of stop words only: nothing to match, no vector
                    vectors.append(qe.PointVectors(r.id, {SPARSE_VECTOR: _sparse(terms)}))
            if vectors:
                shard.update(qe.UpdateOperation.update_vectors(vectors))
                done += len(vectors)
            if offset is None:
                break
        if done:
            shard.flush()
            log.warning(
                "Qdrant Edge store at %s: added term vectors to %d points in %.1fs",
                self.path,
                done,
                time.monotonic() - started,
            )

    def ensure_collection(self, dim: int) -> None:
        with self._lock:
            self._check_open()
            if self._shard is None:
                self.path.mkdir(parents=True, exist_ok=True)
                self._shard = qe.EdgeShard.create(str(self.path), self._config(dim))
                self._dim = dim
                log.info("created Qdrant Edge store at %s (%d-d, cosine)", self.path, dim)
            elif self._dim is not None and self._dim != dim:
                raise VectorStoreError(
                    f"the vector store at {self.path} holds {self._dim}-d vectors, "
                    f"the embedding model makes {dim}-d: re-index into a new folder"
                )
            self._dim = dim
            # Idempotent: creating an index that exists is a no-op.
            self._shard.update(
                qe.UpdateOperation.create_field_index(
                    TENANT_KEY, qe.KeywordIndexParams(is_tenant=True)
                )
            )
            for key in (DOCUMENT_KEY, DOC_VERSION_KEY):
                self._shard.update(
                    qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword)
                )
            self._shard.flush()

    @contextmanager
    def exclusive(self) -> Iterator[qe.EdgeShard | None]:
        """The shard (None before `ensure_collection`), flushed, with every other write of this
        store (upserts, deletes, optimize, close) held back until the block ends: what is read
        in it is one point in time, a backup's (service/backup.py). Searches go on meanwhile."""
        with self._lock:
            self._check_open()
            if self._shard is not None:
                self._shard.flush()
            yield self._shard

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._shard is not None:
                shard, self._shard = self._shard, None
                shard.flush()
                shard.close()

    def ping(self) -> None:
        self._check_open()
        shard = self._shard
        if shard is not None:
            shard.info()

    def optimize(self) -> bool:
        """Run Edge's optimizers now (blocking, holds the GIL); True if anything changed."""
        with self._lock:
            shard = self._require_shard()
            started = time.monotonic()
            changed = shard.optimize()
            shard.flush()
            self._unoptimized = 0
            info = shard.info()
            log.info(
                "optimized Qdrant Edge store in %.2fs: %d points in %d segments",
                time.monotonic() - started,
                info.points_count,
                info.segments_count,
            )
            return changed

    # -- writes ------------------------------------------------------------------------------

    def upsert(self, chunks: Sequence[Chunk]) -> None:
        if not chunks:
            return
        with self._lock:
            shard = self._require_shard()
            self._check_space()
            check_chunks(chunks, self._dim or len(chunks[0].vector))
            points = [
                qe.Point(
                    c.id,
                    {"": _floats(c.vector), SPARSE_VECTOR: _sparse(document_terms(c.text))},
                    chunk_payload(c),
                )
                for c in chunks
            ]
            shard.update(qe.UpdateOperation.upsert_points(points))
            self._written(len(points))

    @staticmethod
    def _match(key: str, value: str):
        return _match(key, value)

    def _delete(self, *must: qe.FieldCondition) -> None:
        with self._lock:
            shard = self._shard
            self._check_open()
            if shard is None:
                return
            flt = qe.Filter(must=list(must))
            n = shard.count(qe.CountRequest(exact=True, filter=flt))
            if n:
                self._check_space()
                shard.update(qe.UpdateOperation.delete_points_by_filter(flt))
                self._written(n)

    def _check_space(self) -> None:
        """Refuse a write while the disk is nearly full: Edge writes its WAL and segments
        through memory maps, and a write to a map on a full filesystem is a SIGBUS that kills
        the whole process (bench/soak.py's store-disk-full fault found it), not an error."""
        stat = os.statvfs(self.path)
        free_mb = stat.f_bavail * stat.f_frsize / (1 << 20)
        if free_mb < self._settings.min_free_mb:
            raise StoreFull(
                f"the vector store's disk at {self.path} has {free_mb:.0f} MB free, less than "
                f"the {self._settings.min_free_mb} MB it keeps (RAGTUNE_QDRANT__MIN_FREE_MB)"
            )

    def _written(self, n: int) -> None:
        self._unoptimized += n
        if not self._optimize_if_due():
            self._shard.flush()

    def _optimize_if_due(self) -> bool:
        if self._unoptimized < self._settings.optimize_after_points:
            return False
        self.optimize()
        return True

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
    ) -> Hits:
        require_tenant(tenant_id)
        shard = self._shard
        self._check_open()
        if shard is None or top_k <= 0 or (documents is not None and not documents):
            return Hits()
        if self._dim is not None and len(vector) != self._dim:
            raise ValueError(f"query vector has {len(vector)} dimensions, expected {self._dim}")
        s = self._settings
        must_not = None
        if exclude:
            excluded = sorted({doc_version(d, v) for d, v in exclude})
            must_not = [qe.FieldCondition(key=DOC_VERSION_KEY, match=qe.MatchAny(excluded))]
        must = [_match(TENANT_KEY, tenant_id)]
        if documents is not None:
            must.append(qe.FieldCondition(key=DOCUMENT_KEY, match=qe.MatchAny(sorted(documents))))
        flt = qe.Filter(must=must, must_not=must_not)
        vector = _floats(vector)
        terms = query_terms(text) if s.retrieval == "hybrid" else ([], [])
        if not terms[0]:
            points = shard.query(
                qe.QueryRequest(
                    query=qe.Query.Nearest(vector),
                    limit=top_k,
                    filter=flt,
                    with_payload=True,
                    score_threshold=min_score,
                    params=self._params(top_k),
                )
            )
            return Hits([hit_from_payload(p.id, p.score, p.payload or {}) for p in points])
        return self._hybrid(shard, flt, vector, terms, top_k, min_score)

    def _hybrid(self, shard, flt, vector, terms, top_k: int, min_score: float | None) -> Hits:
        s = self._settings
        depth = max(top_k, s.hybrid_candidates)
        dense = qe.Prefetch(
            limit=depth,
            query=qe.Query.Nearest(vector),
            filter=flt,
            params=self._params(depth),
        )
        sparse = qe.Query.Nearest(_sparse(terms), using=SPARSE_VECTOR)
        top, term_list, fused = shard.query_batch(
            qe.QueryBatchRequest(
                [
                    # The dense search alone, for top_score: the routing signal stays dense.
                    qe.QueryRequest(
                        limit=1,
                        query=dense.query,
                        filter=flt,
                        params=self._params(top_k),
                    ),
                    # The term candidates alone, for each hit's BM25 score.
                    qe.QueryRequest(limit=depth, query=sparse, filter=flt, with_payload=False),
                    qe.QueryRequest(
                        limit=top_k,
                        query=qe.Fusion.Rrf(k=RRF_K),
                        prefetches=[dense, qe.Prefetch(limit=depth, query=sparse, filter=flt)],
                        filter=flt,
                        with_payload=True,
                        with_vector=[""],
                    ),
                ]
            )
        )
        return fuse(
            vector,
            [(hit_from_payload(p.id, 0.0, p.payload or {}), p.vector, p.score) for p in fused],
            {str(p.id): p.score for p in term_list},
            top[0].score if top else None,
            min_score,
        )

    def count(
        self, tenant_id: str, document_id: str | None = None, version: int | None = None
    ) -> int:
        require_tenant(tenant_id)
        shard = self._shard
        self._check_open()
        if shard is None:
            return 0
        must = [_match(TENANT_KEY, tenant_id)]
        if document_id is not None and version is not None:
            must.append(_match(DOC_VERSION_KEY, doc_version(document_id, version)))
        elif document_id is not None:
            must.append(_match(DOCUMENT_KEY, document_id))
        elif version is not None:
            raise ValueError("count by version needs the document_id")
        return shard.count(qe.CountRequest(exact=True, filter=qe.Filter(must=must)))

    # -- helpers -----------------------------------------------------------------------------

    def _params(self, top_k: int) -> qe.SearchParams:
        """A dense search's parameters: `hnsw_ef` at least the results asked for, ACORN when
        set (the twin of the server store's `_params`)."""
        s = self._settings
        acorn = qe.AcornSearchParams(enable=True) if s.acorn else None
        return qe.SearchParams(hnsw_ef=max(s.hnsw_ef, top_k), acorn=acorn)

    def _config(self, dim: int, *, sparse: bool = True) -> qe.EdgeConfig:
        s = self._settings
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            # IDF: Qdrant weighs each term by its rarity among the stored points at search time.
            sparse_vectors=(
                {SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
                if sparse
                else None
            ),
            # m=0: no global graph (every query is filtered by tenant); payload_m: per-tenant links.
            hnsw_config=qe.HnswIndexConfig(
                m=0,
                ef_construct=s.ef_construct,
                full_scan_threshold=s.full_scan_threshold_kb,
                payload_m=s.payload_m,
            ),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=s.indexing_threshold_kb),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise VectorStoreError(f"the vector store at {self.path} is closed")

    def _require_shard(self) -> qe.EdgeShard:
        self._check_open()
        if self._shard is None:
            raise VectorStoreError("the vector store has no collection yet: call ensure_collection")
        return self._shard


def held_by_another(path: Path) -> bool:
    """Whether a store (of this process or another) has the folder open: Edge holds an
    exclusive flock on its `wal` folder. Probed without loading anything (module doc)."""
    try:
        fd = os.open(path / "wal", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the probe's own lock
    return False


def _match(key: str, value: str) -> qe.FieldCondition:
    return qe.FieldCondition(key=key, match=qe.MatchValue(value))


def _floats(vector) -> list[float]:
    return vector.tolist() if hasattr(vector, "tolist") else [float(x) for x in vector]


def _sparse(terms: tuple[list[int], list[float]]) -> qe.SparseVector:
    return qe.SparseVector(*terms)


def _stored_sparse(path: Path) -> bool:
    """Whether the shard declares its term vector (shards from before hybrid search do not)."""
    try:
        config = json.loads((path / _CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return True  # unreadable: let load's own check speak
    return SPARSE_VECTOR in (config.get("sparse_vectors") or {})


def _stored_dim(path: Path) -> int | None:
    # Edge has no getter for a loaded shard's config; its JSON file has the size. Best effort:
    # unknown just means the first upsert's own dimension check is the one that speaks.
    try:
        return int(json.loads((path / _CONFIG_FILE).read_text())["vectors"][""]["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
