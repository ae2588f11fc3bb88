"""Retrieval for the rag and adapter_rag paths: embed the question, search the tenant's current
chunks (never another tenant's: the store filters on tenant_id), drop what is below the floor."""

from __future__ import annotations

import time
from dataclasses import dataclass

from core.errors import APIError, RetrievalUnavailable
from ingest.documents import DocumentService
from ingest.embedding import Embedder
from ingest.vector_store import ChunkStore, Hit


@dataclass
class Retrieval:
    hits: list[Hit]
    seconds: float

    @property
    def top_score(self) -> float | None:
        return self.hits[0].score if self.hits else None

    def above(self, floor: float) -> list[Hit]:
        """The hits that may reach the model under this floor, in retrieval order."""
        return [h for h in self.hits if h.score >= floor]


class Retriever:
    def __init__(self, store: ChunkStore, embedder: Embedder, documents: DocumentService) -> None:
        self.store = store
        self.embedder = embedder
        self.documents = documents

    def retrieve(
        self, tenant_id: str, query: str, top_k: int,
        hidden: list[tuple[str, int]] | None, vector=None, steps: dict[str, float] | None = None,
    ) -> Retrieval:
        """Sync (run it in a thread). `hidden`: what `DocumentService.readable_in` read (None:
        nothing indexed); `vector`: the query's embedding when the caller has it; `steps`
        gets the seconds of "embed" and "search" where they ran. Raises RetrievalUnavailable
        when the store (or the query's embedding) fails."""
        started = time.perf_counter()
        steps = {} if steps is None else steps
        try:
            if hidden is None:
                # Nothing indexed: no need to embed the question (the common case for
                # tenants without a knowledge base).
                return Retrieval([], time.perf_counter() - started)
            if vector is None:
                vector = self.embedder.query(query)
                steps["embed"] = time.perf_counter() - started
            searched = time.perf_counter()
            hits = self.store.search(tenant_id, vector, top_k, exclude=hidden, text=query)
            steps["search"] = time.perf_counter() - searched
        except APIError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure is the same to the caller
            raise RetrievalUnavailable(f"the knowledge base is unavailable: {exc}") from exc
        return Retrieval(hits, time.perf_counter() - started)


def citations(hits: list[Hit]) -> list[dict]:
    return [
        {
            "document_id": h.document_id,
            "chunk_id": h.chunk_id,
            "score": round(h.score, 4),
            "source": h.source,
            "text": h.text,
            "version": h.version,
        }
        for h in hits
    ]
