"""Tenants: /v1/me, /v1/tenants."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.policy import Policy
from service.protocol.base import ResponseBody


class TenantCreate(BaseModel):
    id: str = Field(max_length=64)
    policy: Policy = Field(default_factory=Policy)


class TenantPatch(BaseModel):
    policy: dict = Field(description="Policy fields to change; the rest stay as they are.")


class KeyRotate(BaseModel):
    revoke_existing: bool = True


class TenantInfo(ResponseBody):
    """A tenant as /v1/me and the admin's /v1/tenants answer it: never its keys."""

    id: str
    policy: Policy


class TenantCreated(TenantInfo):
    api_key: str = Field(description="Shown once: the service stores only its digest.")


class KeyRotated(ResponseBody):
    id: str
    api_key: str = Field(description="Shown once: the service stores only its digest.")


class TenantListed(TenantInfo):
    created_at: str = Field(description="ISO 8601.")


class TenantList(ResponseBody):
    """GET /v1/tenants (admin): every tenant, oldest first."""

    object: str = "list"
    data: list[TenantListed]


class ReplicaStatus(ResponseBody):
    index: int
    url: str
    healthy: bool
    inflight: int
    adapters: list[str] = Field(description="Engine names of ragtune's adapters it holds.")


class TenantUsage(ResponseBody):
    id: str
    mode: str
    limits: dict
    usage: dict | None = Field(description="requests_this_minute, tokens_today.")


class AdminStatus(ResponseBody):
    """GET /v1/admin/status (admin): what an operator watches."""

    status: str = Field(description="As /readyz: ready | not ready.")
    checks: dict
    replicas: list[ReplicaStatus]
    tenants: list[TenantUsage]
