"""The query path's embedding is the index's embedding: `Embedder.query` calls the model without
llama-index's batching wrapper, so it must give the vectors `get_query_embedding` gives."""

from __future__ import annotations

import threading

import numpy as np
import torch

from tests.helpers.knowledge_base import embedder

QUERIES = [
    "Write a Skerry rule that moves pallets from dock 3 to bay 7.",
    "What is the refund window for annual plans?",
    "hi",
    "word " * 400,  # longer than the model's 256 tokens: truncated the same way
]


def test_query_vectors_match_llama_index_query_embedding():
    e = embedder()
    assert e._traced is not None  # the TorchScript path is the one under test
    for q in QUERIES:
        ours = np.asarray(e.query(q))
        theirs = np.asarray(e.model.get_query_embedding(q))
        assert ours.shape == (e.dim,)
        assert abs(np.linalg.norm(ours) - 1.0) < 1e-4
        assert float(ours @ theirs) / np.linalg.norm(theirs) > 0.9999, q


def test_query_threads_do_not_leak_into_batch_embedding():
    from core.settings import EmbeddingSettings
    from ingest.embedding import Embedder

    e = Embedder(EmbeddingSettings(query_threads=1))
    seen = {}

    def run():
        e.query("one query")
        seen["query"] = torch.get_num_threads()
        e.texts(["a batch", "of texts"])
        seen["batch"] = torch.get_num_threads()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen["query"] == 1
    assert seen["batch"] == e._default_threads


def test_a_model_that_cannot_be_traced_stays_eager(monkeypatch, caplog):
    from core.settings import EmbeddingSettings
    from ingest.embedding import Embedder

    def refuse(*a, **k):
        raise RuntimeError("not traceable")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    e = Embedder(EmbeddingSettings())
    assert e._traced is None
    assert "stays eager" in caplog.text and "not traceable" in caplog.text
    q = QUERIES[0]
    assert float(np.asarray(e.query(q)) @ np.asarray(e.model.get_query_embedding(q))) > 0.9999
