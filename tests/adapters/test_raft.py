"""RAFT context for training: oracle passages found from the answer's own rare terms, hard
negatives from a real search of the served store, the serving top_k / floor / budget, and the
share of context rows left without their oracle."""

from __future__ import annotations

import random

import pytest

import ingest.store_edge
from adapters.datacheck import normalise_rows
from adapters.raft import (
    MAX_ORACLES,
    OracleFinder,
    ServedRetriever,
    compose_context,
    counterfactual,
    looked_up,
    plan_context,
    substitute,
    terms,
)
from core.settings import EmbeddingSettings, QdrantSettings
from ingest.context import CONTEXT_HEADER

# A small manual: the syntax pages name some codes in their examples; the catalogue pages hold
# the products' codes; the zone page the zones.
MANUAL = [
    "Move statement. Syntax: move SKU xQTY @FROM -> @TO; Example: move F2041 x40 @RF1 -> @FZ1; "
    "moves forty units from the reefer dock into FZ1.",
    "Hold and release. Syntax: hold SKU @ZONE !REASON; Reasons: TMP temperature, DMG damaged, "
    "CNT count mismatch. Example: hold C5220 @CH2 !TMP;",
    "Zones. FZ1 and FZ2 are freezers, CH1 and CH2 chilled rooms, AM1 and AM2 ambient aisles, "
    "RF1 the reefer dock, D1 and D2 the loading docks.",
    "Chilled catalogue. Salted butter 250 g is C1107. Greek yoghurt 1 kg is C3318. Smoked salmon "
    "is C4410. Chilled products stay in CH1 or CH2.",
    "Frozen catalogue. Garden peas 1 kg is F2041. Fish fingers are F3310. Vanilla ice cream is "
    "F5120. Frozen products stay in FZ1 or FZ2.",
    "Count statement. Syntax: count @ZONE every 12h; counts a zone on a schedule. Example: "
    "count @AM1 every 7d;",
]


def test_terms_are_the_codes_words_and_numbers_case_folded() -> None:
    assert terms("hold C1107 @CH2 !TMP; x40 -> 7") == {"hold", "c1107", "ch2", "tmp", "x40", "7"}


def test_the_oracle_is_the_chunk_holding_the_answers_rare_code_not_the_nearest_page() -> None:
    find = OracleFinder(MANUAL)
    instruction = "Block the salted butter in chilled room two: it got too warm."
    answer = "hold C1107 @CH2 !TMP;"
    oracles = find(answer, instruction)
    # the catalogue page holds C1107, which no other chunk holds, beside the instruction's
    # "salted butter"; then the hold page (hold, TMP); the zone page adds nothing rare after them
    assert oracles == [3, 1], oracles
    # a code that a syntax page's example happens to use is not its source: the catalogue
    # page, which also names the product, is
    peas = find("move F2041 x5 @RF1 -> @FZ2;", "Move five bags of garden peas into freezer two.")
    assert peas[0] == 4, peas
    # a term the instruction states weighs half; a term in no chunk or every chunk nothing
    w = find.weights("hold C1107 zz99", "C1107 please")
    assert "zz99" not in w and w["c1107"] == pytest.approx(0.5 * find.weights("C1107")["c1107"])
    everywhere = OracleFinder(["code Q1 here", "code Q2 there"])
    assert "code" not in everywhere.weights("code Q1") and everywhere("code Q1") == [0]
    # nothing rare in the answer (a term in 3 of 4 chunks): no oracle rather than a guess
    assert OracleFinder(["ab c1", "ab c2", "ab c3", "de c4"])("ab", "") == []
    assert OracleFinder(["ab c1", "ab c2", "ab c3", "de c4"])("ab c2", "") == [1]


def test_compose_context_keeps_the_oracle_then_fills_with_served_hits_in_order() -> None:
    ranked = [(4, 0.8), (0, 0.7), (2, 0.5), (5, 0.3), (1, 0.2)]
    tokens = [100] * 6
    # oracle 3 was not ranked: it goes after the ranked ones; hits follow retrieval order
    got = compose_context(ranked, [3], tokens, top_k=3, min_score=0.0, max_tokens=1000)
    assert got == [4, 0, 3]
    # the ranked oracle sits at its rank
    assert compose_context(ranked, [2], tokens, top_k=3, min_score=0.0, max_tokens=1000) == [
        4,
        0,
        2,
    ]
    # the floor drops hits below it (never the oracle), the budget stops at the first misfit
    assert compose_context(ranked, [1], tokens, top_k=4, min_score=0.45, max_tokens=1000) == [
        4,
        0,
        2,
        1,
    ]
    assert compose_context(ranked, [], tokens, top_k=4, min_score=0.0, max_tokens=250) == [4, 0]
    assert compose_context(ranked, [], tokens, top_k=4, min_score=0.9, max_tokens=250) == []


