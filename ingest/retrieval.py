"""Retrieval for the rag and adapter_rag paths: embed the question, search the tenant's current
chunks (never another tenant's: the store filters on tenant_id), drop what is below the floor."""

from __future__ import annotations

import time
from dataclasses import dataclass

from core.errors import APIError, RetrievalUnavailable
from ingest.documents import DocumentService
from ingest.embedding import Embedder
from ingest.sparse import holds_identifier, identifiers
from ingest.vector_store import ChunkStore, Hit


@dataclass
class Retrieval:
    hits: list[Hit]
    seconds: float
    # The best dense cosine of the tenant's chunks (the store's `Hits.top_score`); None: the
    # best of `hits`. Kept apart because a hybrid search's first hit need not be the dense top.
    dense_top: float | None = None
    query: str | None = None  # the question searched (its identifiers count in `above`)

    @property
    def top_score(self) -> float | None:
        """The routing signal: the best dense cosine, whatever the search mode."""
        if self.dense_top is not None:
            return self.dense_top
        return max((h.score for h in self.hits), default=None)

    def above(self, floor: float) -> list[Hit]:
        """The hits that may reach the model under this floor, in retrieval order (see
        `passes`)."""
        names = identifiers(self.query)
        return [h for h in self.hits if passes(h, floor, names)]


def passes(hit: Hit, floor: float, names: set[str] = frozenset()) -> bool:
    """The floor rule. A chunk reaches the model when its dense cosine is at least `floor`.
    A chunk the term side of a hybrid search found (`hit.terms` set) also passes when
    - it holds one of the query's identifiers (`names`: codes, SKUs, zone or section codes,
      ingest/sparse.py) as written, whatever its cosine: an exact rare term the embedding does
      not weigh (the catalogue chunk holding "C1150" scores ~0.2 against "Which product has
      SKU C1150?"), or
    - its cosine is at least `floor - TERM_MARGIN`: it shares words with the query (a product
      or place named in words) and is nearly as close as the floor asks.
    Chosen on bench/hybrid.py's fact recall (the floor alone, each half alone, both)."""
    if hit.score >= floor:
        return True
    if hit.terms is None:
        return False
    return hit.score >= floor - TERM_MARGIN or (
        bool(names) and holds_identifier(hit.text, names)
    )


TERM_MARGIN = 0.1


class Retriever:
    def __init__(self, store: ChunkStore, embedder: Embedder, documents: DocumentService) -> None:
        self.store = store
        self.embedder = embedder
        self.documents = documents

    def retrieve(
        self, tenant_id: str, query: str, top_k: int,
        hidden: list[tuple[str, int]] | None, vector=None, steps: dict[str, float] | None = None,
        documents: frozenset[str] | None = None, min_score: float | None = None,
    ) -> Retrieval:
        """Sync (run it in a thread). `hidden`: what `DocumentService.readable_in` read (None:
        nothing indexed); `vector`: the query's embedding when the caller has it; `steps`
        gets the seconds of "embed" and "search" where they ran; `documents`: only these
        documents' chunks (a vector store's; None: all of the tenant's); `min_score`: no hit
        below it. Raises RetrievalUnavailable when the store (or the query's embedding)
        fails."""
        started = time.perf_counter()
        steps = {} if steps is None else steps
        try:
            if hidden is None or (documents is not None and not documents):
                # Nothing indexed, or nothing in scope: no need to embed the question (the
                # common case for tenants without a knowledge base).
                return Retrieval([], time.perf_counter() - started)
            if vector is None:
                vector = self.embedder.query(query)
                steps["embed"] = time.perf_counter() - started
            searched = time.perf_counter()
            hits = self.store.search(tenant_id, vector, top_k, exclude=hidden, text=query,
                                     documents=documents, min_score=min_score)
            steps["search"] = time.perf_counter() - searched
        except APIError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure is the same to the caller
            raise RetrievalUnavailable(f"the knowledge base is unavailable: {exc}") from exc
        return Retrieval(
            hits, time.perf_counter() - started, getattr(hits, "top_score", None), query
        )


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
