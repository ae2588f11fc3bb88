"""create_app(settings): the FastAPI app, its lifespan, and the State it yields."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from adapters.hotswap import EngineAdapters
from adapters.service import AdapterService
from core.base_model import ensure_base_model
from core.engine_pool import EnginePool
from core.metrics import Metrics
from core.observability import RequestContextMiddleware
from core.registry.db import Registry
from core.settings import Settings
from ingest.documents import DocumentService
from ingest.openai_files import FileService
from ingest.openai_stores import VectorStores
from ingest.retrieval import Retriever
from service.advisor import Advisor
from service.chat import ChatService
from service.engine_supervisor import EngineSupervisor
from service.evaluations.gate import AdapterGates
from service.evaluations.runner import EvaluationRunner
from service.evaluations.service import EvaluationService
from service.evaluations.store import EvaluationStore
from service.http_errors import install_error_handlers
from service.limits import RateLimiter
from service.path_router import PathRouter
from service.responses import ResponsesService
from service.routes import (
    adapters,
    admin,
    advisor,
    backup,
    chat,
    console,
    documents,
    embeddings,
    evaluations,
    files,
    health,
    responses,
    tenants,
    vector_stores,
)
from service.state import State, resolve_admin_key
from service.tenants import TenantService

log = logging.getLogger("ragtune.app")


def open_knowledge_base(settings: Settings):
    """The embedding model and the vector store (blocking: run it in a thread)."""
    from ingest.embedding import shared_embedder
    from ingest.stores import open_chunk_store

    embedder = shared_embedder(settings.embedding)
    store = open_chunk_store(settings.qdrant, settings.data_dir)
    store.ensure_collection(embedder.dim)
    return embedder, store


async def start_engine(settings: Settings) -> tuple[list[str], EngineSupervisor | None]:
    if settings.engine.urls:
        return list(settings.engine.urls), None
    await asyncio.to_thread(ensure_base_model, settings.resolved_model_dir, log=log.info)
    supervisor = EngineSupervisor(settings)
    await supervisor.start()
    return [supervisor.url], supervisor


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        registry = Registry(settings.resolved_database_url)
        await asyncio.to_thread(registry.migrate)
        # The engine takes tens of seconds to start: load the knowledge base meanwhile.
        (urls, supervisor), (embedder, store) = await asyncio.gather(
            start_engine(settings), asyncio.to_thread(open_knowledge_base, settings)
        )
        eng = settings.engine
        pool = EnginePool(
            urls,
            api_key=eng.api_key.get_secret_value() if eng.api_key else None,
            connect_timeout_s=eng.connect_timeout_s,
            request_timeout_s=eng.request_timeout_s,
            health_interval_s=eng.health_interval_s,
        )
        await pool.start()
        docs = DocumentService(registry, settings.data_dir / "uploads", settings.documents)
        engines = EngineAdapters(
            pool,
            max_resident=settings.adapters.max_resident,
            load_timeout_s=settings.adapters.load_timeout_s,
            metrics=metrics,
            root=settings.resolved_adapters_root,
        )
        adapter_service = AdapterService(registry, engines, settings, embed_texts=embedder.texts)
        router = PathRouter(Retriever(store, embedder, docs), adapter_service, metrics)
        # The background floor's questions embedded now, not in the first routed request.
        warm = threading.Thread(target=router.background.vectors, name="background-floor",
                                daemon=True)
        warm.start()
        eval_store = EvaluationStore(registry)
        state = State(
            settings=settings,
            metrics=metrics,
            registry=registry,
            tenants=TenantService(
                registry, store=store, adapters=adapter_service,
                data_roots=(docs.uploads_dir, settings.resolved_adapters_root),
            ),
            pool=pool,
            chat=ChatService(
                pool, metrics, settings.limits, settings.base_model_name, router, adapter_service,
                RateLimiter(registry),
            ),
            documents=docs,
            adapters=adapter_service,
            advisor=Advisor(
                pool, settings.base_model_name, docs,
                unfamiliar_ratio=settings.advisor.unfamiliar_ratio,
                max_samples=settings.advisor.max_samples,
                latest_evaluation=eval_store.latest_succeeded,
            ),
            store=store,
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
        state.embedder = embedder
        state.files = FileService(docs)
        state.vector_stores = VectorStores(registry, docs)
        state.responses = ResponsesService(state.chat, state.vector_stores)
        state.evaluations = EvaluationService(
            eval_store, adapter_service, settings.evaluations, settings.limits
        )
        runner = EvaluationRunner(
            eval_store, state.chat, state.tenants, settings.evaluations, metrics
        )
        # An adapter gate runs its evaluation in the registering request, whether or not this
        # process also works the evaluation queue.
        state.gates = AdapterGates(eval_store, runner, settings.evaluations, settings.limits)
        if settings.evaluations.embedded:
            state.evaluation_runner = runner
            runner.start()
        reconciler = start_reconciler(adapter_service, pool, settings.adapters.reconcile_interval_s)
        worker_thread = None
        if settings.worker.embedded:
            worker_thread = start_worker_thread(state, embedder)
        app.state.ragtune = state
        log.info("ragtune ready: %d engine replica(s)", len(urls))
        try:
            yield
        finally:
            reconciler.cancel()
            if state.evaluation_runner is not None:
                await state.evaluation_runner.close()
            await adapter_service.close()
            if worker_thread is not None:
                state.worker.stop.set()
                state.worker.wake.set()
                await asyncio.to_thread(worker_thread.join, 30)
            await pool.close()
            if supervisor is not None:
                await supervisor.stop()
            store.close()
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
    app.include_router(tenants.me_router)
    app.include_router(chat.router)
    app.include_router(documents.router)
    app.include_router(adapters.router)
    app.include_router(advisor.router)
    app.include_router(evaluations.router)
    app.include_router(admin.router)
    app.include_router(backup.router)
    app.include_router(embeddings.router)
    app.include_router(responses.router)
    app.include_router(files.router)
    app.include_router(vector_stores.router)
    console.mount(app)
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
        body_limits={
            "/v1/documents": settings.documents.max_upload_bytes,
            "/v1/files": settings.documents.max_upload_bytes,
            "/v1/adapters": settings.adapters.max_archive_bytes + (1 << 20),
        },
    )
    return app


def start_worker_thread(state: State, embedder) -> threading.Thread:
    from ingest.pipeline import ChunkPipeline
    from ingest.worker import IngestWorker

    worker = IngestWorker(
        state.registry,
        state.store,
        ChunkPipeline(embedder, state.settings.chunking),
        state.settings.worker,
        metrics=state.metrics,
    )
    state.worker = worker
    thread = threading.Thread(
        target=worker.run_forever, args=(worker.stop,), name="ingest-worker", daemon=True
    )
    thread.start()
    return thread


def start_reconciler(adapters: AdapterService, pool: EnginePool, interval_s: float) -> asyncio.Task:
    """Every replica holds the registry's adapters: now, every `interval_s`, and as soon as a
    replica comes (back) up (a restarted vLLM has forgotten them)."""
    kick = asyncio.Event()
    kick.set()  # at start-up

    def on_health(replica, up: bool) -> None:
        if up:
            kick.set()

    pool.on_health_change.append(on_health)

    async def loop() -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), interval_s)
            kick.clear()
            try:
                await adapters.reconcile()
            except Exception:  # noqa: BLE001 - a registry or engine hiccup: next round
                log.exception("adapter reconcile failed")

    return asyncio.create_task(loop(), name="adapter-reconcile")
