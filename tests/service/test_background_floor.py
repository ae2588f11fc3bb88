"""The uncalibrated signals of `auto`: the background floor (how high general questions score on
a tenant's knowledge base, plus a margin, within bounds; cached per tenant until its documents
change) and the adapter a query names. The example tenants routed with these defaults, through
the real embeddings and store, are in test_policy_auto.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from adapters.catalog import ServedAdapter
from ingest.embedding import default_model_path
from ingest.vector_store import Hits
from service.background import (
    HIGHEST,
    LOWEST,
    MARGIN,
    BackgroundFloor,
    background_queries,
    floor_from,
)
from service.path_router import AdapterNames
from service.policy import AdapterMatch, Policy, decide_auto


@pytest.mark.parametrize(
    ("scores", "floor"),
    [([], LOWEST), ([0.05, 0.12], LOWEST), ([0.2, 0.31], round(0.31 + MARGIN, 4)),
     ([0.58], HIGHEST), ([-0.2], LOWEST)],
)
def test_the_floor_is_the_best_background_score_plus_a_margin_within_bounds(scores, floor):
    assert floor_from(scores) == floor


class CountingStore:
    """Answers each search with a fixed top score and counts them (the caching is the test)."""

    def __init__(self, top: float) -> None:
        self.top, self.searches = top, 0

    def search(self, tenant_id, vector, top_k, *, exclude=(), **kw):
        self.searches += 1
        return Hits([], self.top)


class Embedder:
    def query(self, text: str) -> list[float]:
        return [0.0]


def background(store, ttl_s=60.0) -> BackgroundFloor:
    retriever = SimpleNamespace(store=store, embedder=Embedder())
    return BackgroundFloor(retriever, ttl_s=ttl_s)


def test_a_tenants_floor_is_measured_once_until_its_documents_change():
    store = CountingStore(0.3)
    floors = background(store)
    n = len(background_queries())
    assert n >= 30
    assert floors.floor("acme", []) == pytest.approx(0.4)
    assert store.searches == n
    assert floors.floor("acme", []) == pytest.approx(0.4)
    assert store.searches == n  # cached
    store.top = 0.45
    assert floors.floor("acme", [("manual", 1)]) == pytest.approx(0.55)  # a version hidden now
    assert store.searches == 2 * n
    assert floors.floor("other", []) == pytest.approx(0.55)  # per tenant
    assert floors.floor("acme", None) == LOWEST  # nothing indexed: nothing searched
    assert store.searches == 3 * n


def test_the_cache_expires():
    store = CountingStore(0.3)
    floors = background(store, ttl_s=0.0)
    floors.floor("acme", [])
    floors.floor("acme", [])
    assert store.searches == 2 * len(background_queries())


@pytest.fixture(scope="module")
def names() -> AdapterNames:
    return AdapterNames(AutoTokenizer.from_pretrained(default_model_path()))


def adapter(name: str) -> ServedAdapter:
    return ServedAdapter("t", name, 1, f"t--{name}--v1", "/x")


@pytest.mark.parametrize(
    ("name", "words"),
    [("skerry", ("skerry",)), ("brisling-v2", ("brisling",)), ("orders", ()), ("sql-v2", ()),
     ("pick", ()), ("warelang_rules", ("warelang",))],
)
def test_only_a_made_up_name_counts(names, name, words):
    """A word the embedding model has one token for ("orders") says too little to decide on."""
    assert names.words(name) == words


@pytest.mark.parametrize(
    ("query", "named"),
    [("Write this in Skerry: count FZ1 daily.", {"skerry"}),
     ("What does the skerry's manual say?", {"skerry"}),
     ("SKERRY please", {"skerry"}),
     ("Skerryland is an island", set()),
     ("Place the orders for Monday", set())],
)
def test_a_query_names_an_adapter_by_the_whole_word(names, query, named):
    assert names.named_in(query, [adapter("skerry"), adapter("orders")]) == named


def test_a_named_adapter_takes_the_query_whatever_its_similarity():
    policy = Policy()
    d = decide_auto(policy, 0.9, AdapterMatch("skerry@1", 0.2, named=True), floor=0.4)
    assert (d.path, d.adapter, d.kind) == ("adapter_rag", "skerry@1", "auto_adapter")
    assert "names adapter skerry@1" in d.reason and d.signals["adapter_named"] is True
    d = decide_auto(policy, 0.9, AdapterMatch("skerry@1", 0.2), floor=0.4)
    assert d.path == "rag"


def test_the_floor_is_the_policys_when_set_else_the_background_one():
    unset = decide_auto(Policy(), 0.3, None, floor=0.26)
    assert unset.path == "rag" and unset.signals["floor_from"] == "background"
    assert "background floor 0.26" in unset.reason
    assert decide_auto(Policy(), 0.3, None, floor=0.45).path == "prompt"
    fixed = decide_auto(Policy(min_score=0.35), 0.3, None, floor=0.26)
    assert fixed.path == "prompt" and fixed.signals["floor_from"] == "policy"
    assert fixed.signals["floor"] == 0.35
