"""Documents: /v1/documents."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from service.protocol.base import ResponseBody

# The route reads the multipart form itself (each file part is read only up to the size cap),
# so FastAPI cannot derive the request body: the document is told it here.
UPLOAD_DOCUMENTS_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "txt, md, html, pdf, json or jsonl files"},
                    "document_id": {"type": "string",
                                    "description": "Default: derived from the file name"},
                    "metadata": {"type": "string", "description": "A JSON object"},
                },
            }
        }
    },
}

# ingest/versions.py's states: queued and indexing until the job ends; then current (what
# readers see), superseded and retired (replaced), or failed.
VersionState = Literal["queued", "indexing", "current", "superseded", "retired", "failed"]


class QueuedDocument(ResponseBody):
    document_id: str
    version: int
    status: Literal["queued"]


class UploadAccepted(ResponseBody):
    """The 202 of an upload: one job indexes every file (GET /v1/jobs/{job_id})."""

    job_id: str
    documents: list[QueuedDocument] = Field(description="In the upload's file order.")


class JobDocument(ResponseBody):
    document_id: str
    version: int
    state: VersionState
    chunks: int | None = Field(description="Null until the version is indexed.")
    error: str | None


class JobInfo(ResponseBody):
    job_id: str
    state: Literal["queued", "running", "succeeded", "failed"]
    error: str | None = Field(description="The last failed attempt's reason.")
    chunks: int
    attempts: int
    created_at: str = Field(description="ISO 8601.")
    finished_at: str | None = Field(description="ISO 8601; null until the job ends.")
    documents: list[JobDocument]


class DocumentSummary(ResponseBody):
    """A live document as GET /v1/documents lists it."""

    document_id: str
    current_version: int | None = Field(description="The version readers see; null until one "
                                        "is indexed.")
    latest_version: int | None
    status: VersionState | None = Field(description="The latest version's state.")
    source: str | None = Field(description="The file name of the current version, else of the "
                               "latest.")
    chunks: int | None = Field(description="The current version's; null without one.")
    metadata: dict[str, Any] = Field(description="The current version's, else the latest's.")
    updated_at: str = Field(description="ISO 8601.")


class DocumentVersionInfo(ResponseBody):
    version: int
    state: VersionState
    job_id: str
    chunks: int | None
    size_bytes: int
    sha256: str
    error: str | None
    created_at: str = Field(description="ISO 8601.")


class DocumentDetail(DocumentSummary):
    versions: list[DocumentVersionInfo] = Field(description="Newest first.")


class DocumentList(ResponseBody):
    object: Literal["list"]
    data: list[DocumentSummary]
    has_more: bool
