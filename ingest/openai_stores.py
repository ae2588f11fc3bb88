"""OpenAI's vector stores over the knowledge base: a vector store is a named set of a tenant's
documents (files), never a second copy of them.

Attaching a file adds a row (`VectorStoreFile`), nothing else: the document was indexed by the
ingestion worker when it was uploaded, and the store file's `status` is that indexing's, as
OpenAI reports it: `in_progress` while its newest version is queued or indexing, `failed` (with
`last_error`) when that failed, else `completed`. A store's search, and `file_search` in
/v1/responses, filter the tenant's chunks to the store's documents (`documents=` of
`ChunkStore.search`), and by the attributes given on attaching (OpenAI's comparison and compound
filters). Chat and `auto` keep searching all of the tenant's documents.

Removing a file from a store, or deleting a store, leaves the documents; deleting a file (the
document) takes it out of every store (the rows go by cascade).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, select

from core.errors import InvalidRequest, NotFound
from core.registry.db import Registry
from core.registry.models import Document, DocumentVersion, VectorStore, VectorStoreFile, utcnow
from ingest.documents import DocumentService
from ingest.retrieval import Retriever
from ingest.versions import FAILED, LIVE, PENDING_STATES

MAX_STORES_PER_SCOPE = 16
MAX_KEYS = 16  # OpenAI's bounds on metadata and attributes
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")


@dataclass(frozen=True)
class Scope:
    """What a search may read: these documents, with each one's attributes in its store."""

    documents: frozenset[str]
    attributes: dict[str, dict] = field(default_factory=dict)


