"""The knowledge base's service: uploads, the views of jobs and documents, deletion.

An upload is checked and parsed before anything is stored (ingest/uploads.py: unreadable or
empty is a 422), then its files (ingest/stored_files.py) and its registry rows (document
versions + one job, ingest/versions.py) are written; if the rows fail, the files go, so nothing
is half-stored. Indexing happens in the worker (ingest/worker.py).
"""

from __future__ import annotations

import errno
import logging
import shutil
import uuid
from pathlib import Path

from core.errors import InsufficientStorage, NotFound, RegistryUnavailable
from core.registry.db import Registry
from core.registry.models import Document, DocumentVersion
from core.settings import DocumentLimits
from ingest.stored_files import store_upload
from ingest.uploads import Upload, prepare_upload
from ingest.vector_store import ChunkStore, VectorStoreError
from ingest.versions import QUEUED, DocumentVersions

log = logging.getLogger("ragtune.documents")

# A DELETE's second step fails on these when the store or the registry is down for a moment;
# the document stays hidden and the worker's sweep finishes it.
DELETE_OUTAGES = (VectorStoreError, RegistryUnavailable, OSError)


class DocumentService:
    def __init__(self, registry: Registry, uploads_dir: Path, limits: DocumentLimits) -> None:
        self.registry = registry
        self.uploads_dir = uploads_dir
        self.limits = limits
        self.versions = DocumentVersions(registry)

    # ---- upload -------------------------------------------------------------------------
    def upload(
        self,
        tenant_id: str,
        files: list[Upload],
        document_id: str | None = None,
        metadata: dict | None = None,
        purpose: str | None = None,
    ) -> dict:
        """`purpose`: set on new documents (the /v1/files upload's)."""
        metadata = metadata or {}
        prepared = prepare_upload(files, document_id, metadata, self.limits)
        job_id = str(uuid.uuid4())
        job_dir = self.uploads_dir / tenant_id / job_id
        try:
            stored = store_upload(job_dir, prepared)
            versions = self.versions.register(
                tenant_id, job_id, prepared, stored, metadata, purpose
            )
        except OSError as exc:
            shutil.rmtree(job_dir, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage("no space left to store the upload") from exc
            raise
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        return {
            "job_id": job_id,
            "documents": [
                {"document_id": p.document_id, "version": version, "status": QUEUED}
                for p, version in zip(prepared, versions, strict=True)
            ],
        }

    # ---- views --------------------------------------------------------------------------
    def get_job(self, tenant_id: str, job_id: str) -> dict:
        found = self.versions.job(tenant_id, job_id)
        if found is None:
            raise NotFound(f"job '{job_id[:64]}' not found", code="job_not_found")
        job, versions = found
        return {
            "job_id": job.id,
            "state": job.state,
            "error": job.error,
            "chunks": job.chunks,
            "attempts": job.attempts,
            "created_at": job.created_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "documents": [
                {"document_id": v.document_id, "version": v.version, "state": v.state,
                 "chunks": v.chunks, "error": v.error}
                for v in versions
            ],
        }

    def list_documents(self, tenant_id: str, limit: int = 100, after: str | None = None) -> dict:
        docs, has_more = self.versions.live_documents(tenant_id, limit, after)
        data = [_document_view(doc, versions) for doc, versions in docs]
        return {"object": "list", "data": data, "has_more": has_more}

    def get_document(self, tenant_id: str, document_id: str) -> dict:
        found = self.versions.live_document(tenant_id, document_id)
        if found is None:
            raise NotFound(f"document '{document_id[:140]}' not found",
                           code="document_not_found")
        doc, versions = found
        view = _document_view(doc, versions)
        view["versions"] = [
            {"version": v.version, "state": v.state, "job_id": v.job_id, "chunks": v.chunks,
             "size_bytes": v.size_bytes, "sha256": v.sha256, "error": v.error,
             "created_at": v.created_at.isoformat()}
            for v in versions
        ]
        return view

    def job_counts(self) -> dict[str, int]:
        return self.versions.job_counts()

    # ---- readers' view ------------------------------------------------------------------
    def hidden_versions(self, tenant_id: str) -> list[tuple[str, int]]:
        """(document_id, version) pairs whose points readers must not see right now."""
        return self.versions.hidden(tenant_id)

    def readable_in(self, s, tenant_id: str) -> list[tuple[str, int]] | None:
        """Inside the caller's transaction `s`: see `DocumentVersions.readable_in`."""
        return self.versions.readable_in(s, tenant_id)

    def count_current(self, tenant_id: str) -> int:
        return self.versions.count_current(tenant_id)

    def current_section_files(self, tenant_id: str) -> list[str]:
        return self.versions.current_section_files(tenant_id)

    # ---- deletion -----------------------------------------------------------------------
    def delete(self, store: ChunkStore, tenant_id: str, document_id: str) -> bool:
        """Sync. The DELETE: the document is hidden from readers at once (404 when there is no
        such document), then its points, rows and files go. False when that second step
        failed: the document stays hidden and the worker's sweep finishes the deletion, so the
        DELETE has still succeeded for the client."""
        versions = self.mark_deleting(tenant_id, document_id)
        try:
            self.finish_delete(store, tenant_id, document_id, versions)
        except DELETE_OUTAGES as exc:
            log.warning("deleting %s/%s: %s; the worker's sweep will finish it",
                        tenant_id, document_id, exc)
            return False
        except Exception:  # noqa: BLE001 - hidden already; a bug shows here, not as a 500
            log.exception("deleting %s/%s failed; the worker's sweep will retry it",
                          tenant_id, document_id)
            return False
        return True

    def mark_deleting(self, tenant_id: str, document_id: str) -> list[int]:
        """Hide the document from readers at once; its points and rows go next (`finish_delete`).
        Returns its versions at this moment: only their points are deleted, so a version
        uploaded after this (the document revived) keeps its points."""
        versions = self.versions.mark_deleting(tenant_id, document_id)
        if versions is None:
            raise NotFound(f"document '{document_id[:140]}' not found",
                           code="document_not_found")
        return versions

    def finish_delete(
        self, store: ChunkStore, tenant_id: str, document_id: str, versions: list[int]
    ) -> None:
        self.versions.finish_delete(store, tenant_id, document_id, versions)

    def purge(self, tenant_id: str, document_id: str) -> None:
        self.versions.purge(tenant_id, document_id)


def _document_view(doc: Document, versions: list[DocumentVersion]) -> dict:
    """`versions` newest first."""
    latest = versions[0] if versions else None
    current = next((v for v in versions if v.version == doc.current_version), None)
    shown = current or latest
    return {
        "document_id": doc.id,
        "current_version": doc.current_version,
        "latest_version": latest.version if latest else None,
        "status": latest.state if latest else None,
        "source": shown.source if shown else None,
        "chunks": current.chunks if current else None,
        "metadata": shown.meta if shown else {},
        "updated_at": doc.updated_at.isoformat(),
    }
