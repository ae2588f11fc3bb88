"""The background floor: how high a question that the tenant's documents do not answer scores on
them, measured per tenant, so `auto` needs no calibration to tell "the knowledge base answers
this" from "it does not".

Cosine scores are not comparable across knowledge bases: on a shop's four policy pages a general
question scores at most ~0.15 and an answerable one as low as 0.28, while on a rules language's
manual (it explains boolean conditions, hubs, parcels) general questions reach 0.40. One fixed
floor (0.35) is wrong for both. So ragtune ships forty general questions (capitals, poems, recipes,
science: `data/background_queries.txt`) and, per tenant, searches its knowledge base with each: the
best score any of them reaches is what "unrelated" looks like there, and the floor is that plus
MARGIN, kept within [LOWEST, HIGHEST]. It is used where the tenant's policy leaves `min_score`
unset (the default for new tenants); a number there (set by hand or by `ragtune policy
calibrate`) wins.

The forty are embedded once per process; a tenant's floor is cached for TTL_S seconds (and
recomputed at once when which of its document versions are hidden changes), so a changed
knowledge base moves the floor within that time; recomputing costs one top-1 search per question.
"""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path

from ingest.retrieval import Retriever

QUERIES = Path(__file__).parent / "data" / "background_queries.txt"
MARGIN = 0.1
LOWEST = 0.25
HIGHEST = 0.6
TTL_S = 30.0
_VECTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # embedder -> vectors
_LOCK = threading.Lock()


def background_queries() -> list[str]:
    return [q for q in QUERIES.read_text(encoding="utf-8").splitlines() if q.strip()]


def floor_from(scores: list[float]) -> float:
    """The floor for a knowledge base on which the background questions scored `scores`."""
    best = max(scores, default=0.0)
    return round(min(HIGHEST, max(LOWEST, best + MARGIN)), 4)


class BackgroundFloor:
    def __init__(self, retriever: Retriever, ttl_s: float = TTL_S) -> None:
        self.retriever = retriever
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, tuple, float]] = {}  # tenant -> (at, hidden, floor)

    def vectors(self) -> list:
        """The questions' embeddings, made once per embedder in the process (apps in one
        process, as the tests make them, share the embedder and these)."""
        embedder = self.retriever.embedder
        with _LOCK:
            found = _VECTORS.get(embedder)
            if found is None:
                # embedded as serving embeds a query, so the scores are comparable
                found = [embedder.query(q) for q in background_queries()]
                _VECTORS[embedder] = found
        return found

    def floor(self, tenant_id: str, hidden: list[tuple[str, int]] | None) -> float:
        """Sync (a worker thread). `hidden`: what `DocumentService.readable_in` read for this
        query (None: nothing indexed, and nothing to measure)."""
        if hidden is None:
            return LOWEST
        key = tuple(sorted(hidden))
        now = time.monotonic()
        found = self._cache.get(tenant_id)
        if found is not None and found[1] == key and now - found[0] < self.ttl_s:
            return found[2]
        store = self.retriever.store
        scores = []
        for vector in self.vectors():
            hits = store.search(tenant_id, vector, 1, exclude=hidden)
            top = getattr(hits, "top_score", None)
            if top is None and len(hits):
                top = hits[0].score
            if top is not None:
                scores.append(top)
        value = floor_from(scores)
        self._cache[tenant_id] = (now, key, value)
        if len(self._cache) > 10_000:  # bounded: drop the oldest half
            for t, _ in sorted(self._cache.items(), key=lambda kv: kv[1][0])[:5_000]:
                self._cache.pop(t, None)
        return value