def _aware(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; every one stored is UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _unix(dt: datetime) -> int:
    return int(_aware(dt).timestamp())


def check_metadata(metadata, param: str = "metadata") -> dict:
    """OpenAI's metadata: up to 16 pairs, keys up to 64 characters, string values up to 512."""
    return _check_pairs(metadata, param, (str,), "invalid_metadata")


def check_attributes(attributes, param: str = "attributes") -> dict:
    """OpenAI's attributes: like metadata, but values may also be numbers and booleans."""
    return _check_pairs(attributes, param, (str, int, float, bool), "invalid_attributes")


def _check_pairs(pairs, param: str, types: tuple, code: str) -> dict:
    if pairs is None:
        return {}
    if not isinstance(pairs, dict) or len(pairs) > MAX_KEYS:
        raise InvalidRequest(f"'{param}' must be an object of at most {MAX_KEYS} pairs",
                             code=code, param=param)
    for key, value in pairs.items():
        if not key or len(key) > MAX_KEY_CHARS:
            raise InvalidRequest(f"'{param}' keys are 1-{MAX_KEY_CHARS} characters",
                                 code=code, param=param)
        finite = not isinstance(value, float) or math.isfinite(value)
        ok = isinstance(value, types) and finite
        if not ok or (isinstance(value, str) and len(value) > MAX_VALUE_CHARS):
            kinds = "strings" if types == (str,) else "strings, numbers or booleans"
            raise InvalidRequest(
                f"'{param}.{key[:MAX_KEY_CHARS]}' must be one of {kinds} (strings up to "
                f"{MAX_VALUE_CHARS} characters)", code=code, param=param)
    return dict(pairs)


def matches(flt: dict, attributes: dict, param: str = "filters") -> bool:
    """OpenAI's attribute filter: a comparison `{"type": "eq"|..., "key", "value"}` or a
    compound `{"type": "and"|"or", "filters": [...]}`. A key the file lacks fails every
    comparison but `ne` and `nin`."""
    if not isinstance(flt, dict) or "type" not in flt:
        raise InvalidRequest(f"'{param}' must be a comparison or compound filter",
                             code="invalid_filter", param=param)
    kind = flt["type"]
    if kind in ("and", "or"):
        subs = flt.get("filters")
        if not isinstance(subs, list) or not subs:
            raise InvalidRequest(f"'{param}.filters' must be a non-empty list",
                                 code="invalid_filter", param=param)
        results = [matches(f, attributes, f"{param}.filters.{i}") for i, f in enumerate(subs)]
        return all(results) if kind == "and" else any(results)
    if kind not in COMPARISONS or not isinstance(flt.get("key"), str) or "value" not in flt:
        raise InvalidRequest(
            f"'{param}': a comparison needs 'key', 'value' and a 'type' of "
            f"{', '.join(COMPARISONS)} (or a compound filter: and, or)",
            code="invalid_filter", param=param)
    value = flt["value"]
    if kind in ("in", "nin") and not isinstance(value, list):
        raise InvalidRequest(f"'{param}.value' must be a list for '{kind}'",
                             code="invalid_filter", param=param)
    if flt["key"] not in attributes:
        return kind in ("ne", "nin")
    have = attributes[flt["key"]]
    if kind in ("eq", "ne"):
        return (have == value) == (kind == "eq")
    if kind in ("in", "nin"):
        return (have in value) == (kind == "in")
    numbers = (int, float)
    if not (isinstance(have, numbers) and isinstance(value, numbers)
            and not isinstance(have, bool) and not isinstance(value, bool)):
        return False  # an order between a string and a number, or booleans: none holds
    return {"gt": have > value, "gte": have >= value, "lt": have < value,
            "lte": have <= value}[kind]


def file_state(latest: DocumentVersion | None) -> tuple[str, dict | None]:
    """A store file's status and last_error, from its document's newest version."""
    if latest is None or latest.state in PENDING_STATES:
        return "in_progress", None
    if latest.state == FAILED:
        return "failed", {"code": "server_error",
                          "message": latest.error or "indexing the file failed"}
    return "completed", None


class VectorStores:
    def __init__(self, registry: Registry, documents: DocumentService) -> None:
        self.registry = registry
        self.documents = documents

    # ---- stores -------------------------------------------------------------------------
    def create(
        self, tenant_id: str, name: str | None, metadata: dict | None,
        file_ids: list[str], expires_after_days: int | None,
    ) -> dict:
        """Sync. The store with its first files in one transaction: an unknown file is a 404
        and no store is left."""
        metadata = check_metadata(metadata)
        vs_id = "vs_" + uuid.uuid4().hex
        with self.registry.session(lock=True) as s:
            s.add(VectorStore(id=vs_id, tenant_id=tenant_id, name=name or "", meta=metadata,
                              expires_after_days=expires_after_days))
            s.flush()
            for i, file_id in enumerate(dict.fromkeys(file_ids)):
                self._require_document(s, tenant_id, file_id, f"file_ids.{i}")
                s.add(VectorStoreFile(vector_store_id=vs_id, tenant_id=tenant_id,
                                      document_id=file_id, attributes={}))
        return self.get(tenant_id, vs_id)

    def list(self, tenant_id: str, limit: int, after: str | None, descending: bool) -> dict:
        with self.registry.session() as s:
            q = select(VectorStore).where(VectorStore.tenant_id == tenant_id)
            if after:
                q = q.where(VectorStore.id < after if descending else VectorStore.id > after)
            order = VectorStore.id.desc() if descending else VectorStore.id
            rows = s.scalars(q.order_by(order).limit(limit + 1)).all()
            data = [self._store_view(s, vs) for vs in rows[:limit]]
        return page(data, len(rows) > limit)

    def get(self, tenant_id: str, vs_id: str) -> dict:
        with self.registry.session() as s:
            return self._store_view(s, self._store(s, tenant_id, vs_id))

    def update(self, tenant_id: str, vs_id: str, changes: dict) -> dict:
        """`changes`: any of name, metadata, expires_after_days (None: never expires)."""
        if "metadata" in changes:
            changes["metadata"] = check_metadata(changes["metadata"])
        with self.registry.session(lock=True) as s:
            vs = self._store(s, tenant_id, vs_id)
            if "name" in changes:
                vs.name = changes["name"] or ""
            if "metadata" in changes:
                vs.meta = changes["metadata"]
            if "expires_after_days" in changes:
                vs.expires_after_days = changes["expires_after_days"]
                vs.last_active_at = utcnow()
        return self.get(tenant_id, vs_id)

    def delete(self, tenant_id: str, vs_id: str) -> dict:
        """The store and its list of files; the files (documents) stay."""
        with self.registry.session(lock=True) as s:
            s.delete(self._store(s, tenant_id, vs_id))
        return {"id": vs_id, "object": "vector_store.deleted", "deleted": True}

    # ---- a store's files ----------------------------------------------------------------
    def attach(self, tenant_id: str, vs_id: str, file_id: str, attributes) -> dict:
        """Sync. Idempotent: attaching a file again sets its attributes."""
        attributes = check_attributes(attributes)
        with self.registry.session(lock=True) as s:
            self._store(s, tenant_id, vs_id)
            self._require_document(s, tenant_id, file_id, "file_id")
            row = s.get(VectorStoreFile, (vs_id, file_id))
            if row is None:
                s.add(VectorStoreFile(vector_store_id=vs_id, tenant_id=tenant_id,
                                      document_id=file_id, attributes=attributes))
            else:
                row.attributes = attributes
        return self.file(tenant_id, vs_id, file_id)

    def set_attributes(self, tenant_id: str, vs_id: str, file_id: str, attributes) -> dict:
        attributes = check_attributes(attributes)
        with self.registry.session(lock=True) as s:
            self._member(s, tenant_id, vs_id, file_id).attributes = attributes
        return self.file(tenant_id, vs_id, file_id)

    def files(
        self, tenant_id: str, vs_id: str, limit: int, after: str | None, descending: bool,
        status: str | None = None,
    ) -> dict:
        with self.registry.session() as s:
            self._store(s, tenant_id, vs_id)
            rows = self._members(s, tenant_id, vs_id)
            views = [_file_view(vs_id, row, latest) for row, latest in rows]
        views.sort(key=lambda v: v["id"], reverse=descending)
        if after:
            views = [v for v in views if (v["id"] < after if descending else v["id"] > after)]
        if status:
            views = [v for v in views if v["status"] == status]
        return page(views[:limit], len(views) > limit)

    def file(self, tenant_id: str, vs_id: str, file_id: str) -> dict:
        with self.registry.session() as s:
            row = self._member(s, tenant_id, vs_id, file_id)
            return _file_view(vs_id, row, _newest(s, tenant_id, [file_id]).get(file_id))

    def detach(self, tenant_id: str, vs_id: str, file_id: str) -> dict:
        """The file leaves the store; the document stays in the knowledge base."""
        with self.registry.session(lock=True) as s:
            s.delete(self._member(s, tenant_id, vs_id, file_id))
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    # ---- readers --------------------------------------------------------------------------
    def scope(self, tenant_id: str, vs_ids: list[str], filters: dict | None = None,
              param: str = "vector_store_ids") -> Scope:
        """Sync. The documents a search over these stores may read, their attributes passing
        `filters`; another tenant's or an unknown store is a 404, an expired one a 400. The
        stores count as used now (their expiry moves on)."""
        if not vs_ids:
            raise InvalidRequest("name at least one vector store", code="invalid_request",
                                 param=param)
        if len(vs_ids) > MAX_STORES_PER_SCOPE:
            raise InvalidRequest(f"at most {MAX_STORES_PER_SCOPE} vector stores per search",
                                 code="too_many_vector_stores", param=param)
        attributes: dict[str, dict] = {}
        with self.registry.session(lock=True) as s:
            for vs_id in dict.fromkeys(vs_ids):
                vs = self._store(s, tenant_id, vs_id, param)
                if _expired(vs):
                    raise InvalidRequest(
                        f"vector store {vs_id} expired: it was unused for "
                        f"{vs.expires_after_days} days", code="vector_store_expired", param=param)
                vs.last_active_at = utcnow()
                for row, _ in self._members(s, tenant_id, vs_id, with_versions=False):
                    attributes.setdefault(row.document_id, row.attributes or {})
        if filters is not None:
            attributes = {d: a for d, a in attributes.items() if matches(filters, a)}
        return Scope(frozenset(attributes), attributes)

    def search(
        self, retriever: Retriever, tenant_id: str, vs_id: str, queries: list[str],
        max_results: int, filters: dict | None, score_threshold: float | None,
    ) -> dict:
        """Sync. Each query searched over the store's documents; the best `max_results`
        chunks over all of them, each once, best first by cosine."""
        scope = self.scope(tenant_id, [vs_id], filters, param="vector_store_id")
        hidden = self.documents.hidden_versions(tenant_id)
        best: dict[str, tuple] = {}
        for q in queries:
            found = retriever.retrieve(tenant_id, q, max_results, hidden,
                                       documents=scope.documents, min_score=score_threshold)
            for h in found.hits:
                if h.chunk_id not in best or h.score > best[h.chunk_id].score:
                    best[h.chunk_id] = h
        hits = sorted(best.values(), key=lambda h: h.score, reverse=True)[:max_results]
        return {
            "object": "vector_store.search_results.page",
            "search_query": queries,
            "data": [
                {"file_id": h.document_id, "filename": h.source, "score": round(h.score, 4),
                 "attributes": scope.attributes.get(h.document_id, {}),
                 "content": [{"type": "text", "text": h.text}]}
                for h in hits
            ],
            "has_more": False,
            "next_page": None,
        }

    # ---- rows -----------------------------------------------------------------------------
    def _store(self, s, tenant_id: str, vs_id: str, param: str = "vector_store_id"
               ) -> VectorStore:
        vs = s.get(VectorStore, vs_id) if isinstance(vs_id, str) else None
        if vs is None or vs.tenant_id != tenant_id:
            # Another tenant's store is exactly as unknown as one nobody made.
            raise NotFound(f"No vector store found with id '{str(vs_id)[:80]}'.",
                           code="vector_store_not_found", param=param)
        return vs

    def _require_document(self, s, tenant_id: str, file_id: str, param: str) -> None:
        doc = s.get(Document, (tenant_id, file_id)) if isinstance(file_id, str) else None
        if doc is None or doc.state != LIVE:
            raise NotFound(f"No such File object: {str(file_id)[:140]}", code="file_not_found",
                           param=param)

    def _member(self, s, tenant_id: str, vs_id: str, file_id: str) -> VectorStoreFile:
        self._store(s, tenant_id, vs_id)
        row = s.get(VectorStoreFile, (vs_id, file_id))
        doc = s.get(Document, (tenant_id, file_id)) if row is not None else None
        if doc is None or doc.state != LIVE:
            raise NotFound(f"No file '{file_id[:140]}' in vector store '{vs_id[:80]}'.",
                           code="file_not_found", param="file_id")
        return row

    def _members(self, s, tenant_id: str, vs_id: str, with_versions: bool = True) -> list:
        """The store's rows whose document is live, each with that document's newest version
        (None without `with_versions`)."""
        rows = s.scalars(
            select(VectorStoreFile)
            .join(Document, and_(Document.tenant_id == VectorStoreFile.tenant_id,
                                 Document.id == VectorStoreFile.document_id))
            .where(VectorStoreFile.vector_store_id == vs_id, Document.state == LIVE)
        ).all()
        newest = _newest(s, tenant_id, [r.document_id for r in rows]) if with_versions else {}
        return [(r, newest.get(r.document_id)) for r in rows]

    def _store_view(self, s, vs: VectorStore) -> dict:
        counts = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0}
        usage = 0
        for _, latest in self._members(s, vs.tenant_id, vs.id):
            counts[file_state(latest)[0]] += 1
            usage += latest.size_bytes if latest is not None else 0
        expires_at = None
        if vs.expires_after_days is not None:
            expires_at = _unix(vs.last_active_at) + vs.expires_after_days * 86400
        status = ("expired" if _expired(vs) else
                  "in_progress" if counts["in_progress"] else "completed")
        return {
            "id": vs.id,
            "object": "vector_store",
            "created_at": _unix(vs.created_at),
            "name": vs.name,
            "usage_bytes": usage,
            "file_counts": {**counts, "total": sum(counts.values())},
            "status": status,
            "last_active_at": _unix(vs.last_active_at),
            "metadata": vs.meta or {},
            "expires_after": ({"anchor": "last_active_at", "days": vs.expires_after_days}
                              if vs.expires_after_days is not None else None),
            "expires_at": expires_at,
        }


