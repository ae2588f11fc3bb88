"""OpenAI's Files API: /v1/files, over the knowledge base (ingest/openai_files.py: a file is a
document)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import FileResponse

from core.errors import InvalidRequest
from ingest.uploads import Upload
from service.protocol.files import UPLOAD_FILE_BODY, FileDeleted, FileList, FileObject
from service.routes import JSONRoute
from service.routes.documents import read_multipart
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["files"], route_class=JSONRoute)


async def _read_file(request: Request, state) -> tuple[Upload, str]:
    lim = state.documents.limits
    form = await read_multipart(request, "the file with 'file' and 'purpose'", 2, 8,
                                lim.max_metadata_bytes)
    try:
        parts = form.getlist("file")
        if len(parts) != 1 or not isinstance(parts[0], UploadFile):
            raise InvalidRequest("send exactly one 'file' part", code="missing_file",
                                 param="file")
        data = await parts[0].read(lim.max_file_bytes + 1)
        upload = Upload(parts[0].filename or "", data)
        purpose = form.get("purpose")
    finally:
        await form.close()
    if not isinstance(purpose, str) or not purpose:
        raise InvalidRequest("'purpose' is required: assistants or user_data",
                             code="missing_field", param="purpose")
    return upload, purpose


@router.post("/files", response_model=FileObject,
             openapi_extra={"requestBody": UPLOAD_FILE_BODY})
async def create_file(request: Request, tenant: CurrentTenant, state: AppState) -> dict:
    upload, purpose = await _read_file(request, state)
    out = await asyncio.to_thread(state.files.create, tenant.id, upload, purpose)
    state.wake_worker()
    return out


@router.get("/files", response_model=FileList)
async def list_files(
    tenant: CurrentTenant, state: AppState, limit: int = 10000, after: str | None = None,
    order: Literal["asc", "desc"] = "desc", purpose: str | None = None,
) -> dict:
    limit = max(1, min(limit, 10000))
    return await asyncio.to_thread(state.files.list, tenant.id, limit, after, order == "desc",
                                   purpose)


@router.get("/files/{file_id}", response_model=FileObject)
async def get_file(file_id: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.files.get, tenant.id, file_id)


@router.get("/files/{file_id}/content", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def file_content(file_id: str, tenant: CurrentTenant, state: AppState) -> FileResponse:
    path, filename = await asyncio.to_thread(state.files.content, tenant.id, file_id)
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, tenant: CurrentTenant, state: AppState) -> dict:
    if not await asyncio.to_thread(state.files.delete, state.store, tenant.id, file_id):
        state.wake_worker()  # its sweep finishes what the store or registry refused just now
    return {"id": file_id, "object": "file", "deleted": True}
