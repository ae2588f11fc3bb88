from __future__ import annotations

import asyncio
import shutil

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.responses import Response

from adapters.archive import copy_capped_file
from core.errors import InvalidRequest
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["adapters"], route_class=JSONRoute)


class AdapterByUri(BaseModel):
    """Register a folder that already lies under the server's adapter root."""

    name: str
    uri: str = Field(description="A path (or file:// URI) under the server's adapter root.")
    description: str = ""
    examples: list[str] = Field(default_factory=list)


class Rollback(BaseModel):
    version: int | None = Field(None, ge=1, le=2**31 - 1,
                                description="Default: the version before the current.")


def _parse_examples(raw) -> list | None:
    if raw is None or raw == "":
        return None
    try:
        value = orjson.loads(raw)  # as for JSON bodies (json.loads crashes on deep nesting)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("'examples' must be a JSON list of strings",
                             code="invalid_examples", param="examples") from exc
    return value


async def _register_multipart(request: Request, tenant_id: str, state) -> dict:
    svc = state.adapters
    try:
        form = await request.form(max_files=2, max_fields=8, max_part_size=256 << 10)
    except Exception as exc:  # starlette's MultiPartException and friends
        raise InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
    staging = await asyncio.to_thread(svc.staging_dir)
    try:
        try:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise InvalidRequest("no 'file' part: send the adapter as a .tar.gz or .zip",
                                     code="missing_file", param="file")
            name, description = form.get("name"), form.get("description") or ""
            examples = svc.check_inputs(name, description, _parse_examples(form.get("examples")))
            archive = staging / "upload"
            await asyncio.to_thread(
                copy_capped_file, part.file, archive, svc.limits.max_archive_bytes
            )
        finally:
            await form.close()
        folder, info = await asyncio.to_thread(svc.unpack_archive, archive, staging)
        return await svc.register(tenant_id, folder, info, name=name, description=description,
                                  examples=examples)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


REGISTER_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "name"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "A .tar.gz or .zip of a PEFT LoRA folder"},
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "examples": {"type": "string", "description": "A JSON list of prompts"},
                },
            }
        },
        "application/json": {"schema": AdapterByUri.model_json_schema()},
    },
}


@router.post("/adapters", status_code=201, openapi_extra={"requestBody": REGISTER_BODY})
async def register_adapter(request: Request, tenant: CurrentTenant, state: AppState) -> dict:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        return await _register_multipart(request, tenant.id, state)
    if not ctype.startswith("application/json"):
        raise InvalidRequest(
            "send the adapter as multipart/form-data ('file', 'name', 'description', 'examples') "
            "or JSON {'name', 'uri', ...}",
            code="invalid_content_type",
        )
    try:
        body = AdapterByUri.model_validate_json(await request.body())
    except ValueError as exc:
        raise InvalidRequest(f"invalid JSON body: {exc}", code="invalid_body") from exc
    svc = state.adapters
    examples = svc.check_inputs(body.name, body.description, body.examples)
    staging = await asyncio.to_thread(svc.staging_dir)
    try:
        folder, info = await asyncio.to_thread(svc.copy_from_uri, body.uri, staging)
        return await svc.register(tenant.id, folder, info, name=body.name,
                                  description=body.description, examples=examples)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


@router.get("/adapters")
async def list_adapters(tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.adapters.list, tenant.id)


@router.get("/adapters/{name}")
async def get_adapter(name: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.adapters.get, tenant.id, name)


@router.post("/adapters/{name}/rollback")
async def rollback_adapter(
    name: str, tenant: CurrentTenant, state: AppState, body: Rollback | None = None
) -> dict:
    return await state.adapters.rollback(tenant.id, name, body.version if body else None)


@router.delete("/adapters/{name}", status_code=204)
async def delete_adapter(name: str, tenant: CurrentTenant, state: AppState) -> Response:
    # Hidden at once (requests naming it are 404 from now on); it leaves the engines once the
    # requests already running on it end.
    await asyncio.to_thread(state.adapters.mark_deleting, tenant.id, name)
    state.adapters.schedule_purge(tenant.id, name)
    return Response(status_code=204)