def _newest(s, tenant_id: str, document_ids: list[str]) -> dict[str, DocumentVersion]:
    """Each document's newest version, in one read."""
    if not document_ids:
        return {}
    top = (
        select(DocumentVersion.document_id, func.max(DocumentVersion.version).label("v"))
        .where(DocumentVersion.tenant_id == tenant_id,
               DocumentVersion.document_id.in_(document_ids))
        .group_by(DocumentVersion.document_id)
        .subquery()
    )
    rows = s.scalars(
        select(DocumentVersion).join(top, and_(DocumentVersion.document_id == top.c.document_id,
                                               DocumentVersion.version == top.c.v))
        .where(DocumentVersion.tenant_id == tenant_id)
    ).all()
    return {v.document_id: v for v in rows}


def _file_view(vs_id: str, row: VectorStoreFile, latest: DocumentVersion | None) -> dict:
    status, last_error = file_state(latest)
    return {
        "id": row.document_id,
        "object": "vector_store.file",
        "created_at": _unix(row.created_at),
        "vector_store_id": vs_id,
        "status": status,
        "last_error": last_error,
        "usage_bytes": latest.size_bytes if latest is not None else 0,
        "attributes": row.attributes or {},
        # The knowledge base's own chunking (settings), not one chosen per file.
        "chunking_strategy": {"type": "other"},
    }


def _expired(vs: VectorStore) -> bool:
    if vs.expires_after_days is None:
        return False
    deadline = _aware(vs.last_active_at) + timedelta(days=vs.expires_after_days)
    return time.time() > deadline.timestamp()


def page(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
