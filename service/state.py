"""The typed state the lifespan yields, and the two-line dependency getters routes use."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from adapters.service import AdapterService
from core.engine_pool import EnginePool
from core.errors import Forbidden, Unauthorized
from core.metrics import Metrics
from core.registry.db import Registry
from core.settings import Settings
from ingest.documents import DocumentService
from service.advisor import Advisor
from service.chat import ChatService
from service.engine_supervisor import EngineSupervisor
from service.tenants import TenantService, TenantView


@dataclass
class State:
    settings: Settings
    metrics: Metrics
    registry: Registry
    tenants: TenantService
    pool: EnginePool
    chat: ChatService
    admin_key_digest: str
    documents: DocumentService | None = None
    adapters: AdapterService | None = None
    advisor: Advisor | None = None
    store: Any = None  # ingest.vector_store.ChunkStore
    supervisor: EngineSupervisor | None = None
    started_at: float = 0.0
    worker: Any = None  # ingest.worker.IngestWorker running in this process, if any

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake.set()


def resolve_admin_key(settings: Settings) -> str:
    """The configured admin key, else one generated once into <data_dir>/admin_key (mode 0600)."""
    if settings.admin_key is not None:
        return settings.admin_key.get_secret_value()
    path = Path(settings.data_dir) / "admin_key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "rt-admin-" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key"
        )
    return token.strip()


def get_state(request: Request) -> State:
    return request.app.state.ragtune


def _is_admin(state: State, token: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), state.admin_key_digest)


def require_admin(request: Request) -> None:
    state = get_state(request)
    token = _bearer(request)
    if _is_admin(state, token):
        return
    if state.tenants.authenticate(token) is not None:
        raise Forbidden("this endpoint needs the admin key", code="admin_key_required")
    raise Unauthorized("invalid API key")


def require_tenant(request: Request) -> TenantView:
    state = get_state(request)
    token = _bearer(request)
    tenant = state.tenants.authenticate(token)
    if tenant is None:
        if _is_admin(state, token):
            raise Forbidden(
                "the admin key manages tenants; use a tenant key here", code="tenant_key_required"
            )
        raise Unauthorized("invalid API key")
    request.scope["state"]["tenant"] = tenant.id
    return tenant


AppState = Annotated[State, Depends(get_state)]
Admin = Annotated[None, Depends(require_admin)]
CurrentTenant = Annotated[TenantView, Depends(require_tenant)]
