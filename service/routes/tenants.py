from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import Response

from service.protocol import (
    KeyRotate,
    KeyRotated,
    TenantCreate,
    TenantCreated,
    TenantInfo,
    TenantList,
    TenantPatch,
)
from service.routes import JSONRoute
from service.state import Admin, AppState, CurrentTenant

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], route_class=JSONRoute)
me_router = APIRouter(prefix="/v1", tags=["tenants"], route_class=JSONRoute)


@me_router.get("/me", response_model=TenantInfo)
async def whoami(tenant: CurrentTenant) -> dict:
    """The tenant a key acts as (the CLI checks it before uploading)."""
    return tenant.as_dict()


@router.post("", status_code=201, response_model=TenantCreated)
async def create_tenant(body: TenantCreate, state: AppState, _: Admin) -> dict:
    tenant, key = await asyncio.to_thread(state.tenants.create, body.id, body.policy)
    return {**tenant.as_dict(), "api_key": key}


@router.get("", response_model=TenantList)
async def list_tenants(state: AppState, _: Admin) -> dict:
    return {"object": "list", "data": await asyncio.to_thread(state.tenants.list)}


@router.get("/{tenant_id}", response_model=TenantInfo)
async def get_tenant(tenant_id: str, state: AppState, _: Admin) -> dict:
    return (await asyncio.to_thread(state.tenants.get, tenant_id)).as_dict()


@router.patch("/{tenant_id}", response_model=TenantInfo)
async def patch_tenant(tenant_id: str, body: TenantPatch, state: AppState, _: Admin) -> dict:
    tenant = await asyncio.to_thread(state.tenants.update_policy, tenant_id, body.policy)
    return tenant.as_dict()


@router.post("/{tenant_id}/keys", status_code=201, response_model=KeyRotated)
async def rotate_key(
    tenant_id: str, state: AppState, _: Admin, body: KeyRotate | None = None
) -> dict:
    revoke = body.revoke_existing if body else True
    key = await asyncio.to_thread(state.tenants.rotate_key, tenant_id, revoke)
    return {"id": tenant_id, "api_key": key}


@router.delete("/{tenant_id}", status_code=204)
async def delete_tenant(tenant_id: str, state: AppState, _: Admin) -> Response:
    await state.tenants.remove(tenant_id)
    return Response(status_code=204)
