from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from core.errors import InvalidRequest, PayloadTooLarge
from ingest.uploads import Upload
from service.protocol import (
    UPLOAD_DOCUMENTS_BODY,
    DocumentDetail,
    DocumentList,
    JobInfo,
    UploadAccepted,
)
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["documents"], route_class=JSONRoute)


async def read_multipart(request: Request, what: str, max_files: int, max_fields: int,
                         max_part_size: int) -> FormData:
    """The multipart form of an upload (`what`: what to send, for the error); the caller
    closes it."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(f"send {what} as multipart/form-data", code="invalid_content_type")
    try:
        return await request.form(max_files=max_files, max_fields=max_fields,
                                  max_part_size=max_part_size)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # starlette's MultiPartException and friends
        raise InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from exc


async def _read_upload(request: Request, state) -> tuple[list[Upload], str | None, dict | None]:
    lim = state.documents.limits
    form = await read_multipart(request, "documents with one or more 'file' parts",
                                lim.max_files + 1, 16, lim.max_metadata_bytes)
    try:
        files = []
        for part in form.getlist("file"):
            if not isinstance(part, UploadFile):
                raise InvalidRequest("'file' must be a file part", code="missing_file",
                                     param="file")
            data = await part.read(lim.max_file_bytes + 1)
            files.append(Upload(part.filename or "", data))
        document_id = form.get("document_id")
        raw_meta = form.get("metadata")
    finally:
        await form.close()
    metadata = None
    if raw_meta:
        try:
            # orjson, as for JSON bodies: what is stored can be written back (no lone
            # surrogates, NaN or nesting past 1024, which json.loads takes or crashes on).
            metadata = orjson.loads(raw_meta)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest("metadata is not valid JSON", code="invalid_metadata",
                                 param="metadata") from exc
        if not isinstance(metadata, dict):
            raise InvalidRequest("metadata must be a JSON object", code="invalid_metadata",
                                 param="metadata")
    if document_id is not None and not isinstance(document_id, str):
        raise InvalidRequest("'document_id' must be a form field, not a file",
                             code="invalid_document_id", param="document_id")
    return files, document_id, metadata


@router.post("/documents", status_code=202, response_model=UploadAccepted,
             openapi_extra={"requestBody": UPLOAD_DOCUMENTS_BODY})
async def upload_documents(request: Request, tenant: CurrentTenant, state: AppState) -> dict:
    files, document_id, metadata = await _read_upload(request, state)
    out = await asyncio.to_thread(state.documents.upload, tenant.id, files, document_id, metadata)
    state.wake_worker()
    return out


@router.get("/jobs/{job_id}", response_model=JobInfo)
async def get_job(job_id: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.documents.get_job, tenant.id, job_id)


@router.get("/documents", response_model=DocumentList)
async def list_documents(
    tenant: CurrentTenant, state: AppState, limit: int = 100, after: str | None = None
) -> dict:
    limit = max(1, min(limit, 1000))
    return await asyncio.to_thread(state.documents.list_documents, tenant.id, limit, after)


@router.get("/documents/{document_id}", response_model=DocumentDetail)
async def get_document(document_id: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.documents.get_document, tenant.id, document_id)


@router.delete("/documents/{document_id}", status_code=204)
async def delete_document(document_id: str, tenant: CurrentTenant, state: AppState) -> Response:
    if not await asyncio.to_thread(state.documents.delete, state.store, tenant.id, document_id):
        state.wake_worker()  # its sweep finishes what the store or registry refused just now
    return Response(status_code=204)
