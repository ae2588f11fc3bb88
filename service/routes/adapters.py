from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from core.errors import InvalidRequest
from service.protocol import (
    REGISTER_ADAPTER_BODY,
    AdapterByUri,
    AdapterDetail,
    AdapterList,
    Rollback,
)
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["adapters"], route_class=JSONRoute)


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
    try:
        form = await request.form(max_files=2, max_fields=8, max_part_size=256 << 10)
    except Exception as exc:  # starlette's MultiPartException and friends
        raise InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise InvalidRequest("no 'file' part: send the adapter as a .tar.gz or .zip",
                                 code="missing_file", param="file")
        return await state.adapters.register_upload(
            tenant_id, part.file, name=form.get("name"),
            description=form.get("description") or "",
            examples=_parse_examples(form.get("examples")),
        )
    finally:
        await form.close()


@router.post("/adapters", status_code=201, response_model=AdapterDetail,
             openapi_extra={"requestBody": REGISTER_ADAPTER_BODY})
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
    return await state.adapters.register_from_uri(
        tenant.id, body.uri, name=body.name, description=body.description,
        examples=body.examples,
    )


@router.get("/adapters", response_model=AdapterList)
async def list_adapters(tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.adapters.list, tenant.id)


@router.get("/adapters/{name}", response_model=AdapterDetail)
async def get_adapter(name: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.adapters.get, tenant.id, name)


@router.post("/adapters/{name}/rollback", response_model=AdapterDetail)
async def rollback_adapter(
    name: str, tenant: CurrentTenant, state: AppState, body: Rollback | None = None
) -> dict:
    return await state.adapters.rollback(tenant.id, name, body.version if body else None)


@router.delete("/adapters/{name}", status_code=204)
async def delete_adapter(name: str, tenant: CurrentTenant, state: AppState) -> Response:
    await state.adapters.delete(tenant.id, name)
    return Response(status_code=204)
