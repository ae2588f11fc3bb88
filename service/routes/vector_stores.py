"""OpenAI's vector stores: /v1/vector_stores, named sets of the tenant's documents
(ingest/openai_stores.py)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter

from core.errors import InvalidRequest
from service.http_errors import ORJSONResponse
from service.protocol.files import (
    ChunkingStrategy,
    VectorStoreCreate,
    VectorStoreDeleted,
    VectorStoreFileCreate,
    VectorStoreFileDeleted,
    VectorStoreFileList,
    VectorStoreFileObject,
    VectorStoreFileUpdate,
    VectorStoreList,
    VectorStoreObject,
    VectorStoreSearch,
    VectorStoreSearchPage,
    VectorStoreUpdate,
)
from service.routes import JSONRoute
from service.state import AppState, CurrentTenant

router = APIRouter(prefix="/v1", tags=["vector stores"], route_class=JSONRoute)
Order = Literal["asc", "desc"]
# How long the SDK's create_and_poll waits between looks at a file still being indexed.
POLL_AFTER_MS = "250"


def _chunking(strategy: ChunkingStrategy | None) -> None:
    if strategy is not None and strategy.type != "auto":
        raise InvalidRequest(
            "chunking_strategy: files are chunked by the knowledge base's own settings when they "
            "are uploaded; only 'auto' is accepted", code="unsupported_chunking_strategy",
            param="chunking_strategy")


def _limit(limit: int) -> int:
    return max(1, min(limit, 100))


@router.post("/vector_stores", response_model=VectorStoreObject)
async def create_vector_store(body: VectorStoreCreate, tenant: CurrentTenant,
                              state: AppState) -> dict:
    _chunking(body.chunking_strategy)
    days = body.expires_after.days if body.expires_after else None
    return await asyncio.to_thread(state.vector_stores.create, tenant.id, body.name,
                                   body.metadata, body.file_ids, days)


@router.get("/vector_stores", response_model=VectorStoreList)
async def list_vector_stores(tenant: CurrentTenant, state: AppState, limit: int = 20,
                             after: str | None = None, order: Order = "desc") -> dict:
    return await asyncio.to_thread(state.vector_stores.list, tenant.id, _limit(limit), after,
                                   order == "desc")


@router.get("/vector_stores/{vector_store_id}", response_model=VectorStoreObject)
async def get_vector_store(vector_store_id: str, tenant: CurrentTenant, state: AppState) -> dict:
    return await asyncio.to_thread(state.vector_stores.get, tenant.id, vector_store_id)


@router.post("/vector_stores/{vector_store_id}", response_model=VectorStoreObject)
async def update_vector_store(vector_store_id: str, body: VectorStoreUpdate,
                              tenant: CurrentTenant, state: AppState) -> dict:
    changes = body.model_dump(exclude_unset=True)
    if "expires_after" in changes:
        changes["expires_after_days"] = body.expires_after.days if body.expires_after else None
        del changes["expires_after"]
    return await asyncio.to_thread(state.vector_stores.update, tenant.id, vector_store_id,
                                   changes)


@router.delete("/vector_stores/{vector_store_id}", response_model=VectorStoreDeleted)
async def delete_vector_store(vector_store_id: str, tenant: CurrentTenant,
                              state: AppState) -> dict:
    return await asyncio.to_thread(state.vector_stores.delete, tenant.id, vector_store_id)


@router.post("/vector_stores/{vector_store_id}/files", response_model=VectorStoreFileObject)
async def attach_file(vector_store_id: str, body: VectorStoreFileCreate, tenant: CurrentTenant,
                      state: AppState) -> dict:
    _chunking(body.chunking_strategy)
    return await asyncio.to_thread(state.vector_stores.attach, tenant.id, vector_store_id,
                                   body.file_id, body.attributes)


@router.get("/vector_stores/{vector_store_id}/files", response_model=VectorStoreFileList)
async def list_vector_store_files(
    vector_store_id: str, tenant: CurrentTenant, state: AppState, limit: int = 20,
    after: str | None = None, order: Order = "desc",
    filter: Literal["in_progress", "completed", "failed", "cancelled"] | None = None,  # noqa: A002
) -> dict:
    return await asyncio.to_thread(state.vector_stores.files, tenant.id, vector_store_id,
                                   _limit(limit), after, order == "desc", filter)


@router.get("/vector_stores/{vector_store_id}/files/{file_id}",
            response_model=VectorStoreFileObject)
async def get_vector_store_file(vector_store_id: str, file_id: str, tenant: CurrentTenant,
                                state: AppState):
    out = await asyncio.to_thread(state.vector_stores.file, tenant.id, vector_store_id, file_id)
    headers = {"openai-poll-after-ms": POLL_AFTER_MS} if out["status"] == "in_progress" else {}
    return ORJSONResponse(out, headers=headers)


@router.post("/vector_stores/{vector_store_id}/files/{file_id}",
             response_model=VectorStoreFileObject)
async def update_vector_store_file(vector_store_id: str, file_id: str,
                                   body: VectorStoreFileUpdate, tenant: CurrentTenant,
                                   state: AppState) -> dict:
    return await asyncio.to_thread(state.vector_stores.set_attributes, tenant.id,
                                   vector_store_id, file_id, body.attributes)


@router.delete("/vector_stores/{vector_store_id}/files/{file_id}",
               response_model=VectorStoreFileDeleted)
async def detach_file(vector_store_id: str, file_id: str, tenant: CurrentTenant,
                      state: AppState) -> dict:
    return await asyncio.to_thread(state.vector_stores.detach, tenant.id, vector_store_id,
                                   file_id)


@router.post("/vector_stores/{vector_store_id}/search", response_model=VectorStoreSearchPage)
async def search_vector_store(vector_store_id: str, body: VectorStoreSearch,
                              tenant: CurrentTenant, state: AppState) -> dict:
    if body.rewrite_query:
        raise InvalidRequest("rewrite_query is not supported: the query is searched as written",
                             code="unsupported_parameter", param="rewrite_query")
    queries = [body.query] if isinstance(body.query, str) else list(body.query)
    if not queries or len(queries) > 8 or not all(q.strip() for q in queries):
        raise InvalidRequest("query: a non-empty question, or 1 to 8 of them",
                             code="invalid_input", param="query")
    threshold = body.ranking_options.score_threshold if body.ranking_options else None
    await state.chat.admit(tenant)
    return await asyncio.to_thread(
        state.vector_stores.search, state.chat.router.retriever, tenant.id, vector_store_id,
        queries, body.max_num_results, body.filters, threshold,
    )


