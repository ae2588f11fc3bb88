"""OpenAI's files and vector stores (/v1/files, /v1/vector_stores), over the knowledge base."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.protocol.base import ResponseBody

UPLOAD_FILE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "txt, md, html, pdf, json or jsonl"},
                    "purpose": {"type": "string", "enum": ["assistants", "user_data"]},
                },
            }
        }
    },
}


class FileObject(ResponseBody):
    id: str = Field(description="The document id (`file-…` for one uploaded here).")
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = Field(
        description="uploaded while it is indexed, processed once it is, error if that failed."
    )
    status_details: str | None = None
    expires_at: int | None = None


class FileList(ResponseBody):
    object: Literal["list"]
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(ResponseBody):
    id: str
    object: Literal["file"]
    deleted: bool


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


class ChunkingStrategy(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["auto", "static"]


class VectorStoreCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=256)
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    metadata: dict[str, Any] | None = None
    expires_after: ExpiresAfter | None = None
    chunking_strategy: ChunkingStrategy | None = None
    description: str | None = Field(None, max_length=512)


class VectorStoreUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=256)
    metadata: dict[str, Any] | None = None
    expires_after: ExpiresAfter | None = None


class FileCounts(ResponseBody):
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    total: int


class VectorStoreObject(ResponseBody):
    id: str
    object: Literal["vector_store"]
    created_at: int
    name: str
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"]
    last_active_at: int | None = None
    metadata: dict[str, Any] | None = None
    expires_after: dict[str, Any] | None = None
    expires_at: int | None = None


class VectorStoreList(ResponseBody):
    object: Literal["list"]
    data: list[VectorStoreObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class VectorStoreDeleted(ResponseBody):
    id: str
    object: Literal["vector_store.deleted"]
    deleted: bool


class VectorStoreFileCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(min_length=1, max_length=128)
    attributes: dict[str, Any] | None = None
    chunking_strategy: ChunkingStrategy | None = None


class VectorStoreFileUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, Any] | None


class VectorStoreFileObject(ResponseBody):
    id: str
    object: Literal["vector_store.file"]
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"] = Field(
        description="The file's indexing: in_progress while queued or indexing, failed with "
        "last_error, else completed."
    )
    last_error: dict[str, Any] | None = None
    usage_bytes: int
    attributes: dict[str, Any] | None = None
    chunking_strategy: dict[str, Any] | None = None


class VectorStoreFileList(ResponseBody):
    object: Literal["list"]
    data: list[VectorStoreFileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class VectorStoreFileDeleted(ResponseBody):
    id: str
    object: Literal["vector_store.file.deleted"]
    deleted: bool


class RankingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ranker: Literal["none", "auto", "default-2024-11-15"] | None = None
    score_threshold: float | None = Field(None, ge=0, le=1)


class VectorStoreSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | list[str] = Field(description="A question, or several (each searched).")
    max_num_results: int = Field(10, ge=1, le=50)
    filters: dict[str, Any] | None = Field(
        None, description="OpenAI's comparison or compound filter over the files' attributes."
    )
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = Field(False, description="Not supported: true is refused.")


class SearchContent(ResponseBody):
    type: Literal["text"]
    text: str


class SearchResult(ResponseBody):
    file_id: str
    filename: str
    score: float = Field(description="The chunk's cosine to the query.")
    attributes: dict[str, Any] | None = None
    content: list[SearchContent]


class VectorStoreSearchPage(ResponseBody):
    object: Literal["vector_store.search_results.page"]
    search_query: list[str]
    data: list[SearchResult]
    has_more: bool
    next_page: str | None = None
