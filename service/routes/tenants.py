from __future__ import annotations

import asyncio
import shutil

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.responses import Response

from service.policy import Policy
from service.routes import JSONRoute
from service.state import Admin, AppState, CurrentTenant

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], route_class=JSONRoute)
me_router = APIRouter(prefix="/v1", tags=["tenants"], route_class=JSONRoute)


@me_router.get("/me")
async def whoami(tenant: CurrentTenant) -> dict:
    """The tenant a key acts as (the CLI checks it before uploading)."""
    return tenant.as_dict()


class TenantCreate(BaseModel):
    id: str = Field(max_length=64)
    policy: Policy = Field(default_factory=Policy)


class TenantPatch(BaseModel):
    policy: dict = Field(description="Policy fields to change; the rest stay as they are.")


class KeyRotate(BaseModel):
    revoke_existing: bool = True


@router.post("", status_code=201)
async def create_tenant(body: TenantCreate, state: AppState, _: Admin) -> dict:
    tenant, key = await asyncio.to_thread(state.tenants.create, body.id, body.policy)
    return {**tenant.as_dict(), "api_key": key}


@router.get("/{tenant_id}")
async def get_tenant(tenant_id: str, state: AppState, _: Admin) -> dict:
    return (await asyncio.to_thread(state.tenants.get, tenant_id)).as_dict()


@router.patch("/{tenant_id}")
async def patch_tenant(tenant_id: str, body: TenantPatch, state: AppState, _: Admin) -> dict:
    tenant = await asyncio.to_thread(state.tenants.update_policy, tenant_id, body.policy)
    return tenant.as_dict()


@router.post("/{tenant_id}/keys", status_code=201)
async def rotate_key(
    tenant_id: str, state: AppState, _: Admin, body: KeyRotate | None = None
) -> dict:
    revoke = body.revoke_existing if body else True
    key = await asyncio.to_thread(state.tenants.rotate_key, tenant_id, revoke)
    return {"id": tenant_id, "api_key": key}


@router.delete("/{tenant_id}", status_code=204)
async def delete_tenant(tenant_id: str, state: AppState, _: Admin) -> Response:
    # The rows first (its keys stop working at once, its ids are 404), then everything the rows
    # pointed to, so that a tenant created later with the same id inherits nothing.
    await asyncio.to_thread(state.tenants.delete, tenant_id)
    await asyncio.to_thread(purge_tenant_data, state, tenant_id)
    await state.adapters.reconcile()  # its adapters leave the engines
    return Response(status_code=204)


def purge_tenant_data(state, tenant_id: str) -> None:
    state.store.delete_tenant(tenant_id)
    for folder in (state.settings.data_dir / "uploads" / tenant_id,
                   state.settings.resolved_adapters_root / tenant_id):
        shutil.rmtree(folder, ignore_errors=True)
