"""Knowledge-base tests' pieces, real ones: the embedder, a store, a worker, a tenant, the document
service (a registry on SQLite or PostgreSQL: postgres.registry_url)."""

from __future__ import annotations

from pathlib import Path

from core.registry.db import Registry
from core.settings import (
    ChunkingSettings,
    DocumentLimits,
    EmbeddingSettings,
    QdrantSettings,
    WorkerSettings,
)
from ingest.documents import DocumentService, Upload
from ingest.embedding import shared_embedder
from ingest.pipeline import ChunkPipeline
from ingest.stores import open_chunk_store
from ingest.worker import IngestWorker
from service.policy import Policy
from service.tenants import TenantService


def embedder():
    return shared_embedder(EmbeddingSettings())


def make_worker(registry: Registry, store, **overrides) -> IngestWorker:
    settings = WorkerSettings(**{"retire_grace_s": 0.0, "poll_s": 0.05, **overrides})
    return IngestWorker(registry, store, ChunkPipeline(embedder(), ChunkingSettings()), settings)


def open_store(tmp_path: Path):
    store = open_chunk_store(QdrantSettings(path=tmp_path / "qdrant"), tmp_path)
    store.ensure_collection(embedder().dim)
    return store


def setup_tenant(registry: Registry, tenant_id: str = "acme") -> str:
    TenantService(registry).create(tenant_id, Policy())
    return tenant_id


def docs_service(registry: Registry, tmp_path: Path) -> DocumentService:
    return DocumentService(registry, tmp_path / "uploads", DocumentLimits())


def upload_text(docs: DocumentService, tenant_id: str, name: str, body: str) -> dict:
    return docs.upload(tenant_id, [Upload(name, body.encode())])


def long_text(topic: str, sentences: int) -> str:
    return " ".join(
        f"Fact {i} about {topic}: the {topic} register entry number {i} is kept in drawer {i % 7}."
        for i in range(sentences)
    )