@pytest.fixture(scope="module")
def retriever():
    with ServedRetriever(MANUAL, EmbeddingSettings(), QdrantSettings()) as r:
        yield r


def test_the_served_retriever_is_a_real_store_search_with_the_query_text(
    retriever, monkeypatch
) -> None:
    calls: list[dict] = []
    real = ingest.store_edge.EdgeChunkStore.search

    def spy(self, tenant_id, vector, top_k, **kw):
        calls.append({"k": top_k, **kw})
        return real(self, tenant_id, vector, top_k, **kw)

    monkeypatch.setattr(ingest.store_edge.EdgeChunkStore, "search", spy)
    ranked = retriever.search("which products are in the frozen catalogue?", 64)
    assert calls == [{"k": len(MANUAL), "text": "which products are in the frozen catalogue?"}]
    assert [i for i, _ in ranked][0] == 4 and len(ranked) == len(MANUAL)
    assert retriever.tokens == [retriever.embedder.count_tokens(c) for c in MANUAL]




def test_the_served_retriever_applies_servings_floor_rule(retriever) -> None:
    """The floor the training context is cut with is serving's rule (ingest.retrieval.passes),
    not a bare cosine cut: a chunk the term side found holding the query's code is shown
    under a floor its cosine misses, as serving shows it."""
    from adapters.raft import RAFT_TENANT
    from ingest.retrieval import passes
    from ingest.sparse import identifiers

    query = "Which product has SKU C3318?"
    code_chunk = next(i for i, text in enumerate(MANUAL) if "C3318" in text)
    hits = retriever.store.search(
        RAFT_TENANT, retriever.embedder.query(query), len(MANUAL), text=query
    )
    cosine = next(h.score for h in hits if h.chunk_index == code_chunk)
    floor = cosine + 0.3  # far above that chunk's cosine
    shown = [i for i, _ in retriever.search(query, len(MANUAL), floor=floor)]
    assert code_chunk in shown
    assert shown == [h.chunk_index for h in hits if passes(h, floor, identifiers(query))]
    assert len(shown) < len(MANUAL)  # the floor did cut something

def rows(n: int) -> list[dict]:
    products = [("salted butter", "C1107"), ("greek yoghurt", "C3318"), ("smoked salmon", "C4410")]
    out = []
    for i in range(n):
        name, code = products[i % 3]
        out.append(
            {
                "prompt": f"Task {i}: hold the {name} in CH{1 + i % 2}, it is damaged.",
                "completion": f"hold {code} @CH{1 + i % 2} !DMG;",
            }
        )
    return out


def test_plan_context_gives_oracle_and_hard_negatives_and_respects_the_oracle_free_share(
    retriever,
) -> None:
    samples, _ = normalise_rows(rows(20))
    plan = plan_context(
        samples,
        MANUAL,
        retriever,
        fraction=0.5,
        oracle_free_share=0.4,
        top_k=3,
        min_score=-1.0,
        max_tokens=600,
        rng=random.Random(0),
    )
    with_ctx = [i for i, k in enumerate(plan.kinds) if k != "none"]
    assert len(with_ctx) == 10
    assert plan.count("oracle_free") == 4 and plan.count("oracle") == 6
    for i in range(20):
        ctx, prompt = plan.contexts[i], plan.prompts[i]
        assert 3 in plan.oracles[i]  # the chilled catalogue holds every code asked for
        if plan.kinds[i] == "none":
            assert ctx == [] and prompt[0]["role"] == "user"
            continue
        assert prompt[0]["role"] == "system" and prompt[0]["content"].startswith(CONTEXT_HEADER)
        assert len(ctx) == 3
        ranked = [c for c, _ in retriever.search(samples[i].instruction, 3 + MAX_ORACLES)]
        given_oracles = [c for c in plan.oracles[i] if c in ctx]
        if plan.kinds[i] == "oracle_free":
            assert not set(plan.oracles[i]) & set(ctx)
        else:
            assert 3 in ctx
        # the others are the served search's best hits, minus the oracles, in its order
        negatives = [c for c in ranked if c not in plan.oracles[i]][: 3 - len(given_oracles)]
        assert sorted(ctx) == sorted(given_oracles + negatives)
        # in retrieval order; an oracle the search did not rank comes last
        assert ctx == sorted(ctx, key=lambda c: ranked.index(c) if c in ranked else len(ranked))


