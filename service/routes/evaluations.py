"""Eval sets and evaluations (API.md, "Evaluations"). Thin: parse, call, return."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import Response

from core.errors import EvalError, InvalidRequest
from service.evaluations.checks import decode_jsonl
from service.protocol import (
    CREATE_EVAL_SET_BODY,
    EvalSetCreate,
    EvalSetDeleted,
    EvalSetInfo,
    EvalSetList,
    EvaluationCreate,
    EvaluationInfo,
    EvaluationList,
    EvaluationQueued,
)
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["evaluations"], route_class=JSONRoute)

MAX_SET_BYTES = 8 << 20


def _invalid(exc: ValidationError) -> EvalError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    msg = first["msg"].removeprefix("Value error, ")
    return EvalError(f"{where}: {msg}", code="invalid_eval_set", param=where)


async def _read_set(request: Request) -> EvalSetCreate:
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        try:
            return EvalSetCreate.model_validate(await request.json())
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"invalid JSON: {exc}", code="invalid_json") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise EvalError(
                f"{where}: {first['msg']}", code="invalid_eval_set", param=where
            ) from None
    if not kind.startswith("multipart/form-data"):
        raise InvalidRequest(
            "send an eval set as JSON or as multipart/form-data with a 'file'",
            code="invalid_content_type",
        )
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=MAX_SET_BYTES)
    except Exception as exc:  # starlette's MultiPartException and friends
        raise InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
    try:
        part, name, grammar = form.get("file"), form.get("name"), form.get("grammar")
        if not isinstance(part, UploadFile):
            raise InvalidRequest(
                "'file' must be a JSONL file part", code="missing_file", param="file"
            )
        data = await part.read(MAX_SET_BYTES + 1)
    finally:
        await form.close()
    if len(data) > MAX_SET_BYTES:
        raise EvalError(
            f"the file is over {MAX_SET_BYTES >> 20} MiB", code="invalid_eval_set", param="file"
        )
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequest(
            "'name' (1-200 characters) is required", code="missing_name", param="name"
        )
    if grammar is not None and not isinstance(grammar, str):
        raise InvalidRequest(
            "'grammar' must be a text field", code="invalid_grammar_field", param="grammar"
        )
    try:
        return EvalSetCreate(name=name, items=decode_jsonl(data), grammar=grammar)
    except ValidationError as exc:
        raise _invalid(exc) from None


@router.post(
    "/eval-sets",
    status_code=201,
    response_model=EvalSetInfo,
    openapi_extra={"requestBody": CREATE_EVAL_SET_BODY},
)
async def create_eval_set(request: Request, tenant: CurrentTenant, state: AppState) -> dict:
    body = await _read_set(request)
    return await asyncio.to_thread(
        state.evaluations.create_set, tenant.id, body.name, body.items, body.grammar
    )


@router.get("/eval-sets", response_model=EvalSetList)
async def list_eval_sets(tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.evaluations.store.list_sets, tenant.id)


@router.get("/eval-sets/{set_id}", response_model=EvalSetInfo)
async def get_eval_set(set_id: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.evaluations.store.get_set, tenant.id, set_id)


@router.delete("/eval-sets/{set_id}", response_model=EvalSetDeleted)
async def delete_eval_set(set_id: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.evaluations.store.delete_set, tenant.id, set_id)


@router.post("/evaluations", status_code=202, response_model=EvaluationQueued)
async def create_evaluation(body: EvaluationCreate, tenant: CurrentTenant, state: AppState) -> dict:
    out = await asyncio.to_thread(
        state.evaluations.create, tenant.id, body.eval_set, body.arms, body.max_tokens
    )
    state.wake_evaluations()
    return out


@router.get("/evaluations", response_model=EvaluationList)
async def list_evaluations(tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.evaluations.store.list, tenant.id)


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationInfo)
async def get_evaluation(evaluation_id: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.evaluations.store.view, tenant.id, evaluation_id)


@router.get(
    "/evaluations/{evaluation_id}/items",
    response_class=Response,
    responses={
        200: {
            "description": "JSONL: one line per item and arm",
            "content": {"application/x-ndjson": {}},
        }
    },
)
async def evaluation_items(evaluation_id: str, tenant: CurrentTenant, state: AppState) -> Response:
    rows = await asyncio.to_thread(state.evaluations.store.items, tenant.id, evaluation_id)
    body = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    return Response(body, media_type="application/x-ndjson")
