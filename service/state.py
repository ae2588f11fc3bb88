"""The typed state the lifespan yields, and the two-line dependency getters routes use."""

from __future__ import annotations

import asyncio
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
from core.errors import Forbidden, Unauthorized, error_body
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
    evaluations: Any = None  # service.evaluations.service.EvaluationService
    evaluation_runner: Any = None  # its runner, when this process runs evaluations
    gates: Any = None  # service.evaluations.gate.AdapterGates
    embedder: Any = None  # ingest.embedding.Embedder: the served embedding model
    files: Any = None  # ingest.openai_files.FileService: OpenAI's files over the documents
    vector_stores: Any = None  # ingest.openai_stores.VectorStores
    responses: Any = None  # service.responses.ResponsesService

    def wake_evaluations(self) -> None:
        if self.evaluation_runner is not None:
            self.evaluation_runner.wake.set()

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake.set()

    async def readiness(self) -> dict:
        """/readyz's body: each dependency's check and, when one is down, the one error shape's
        `error` naming what is."""
        checks = {
            "llm": "ok" if self.pool.healthy_count else "down",
            "registry": await _check(self.registry.ping),
            "vector_store": await _check(self.store.ping),
        }
        down = sorted(k for k, v in checks.items() if v != "ok")
        if not down:
            return {"status": "ready", "checks": checks}
        message = f"not ready: {', '.join(down)} down"
        return {"status": "not ready", "checks": checks,
                **error_body(message, "server_error", "not_ready")}

    async def render_metrics(self) -> str:
        """The Prometheus text, with the gauges read at scrape time brought up to date."""
        self.metrics.engine_replicas_healthy.set(self.pool.healthy_count)
        self.metrics.set_job_counts(await asyncio.to_thread(self.documents.job_counts))
        return self.metrics.render()


async def _check(ping) -> str:
    try:
        await asyncio.to_thread(ping)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"down: {type(exc).__name__}"
    return "ok"


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


def _state(request: Request) -> State:
    return request.app.state.ragtune


async def get_state(request: Request) -> State:
    """The dependency (async: FastAPI runs a plain function dependency in a worker thread, a
    hop per request for a dictionary read)."""
    return _state(request)


def _is_admin(state: State, token: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), state.admin_key_digest)


def require_admin(request: Request) -> None:
    state = _state(request)
    token = _bearer(request)
    if _is_admin(state, token):
        return
    if state.tenants.authenticate(token) is not None:
        raise Forbidden("this endpoint needs the admin key", code="admin_key_required")
    raise Unauthorized("invalid API key")


async def require_tenant(request: Request) -> TenantView:
    state = _state(request)
    token = _bearer(request)
    # A key verified lately is known without the registry or a hop to a worker thread.
    tenant = state.tenants.verified(token)
    if tenant is None:
        tenant = await asyncio.to_thread(state.tenants.authenticate, token)
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
