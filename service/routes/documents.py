from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from core.errors import InvalidRequest, PayloadTooLarge
from ingest.documents import Upload
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["documents"], route_class=JSONRoute)


async def _read_upload(request: Request, state) -> tuple[list[Upload], str | None, dict | None]:
    lim = state.documents.limits
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(
            "send documents as multipart/form-data with one or more 'file' parts",
            code="invalid_content_type",
        )
    try:
        form = await request.form(
            max_files=lim.max_files + 1, max_fields=16, max_part_size=lim.max_metadata_bytes
        )
    except PayloadTooLarge:
        raise
    except Exception as exc:  # starlette's MultiPartException and friends
        raise InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
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


UPLOAD_BODY = {
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


@router.post("/documents", status_code=202, openapi_extra={"requestBody": UPLOAD_BODY})
async def upload_documents(request: Request, tenant: CurrentTenant, state: AppState) -> dict:
    files, document_id, metadata = await _read_upload(request, state)
    out = await asyncio.to_thread(state.documents.upload, tenant.id, files, document_id, metadata)
    state.wake_worker()
    return out


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.documents.get_job, tenant.id, job_id)


@router.get("/documents")
async def list_documents(
    tenant: CurrentTenant, state: AppState, limit: int = 100, after: str | None = None
) -> dict:
    limit = max(1, min(limit, 1000))
    return await asyncio.to_thread(state.documents.list_documents, tenant.id, limit, after)


@router.get("/documents/{document_id}")
async def get_document(document_id: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.documents.get_document, tenant.id, document_id)


@router.delete("/documents/{document_id}", status_code=204)
async def delete_document(document_id: str, tenant: CurrentTenant, state: AppState) -> Response:
    # Hidden from readers at once; then its points and rows go. If the store fails now, the
    # worker's sweep finishes the deletion (the document stays hidden meanwhile).
    versions = await asyncio.to_thread(state.documents.mark_deleting, tenant.id, document_id)
    try:
        await asyncio.to_thread(
            state.documents.finish_delete, state.store, tenant.id, document_id, versions
        )
    except Exception:  # noqa: BLE001
        state.wake_worker()
    return Response(status_code=204)
