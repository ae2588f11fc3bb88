"""Shared helpers for knowledge-base tests: a registry, a store and a worker, real ones."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from core.registry.db import Registry, normalize_url
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
from tests.conftest import POSTGRES_URL


def embedder():
    return shared_embedder(EmbeddingSettings().model_dump_json())


def postgres_available() -> bool:
    try:
        with create_engine(normalize_url(POSTGRES_URL)).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001
        return False


class TempPostgres:
    """A database of its own, created and dropped around a test."""

    def __init__(self) -> None:
        self.admin = create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
        self.name = "ragtune_t_" + uuid.uuid4().hex[:10]
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = normalize_url(POSTGRES_URL).rsplit("/", 1)[0] + f"/{self.name}"

    def drop(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def registry_url(kind: str, tmp_path: Path):
    """(url, cleanup) for 'sqlite' or 'postgres'."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}", lambda: None
    pg = TempPostgres()
    return pg.url, pg.drop


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
