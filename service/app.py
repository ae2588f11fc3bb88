"""create_app(settings): the FastAPI app, its lifespan, and the State it yields."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.chat import ChatService
from service.engine.model import prepare_model
from service.engine.supervisor import EngineSupervisor
from service.errors import install_error_handlers
from service.llm.pool import EnginePool
from service.metrics import Metrics
from service.observability import RequestContextMiddleware
from service.registry.db import Registry
from service.routes import chat, health, tenants
from service.settings import Settings
from service.state import State, resolve_admin_key
from service.tenants import TenantService

log = logging.getLogger("ragtune.app")


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        registry = Registry(settings.resolved_database_url)
        registry.migrate()
        supervisor = None
        urls = list(settings.engine.urls)
        if not urls:
            if not (settings.resolved_model_dir / "config.json").exists():
                prepare_model(settings.resolved_model_dir, log=log.info)
            supervisor = EngineSupervisor(settings)
            await supervisor.start()
            urls = [supervisor.url]
        eng = settings.engine
        pool = EnginePool(
            urls,
            api_key=eng.api_key.get_secret_value() if eng.api_key else None,
            connect_timeout_s=eng.connect_timeout_s,
            request_timeout_s=eng.request_timeout_s,
            health_interval_s=eng.health_interval_s,
        )
        await pool.start()
        state = State(
            settings=settings,
            metrics=metrics,
            registry=registry,
            tenants=TenantService(registry),
            pool=pool,
            chat=ChatService(pool, metrics, settings.limits, settings.base_model_name),
            admin_key_digest=hashlib.sha256(resolve_admin_key(settings).encode()).hexdigest(),
            supervisor=supervisor,
            started_at=time.time(),
        )
        if supervisor is not None:
            # The child's exit and return are seen at once rather than at the next health tick.
            async def _on_engine_change(up: bool) -> None:
                if up:
                    metrics.engine_restarts.inc()
                await pool.check_all()

            supervisor.on_change = _on_engine_change
        app.state.ragtune = state
        log.info("ragtune ready: %d engine replica(s)", len(urls))
        try:
            yield
        finally:
            await pool.close()
            if supervisor is not None:
                await supervisor.stop()
            registry.dispose()

    app = FastAPI(
        title="ragtune",
        version="0.1.0",
        description="Hybrid RAG + LoRA serving with a per-tenant decision policy.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(tenants.router)
    app.include_router(chat.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.limits.max_request_bytes,
    )
    return app