def test_plan_context_cuts_to_the_budget_and_top_k(retriever) -> None:
    samples, _ = normalise_rows(rows(6))
    budget = max(retriever.tokens) + 5  # room for about one chunk
    plan = plan_context(
        samples,
        MANUAL,
        retriever,
        fraction=1.0,
        oracle_free_share=0.0,
        top_k=4,
        min_score=-1.0,
        max_tokens=budget,
        rng=random.Random(0),
    )
    for ctx in plan.contexts:
        assert ctx and sum(retriever.tokens[c] for c in ctx) <= budget
    plan = plan_context(
        samples,
        MANUAL,
        retriever,
        fraction=1.0,
        oracle_free_share=0.0,
        top_k=2,
        min_score=-1.0,
        max_tokens=5000,
        rng=random.Random(0),
    )
    assert all(len(ctx) == 2 for ctx in plan.contexts)


def test_looked_up_facts_are_the_answers_codes_read_from_the_context_not_the_instruction():
    shown = [MANUAL[3], MANUAL[2]]
    answer = "hold C1107 @CH2 !DMG;\nmove C4410 x12 @CH1 -> @D1;"
    instruction = "Hold the salted butter in CH2; move 12 smoked salmon from the dairy room to D1."
    # CH2, D1 and 12 are stated; C1107 and C4410 come from the catalogue, CH1 from the zones
    assert looked_up(answer, instruction, shown) == ["C1107", "C4410", "CH1"]
    assert looked_up(answer, instruction, [MANUAL[0]]) == []  # nothing read from this page


def test_counterfactual_stand_ins_keep_the_shape_and_never_collide():
    rng = random.Random(0)
    taken = {"C1107", "F2041"}
    got = counterfactual(["C1107", "FZ2", "1203", "F2041"], taken, rng)
    assert set(got) == {"C1107", "FZ2", "1203", "F2041"}
    for old, new in got.items():
        assert new != old and len(new) == len(old)
        assert [c.isdigit() for c in new] == [c.isdigit() for c in old]
        assert [c for c in new if not c.isdigit()] == [c for c in old if not c.isdigit()]
    assert got["1203"][0] != "0"
    assert len(set(got.values())) == 4 and not set(got.values()) & {"C1107", "F2041"}
    assert substitute("hold C1107 @FZ2; C11070 stays", got) == (
        f"hold {got['C1107']} @{got['FZ2']}; C11070 stays"
    )


def test_counterfactual_rows_replace_the_looked_up_facts_in_context_and_answer_alike(
    retriever,
) -> None:
    samples, _ = normalise_rows(rows(20))
    kw = dict(fraction=1.0, oracle_free_share=0.25, top_k=3, min_score=-1.0, max_tokens=600)
    plain = plan_context(samples, MANUAL, retriever, rng=random.Random(0), **kw)
    assert plain.counterfactual == 0 and plain.completions == [s.completion for s in samples]
    plan = plan_context(
        samples, MANUAL, retriever, rng=random.Random(0), counterfactual_share=1.0, **kw
    )
    assert plan.kinds == plain.kinds and plan.contexts == plain.contexts
    assert plan.counterfactual == plan.count("oracle") == 15
    real_codes = {"C1107", "C3318", "C4410"}
    for i, s in enumerate(samples):
        system = plan.prompts[i][0]["content"] if plan.kinds[i] != "none" else ""
        if plan.kinds[i] != "oracle":  # oracle-free rows keep the real facts
            assert not plan.replaced[i] and plan.completions[i] == s.completion
            continue
        (old, new), = plan.replaced[i].items()
        assert old in real_codes and old in s.completion and new not in " ".join(MANUAL)
        assert plan.completions[i] == s.completion.replace(old, new)
        assert new in system and old not in system  # the context says the stand-in
        assert plan.prompts[i][-1] == plain.prompts[i][-1]  # the instruction is untouched
