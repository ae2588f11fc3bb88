from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import Response

from core.errors import InvalidRequest
from service.protocol import (
    REGISTER_ADAPTER_BODY,
    AdapterByUri,
    AdapterDetail,
    AdapterList,
    Gate,
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


def _parse_gate(raw) -> Gate | None:
    if raw is None or raw == "":
        return None
    try:
        return Gate.model_validate_json(raw)
    except ValueError as exc:
        raise InvalidRequest(
            f"'gate' must be JSON {{\"eval_set\": id, \"min_delta\"?: 0.0}}: {exc}",
            code="invalid_gate", param="gate",
        ) from exc


async def _gate_check(state, tenant_id: str, gate: Gate | None):
    """The gate checked before the adapter is stored (its eval set must be the tenant's)."""
    if gate is None:
        return None
    return await asyncio.to_thread(state.gates.prepare, tenant_id, gate)


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
        raw_gate = form.get("gate")
        if isinstance(raw_gate, UploadFile):
            raw_gate = (await raw_gate.read()).decode("utf-8", "replace")
        gate = await _gate_check(state, tenant_id, _parse_gate(raw_gate))
        return await state.adapters.register_upload(
            tenant_id, part.file, name=form.get("name"),
            description=form.get("description") or "",
            examples=_parse_examples(form.get("examples")), gate=gate,
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
    except ValidationError as exc:
        if any(e["loc"][:1] == ("gate",) for e in exc.errors()):
            raise InvalidRequest(f"invalid 'gate': {exc}", code="invalid_gate",
                                 param="gate") from exc
        raise InvalidRequest(f"invalid JSON body: {exc}", code="invalid_body") from exc
    except ValueError as exc:
        raise InvalidRequest(f"invalid JSON body: {exc}", code="invalid_body") from exc
    gate = await _gate_check(state, tenant.id, body.gate)
    return await state.adapters.register_from_uri(
        tenant.id, body.uri, name=body.name, description=body.description,
        examples=body.examples, gate=gate,
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
