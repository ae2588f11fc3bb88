"""Retrieval's routing signal and floor rule, and the term encoder they rely on (no model, no
store: hits are built by hand)."""

from __future__ import annotations

import dataclasses

import pytest

from ingest.retrieval import TERM_MARGIN, Retrieval
from ingest.sparse import document_terms, holds_identifier, identifiers, query_terms
from ingest.vector_store import Hit, Hits


def hit(i: int, score: float, text: str = "", terms: float | None = None) -> Hit:
    return Hit(
        chunk_id=f"c{i}",
        document_id="d",
        version=1,
        chunk_index=i,
        score=score,
        source="d.md",
        text=text,
        metadata={},
        terms=terms,
    )


def test_top_score_is_the_dense_top_even_when_fusion_ranks_it_lower() -> None:
    # Hybrid order: a term hit first; the dense top (0.71) is not among the hits at all.
    r = Retrieval([hit(0, 0.2, terms=5.0), hit(1, 0.5)], 0.01, dense_top=0.71)
    assert r.top_score == 0.71
    # Cutting the hits (as the router does for an adapter's top_k) keeps the signal.
    assert dataclasses.replace(r, hits=r.hits[:1]).top_score == 0.71
    # Dense search: the best hit's score.
    assert Retrieval([hit(0, 0.6), hit(1, 0.4)], 0.01).top_score == 0.6
    assert Retrieval([], 0.01).top_score is None
    assert Hits([hit(0, 0.3), hit(1, 0.6)]).top_score == 0.6


@pytest.mark.parametrize(
    ("h", "passes"),
    [
        (hit(0, 0.40), True),  # above the floor: whatever found it
        (hit(0, 0.30), False),  # the dense side alone, below the floor
        (hit(0, 0.35 - TERM_MARGIN + 0.01, "pallets", terms=2.0), True),  # term hit, near
        (hit(0, 0.35 - TERM_MARGIN - 0.01, "pallets", terms=2.0), False),  # term hit, far
        (hit(0, 0.10, "salted butter: `C1203`", terms=4.0), True),  # holds the query's code
        (hit(0, 0.10, "salted butter: `C12034`", terms=4.0), False),  # not as a whole word
        (hit(0, 0.10, "salted butter: `C1203`"), False),  # the term side did not find it
    ],
)
def test_the_floor_rule(h: Hit, passes: bool) -> None:
    r = Retrieval([h], 0.01, query="Which product has SKU C1203?")
    assert (r.above(0.35) == [h]) is passes


def test_identifiers_are_codes_not_words_or_quantities() -> None:
    got = identifiers("Hold SKU F3362 in @FZ2, reason !RCL, order #94429 of 15 units; see 4.2b")
    assert got == {"SKU", "F3362", "FZ2", "RCL", "4.2b"}
    assert identifiers(None) == set() and identifiers("move the peas") == set()
    assert holds_identifier("zone `@FZ2`: the deep-freeze room", {"FZ2"})
    assert not holds_identifier("zone @FZ21", {"FZ2"})


def test_the_term_encoder_is_local_and_stable() -> None:
    # Qdrant's BM25 (qdrant_edge.Bm25): nothing downloaded, the same ids for the same words.
    idx, values = document_terms("Strawberry sorbet, 1 L tub: `F3362`")
    assert idx and len(idx) == len(values) and all(v > 0 for v in values)
    q_idx, q_values = query_terms("strawberry F3362")
    assert set(q_idx) <= set(idx) and q_values == [1.0] * len(q_idx)
    assert query_terms("the of and") == ([], []) and query_terms(None) == ([], [])
