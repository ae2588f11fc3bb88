"""The term side of hybrid retrieval: BM25 sparse vectors, beside the dense embeddings.

One encoder for both stores, so a chunk written by one and a query answered by the other agree
on token ids: Qdrant's own BM25 as qdrant-edge-py ships it (`qdrant_edge.Bm25`, Rust, in this
process; its config mirrors the Qdrant server's `Bm25Config`): word tokenizer, lowercase,
English stop words and Snowball stemmer, token ids hashed from the stemmed words. It loads
nothing from a hub or the disk. A chunk gets term-frequency weights (`embed_document`, k 1.2,
b 0.75, avg_len 256: the server's defaults); a query gets weight 1 per distinct term
(`embed_query`). The IDF half of BM25 is Qdrant's: the sparse vector is declared with the `idf`
modifier, so Qdrant computes each term's IDF over the stored points at search time and a new
upload changes it without re-encoding anything.

The stores encode themselves, from `Chunk.text` on upsert and from `search(text=...)`: every
caller that writes Chunks (the ingestion worker, the RAFT trainer's temporary store) gets both
vectors without knowing about this module.

Changing the encoder's config changes every stored vector: treat it like CHUNK_ID_NAMESPACE.
"""

from __future__ import annotations

import re
import threading

import qdrant_edge as qe

# The sparse vector's name in both stores (the dense vector keeps the unnamed slot "", so a
# collection made before hybrid search has the same dense layout).
SPARSE_VECTOR = "text-bm25"

# Reciprocal rank fusion of the dense and the sparse candidates: score = sum of 1 / (k + rank).
# k = 2 is Qdrant's own default; bench/hybrid.py measures it against a flatter k.
RRF_K = 2

# A query's identifiers (codes, SKUs, section numbers, zone and reason codes): a word that mixes
# letters and digits (F3362, FZ2, 4.2b), an upper-case word (RCL, QA), or one marked with @ or !.
# The floor rule (ingest/retrieval.py) lets a term hit that holds one through. (Weighing them
# above 1 in the query's term vector was measured too, bench/hybrid.py: codes gained a little
# at k 2-3, names lost as much; not done.)
_WORD = re.compile(r"[@!#]?[A-Za-z0-9][\w.-]*[A-Za-z0-9]|[@!#]?[A-Za-z0-9]")

_local = threading.local()


def identifiers(text: str | None) -> set[str]:
    """The identifier-shaped words of `text`, as written (without a leading @, ! or #)."""
    found = set()
    for word in _WORD.findall(text or ""):
        bare = word.lstrip("@!#")
        has_digit = any(c.isdigit() for c in bare)
        has_alpha = any(c.isalpha() for c in bare)
        if (
            (has_digit and has_alpha)
            or (len(bare) >= 2 and bare.isupper())
            or (word[0] in "@!" and has_alpha)
        ):
            found.add(bare)
    return found


def holds_identifier(text: str, names: set[str]) -> bool:
    """Whether `text` holds one of the identifiers `names` as a whole word (case as written)."""
    return any(re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", text) for n in names)


def _model() -> qe.Bm25:
    # One model per thread: encoding is cheap, and nothing is shared across threads.
    model = getattr(_local, "model", None)
    if model is None:
        model = _local.model = qe.Bm25(qe.Bm25Config(language="english"))
    return model


def document_terms(text: str) -> tuple[list[int], list[float]]:
    """(indices, values) of a chunk's BM25 term-frequency vector; empty for text of stop words."""
    v = _model().embed_document(text or "")
    return list(v.indices), list(v.values)


def query_terms(text: str | None) -> tuple[list[int], list[float]]:
    """(indices, values) of a query's term vector (1 per distinct term); empty when the query
    has no indexable word (then there is nothing for the term side to match)."""
    if not text:
        return [], []
    v = _model().embed_query(text)
    return list(v.indices), list(v.values)
