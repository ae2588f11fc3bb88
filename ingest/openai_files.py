"""OpenAI's Files API over the knowledge base: a file IS a document, not a second store.

`POST /v1/files` uploads one document under a new id (`file-` and 24 hex digits: every upload
is a new file, as OpenAI's are) through the documents' own upload, so the same worker indexes
it and `/v1/documents` lists it; every document, however uploaded, is a file whose id is its
document id (one uploaded through /v1/documents reports purpose `assistants`). Deleting a file
deletes the document: its chunks leave the index and it leaves every vector store.

A file's `status` (OpenAI's deprecated field, still read by some SDK helpers) follows its newest
version: `uploaded` while queued or indexing, `error` when it failed (`status_details` says
why), else `processed`.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from core.errors import InvalidRequest, NotFound
from core.registry.models import Document, DocumentVersion
from ingest.documents import DocumentService
from ingest.openai_stores import file_state, page
from ingest.stored_files import original_of
from ingest.uploads import Upload
from ingest.vector_store import ChunkStore

# What a file may be uploaded for: the knowledge base's uses. The other purposes (batch,
# fine-tune, vision, evals) name OpenAI features this service does not have.
PURPOSES = ("assistants", "user_data")
FILE_PREFIX = "file-"


def new_file_id() -> str:
    return FILE_PREFIX + uuid.uuid4().hex[:24]


# A store file's status (its document's indexing, ingest/openai_stores.py) as a file's.
FILE_STATUS = {"in_progress": "uploaded", "failed": "error", "completed": "processed"}


def file_status(latest: DocumentVersion | None) -> str:
    return FILE_STATUS[file_state(latest)[0]]


def file_view(doc: Document, versions: list[DocumentVersion]) -> dict:
    """OpenAI's file object for a document (`versions` newest first)."""
    latest = versions[0] if versions else None
    status = file_status(latest)
    return {
        "id": doc.id,
        "object": "file",
        "bytes": latest.size_bytes if latest else 0,
        "created_at": int(doc.created_at.timestamp()),
        "filename": latest.source if latest else doc.id,
        "purpose": doc.purpose or "assistants",
        "status": status,
        "status_details": latest.error if status == "error" else None,
        "expires_at": None,
    }


class FileService:
    def __init__(self, documents: DocumentService) -> None:
        self.documents = documents
        self.versions = documents.versions

    def create(self, tenant_id: str, upload: Upload, purpose: str) -> dict:
        """Sync. Checked and parsed like any upload (unreadable or empty: 422, unknown type:
        415, too large: 413), then stored and queued for indexing."""
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"purpose {str(purpose)[:40]!r} is not supported: files here feed the knowledge "
                f"base ({' or '.join(PURPOSES)})",
                code="unsupported_purpose", param="purpose",
            )
        file_id = new_file_id()
        self.documents.upload(tenant_id, [upload], file_id, purpose=purpose)
        return self.get(tenant_id, file_id)

    def list(
        self, tenant_id: str, limit: int, after: str | None, descending: bool,
        purpose: str | None = None,
    ) -> dict:
        """In id order (OpenAI lists by creation time; ids here carry no time)."""
        purposes = None
        if purpose is not None:
            # A document uploaded through /v1/documents reports purpose "assistants".
            purposes = (purpose, None) if purpose == "assistants" else (purpose,)
        docs, has_more = self.versions.live_documents(
            tenant_id, limit, after, descending, purposes
        )
        return page([file_view(doc, versions) for doc, versions in docs], has_more)

    def get(self, tenant_id: str, file_id: str) -> dict:
        doc, versions = self._live(tenant_id, file_id)
        return file_view(doc, versions)

    def content(self, tenant_id: str, file_id: str) -> tuple[Path, str]:
        """The bytes of the newest version as uploaded, and its file name."""
        _, versions = self._live(tenant_id, file_id)
        latest = versions[0]
        return original_of(latest.stored_path), latest.source

    def delete(self, store: ChunkStore, tenant_id: str, file_id: str) -> bool:
        """Sync. The document's deletion (see `DocumentService.delete`), under the file's
        name for a missing one."""
        self._live(tenant_id, file_id)
        return self.documents.delete(store, tenant_id, file_id)

    def _live(self, tenant_id: str, file_id: str) -> tuple[Document, list[DocumentVersion]]:
        found = self.versions.live_document(tenant_id, file_id)
        if found is None or not found[1]:
            raise NotFound(f"No such File object: {file_id[:140]}", code="file_not_found",
                           param="file_id")
        return found
