"""Opens the chunk store the settings name: the factory lives apart from the `ChunkStore`
interface (ingest/vector_store.py), which both implementations import."""

from __future__ import annotations

from pathlib import Path

from core.settings import QdrantSettings
from ingest.vector_store import ChunkStore


def open_chunk_store(settings: QdrantSettings, data_dir: Path) -> ChunkStore:
    """Edge in `settings.path` (default `<data_dir>/qdrant`) when `settings.url` is unset, else
    the server."""
    if not isinstance(settings, QdrantSettings):
        # Another settings model with (a subset of) these fields: take what it has.
        settings = QdrantSettings.model_validate(settings.model_dump())
    # Imported here: a process loads only the client of the store it uses.
    if settings.url is None:
        from ingest.store_edge import EdgeChunkStore

        return EdgeChunkStore(settings.resolved_path(data_dir), settings)
    from ingest.store_qdrant import ServerChunkStore

    return ServerChunkStore.connect(settings)
