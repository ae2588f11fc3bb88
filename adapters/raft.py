"""RAFT context for training: the chunks, the oracles and the served retriever's hard negatives.

The documents are split as the server's ingestion splits them (its chunking settings, sized in
its embedding model's tokens). For each training row the ORACLE passages are the chunks holding
what the answer uses (its rare codes, names and numbers, IDF-weighted: `OracleFinder`); the
DISTRACTORS are what the served retriever returns for the instruction (`ServedRetriever`: a real
search of a temporary embedded store filled the way ingestion fills it, cut by serving's floor
rule); `compose_context` cuts them to the serving top_k and token budget, in retrieval order,
and `plan_context` decides which rows get context and which of those get distractors only.

COUNTERFACTUAL rows: an adapter shown the right catalogue line still wrote the code it had
memorised for a similar product from the training rows (greek yogurt's `C1150` for salted
butter's `C1203`), because the training answers could be had from memory as well as from the
context. In `counterfactual_share` of the rows with an oracle, each fact the answer takes from the
context (a code or number in the shown chunks and the answer, not in the instruction) is replaced
by a fresh one of the same shape (`F3362` -> `F3817`: digits redrawn, letters kept), in the
context and in the answer alike: there the context is the only way to the answer, so the adapter
learns to read it. Rows without context keep the real facts.
"""

from __future__ import annotations

import math
import random
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.datacheck import Sample
from core.settings import ChunkingSettings, EmbeddingSettings, QdrantSettings
from ingest.context import with_context

# Serving's adapter_rag context (the tenant Policy's top_k / min_score / context_max_tokens in
# service/policy.py; adapters cannot import service). The training record carries the values
# used, so serving can give the adapter the context it was trained with.
DEFAULT_TOP_K = 4
DEFAULT_MIN_SCORE = 0.35
DEFAULT_CONTEXT_MAX_TOKENS = 600
DEFAULT_CONTEXT_FRACTION = 0.5
DEFAULT_ORACLE_FREE_SHARE = 0.2
DEFAULT_COUNTERFACTUAL_SHARE = 0.0  # opt-in: no gain measured on Skerry (bench/dsl_case.py)
MAX_ORACLES = 2
RAFT_TENANT = "raft-training"


def load_context_chunks(
    context_docs: Sequence[str] | Path | str,
    *,
    chunking: ChunkingSettings,
    embedding: EmbeddingSettings,
) -> list[str]:
    """The chunks retrieval would serve from these documents: a list of texts, or the files
    under a folder, read by ingestion's readers and split as the server's ingestion pipeline
    splits them (its chunk settings, sized in its embedding model's tokens), so training
    context looks like serving context."""
    from transformers import AutoTokenizer

    from ingest.embedding import default_model_path
    from ingest.pipeline import ChunkPipeline
    from ingest.readers import TYPES, Section, content_type_for, read_sections

    if isinstance(context_docs, str | Path):
        folder = Path(context_docs)
        if not folder.is_dir():
            raise FileNotFoundError(f"context docs folder {folder} does not exist")
        sections = [
            s
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix.lower() in TYPES
            for s in read_sections(p.read_bytes(), content_type_for(p.name), p.name)
        ]
    else:
        sections = [Section(text, {}) for text in context_docs if text.strip()]
    # The embedding model's own tokenizer, as ChunkPipeline(embedder, chunking) sizes chunks,
    # without loading the model itself.
    tokenizer = AutoTokenizer.from_pretrained(
        embedding.model_path or default_model_path(), local_files_only=True
    )
    splitter = ChunkPipeline.splitter_for(chunking, tokenizer)
    documents = ChunkPipeline.documents(sections)
    chunks = [n.get_content() for n in splitter.get_nodes_from_documents(documents)]
    if not chunks:
        raise ValueError("the context documents hold no text")
    return chunks


_TERM = re.compile(r"[A-Za-z0-9_]+")


def terms(text: str) -> set[str]:
    """The words, codes and numbers of a text, case-folded (`@FZ1` -> `fz1`, `x40` -> `x40`)."""
    return {t.casefold() for t in _TERM.findall(text) if len(t) > 1 or t.isdigit()}


class OracleFinder:
    """Which chunks hold what an answer uses, found from the answer's own terms.

    Each answer term weighs its IDF over the chunks (a code in one chunk weighs much, a keyword
    in most chunks little, a term in every chunk or in none nothing); a term the instruction
    already states weighs half, since the context need not supply it. A chunk is eligible only
    if it holds an answer term found in at most half of the chunks. An eligible chunk also
    scores the instruction's specific terms (in at most LINK_DF chunks) that it holds NEAR an
    answer term the instruction does not state (within LINK_WINDOW words):
    they are what ties the fact to the question ("fish fingers" beside `F2215` on the
    catalogue page), and they keep a manual example that merely uses the same code (`move F2215
    x24 ...` on the move page) from passing for the source of the fact; an adapter trained on
    such a coincidence learns to copy the examples' values. Chunks are picked greedily, each
    for the answer terms not yet covered, up to `max_oracles`."""

    LINK_WINDOW = 6
    LINK_DF = 3

    def __init__(self, chunks: Sequence[str], max_oracles: int = MAX_ORACLES) -> None:
        self.words = [[t.casefold() for t in _TERM.findall(c)] for c in chunks]
        self.chunk_terms = [terms(c) for c in chunks]
        self.df = Counter(t for ts in self.chunk_terms for t in ts)
        self.n = len(chunks)
        self.max_oracles = max_oracles
        self.rare = math.log(2) * 0.999  # IDF of a term in half of the chunks

    def idf(self, term: str) -> float:
        df = self.df[term]
        return math.log(self.n / df) if 0 < df < self.n else 0.0

    def weights(self, answer: str, instruction: str = "") -> dict[str, float]:
        stated = terms(instruction)
        weights = {t: self.idf(t) * (0.5 if t in stated else 1.0) for t in terms(answer)}
        return {t: w for t, w in weights.items() if w > 0}

    def links(self, i: int, answer_terms: set[str], instruction_terms: set[str]) -> set[str]:
        """The instruction's terms found within LINK_WINDOW words of an answer term in chunk i."""
        words, w = self.words[i], self.LINK_WINDOW
        near: set[str] = set()
        for pos, word in enumerate(words):
            if word in answer_terms:
                near.update(words[max(0, pos - w) : pos + w + 1])
        return near & instruction_terms

    def __call__(self, answer: str, instruction: str = "") -> list[int]:
        wanted = self.weights(answer, instruction)
        rare = {t for t in wanted if self.idf(t) >= self.rare}
        stated = terms(instruction)
        # the question's specific words (in at most LINK_DF chunks), not its function words
        asked = {t for t in stated - terms(answer) if 0 < self.df[t] <= self.LINK_DF}
        picked: list[int] = []
        while rare and len(picked) < self.max_oracles:
            scored = []
            for i, ts in enumerate(self.chunk_terms):
                if i in picked or not rare & ts:
                    continue
                held = {t for t in wanted if t in ts}
                linked = self.links(i, held - stated, asked)
                gain = sum(wanted[t] for t in held) + sum(self.idf(t) for t in linked)
                scored.append((gain, -i))
            if not scored:
                break
            best = -max(scored)[1]
            picked.append(best)
            covered = self.chunk_terms[best]
            wanted = {t: w for t, w in wanted.items() if t not in covered}
            rare -= covered
        return picked


_FACT = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z0-9_]*[0-9][A-Za-z0-9_]*(?![A-Za-z0-9_])")


def looked_up(answer: str, instruction: str, shown: Sequence[str]) -> list[str]:
    """The facts the answer takes from the shown chunks: its tokens holding a digit (codes,
    numbers; `F3362`, `FZ2`, `1203`) found as whole words in a shown chunk and not stated in the
    instruction. In order of first use."""
    stated = set(_FACT.findall(instruction))
    held = {t for text in shown for t in _FACT.findall(text)}
    out: list[str] = []
    for t in _FACT.findall(answer):
        if t in held and t not in stated and t not in out:
            out.append(t)
    return out


def counterfactual(
    facts: Sequence[str], taken: set[str], rng: random.Random, tries: int = 50
) -> dict[str, str]:
    """A fresh stand-in for each fact: the same letters, its digits redrawn (no leading zero
    where it had none), different from every token in `taken` (grown with what it picks)."""
    out: dict[str, str] = {}
    for fact in facts:
        for _ in range(tries):
            new = "".join(_redraw(fact, i, rng) for i in range(len(fact)))
            if new != fact and new not in taken:
                out[fact] = new
                taken.add(new)
                break
    return out


def _redraw(fact: str, i: int, rng: random.Random) -> str:
    ch = fact[i]
    if not ch.isdigit():
        return ch
    leads = i == 0 or not fact[i - 1].isdigit()
    return rng.choice("123456789" if leads and ch != "0" else "0123456789")


def substitute(text: str, mapping: dict[str, str]) -> str:
    if not mapping:
        return text
    return _FACT.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


@dataclass
class ContextPlan:
    """Per sample: the prompt messages, the answer to train on, and what its context holds."""

    prompts: list[list[dict]]
    kinds: list[str]  # "none" | "oracle" | "oracle_free" | "retrieved" (no oracle found)
    oracles: list[list[int]]  # chunk indices found for each sample (even where left out)
    contexts: list[list[int]]  # chunk indices given, in the order shown
    completions: list[str]  # the sample's answer, its looked-up facts replaced where counterfactual
    replaced: list[dict[str, str]]  # per sample: fact -> stand-in (empty: the real facts)

    @property
    def counterfactual(self) -> int:
        return sum(1 for r in self.replaced if r)

    def count(self, kind: str) -> int:
        return self.kinds.count(kind)


class ServedRetriever:
    """The served retriever over the context chunks: a temporary embedded Qdrant store, filled
    as ingestion fills it (the server's embedder, token counts), searched as serving searches
    (the query embedded by the query path, `text=` for stores that also match terms)."""

    def __init__(
        self, chunks: Sequence[str], embedding: EmbeddingSettings, qdrant: QdrantSettings
    ) -> None:
        from ingest.embedding import shared_embedder
        from ingest.store_edge import EdgeChunkStore
        from ingest.vector_store import Chunk, chunk_id

        self.embedder = shared_embedder(embedding)
        self.chunks = list(chunks)
        self.tokens = [self.embedder.count_tokens(c) for c in self.chunks]
        self._dir = tempfile.TemporaryDirectory(prefix="ragtune-raft-")
        self.store = EdgeChunkStore(Path(self._dir.name) / "store", qdrant)
        vectors = self.embedder.texts(self.chunks)
        self.store.ensure_collection(len(vectors[0]))
        self.store.upsert(
            [
                Chunk(
                    id=chunk_id(RAFT_TENANT, "context", 1, i),
                    tenant_id=RAFT_TENANT,
                    document_id="context",
                    version=1,
                    chunk_index=i,
                    text=text,
                    source="context",
                    vector=list(vector),
                    tokens=n,
                )
                for i, (text, vector, n) in enumerate(
                    zip(self.chunks, vectors, self.tokens, strict=True)
                )
            ]
        )

    def search(self, query: str, k: int, floor: float | None = None) -> list[tuple[int, float]]:
        """(chunk index, score), best first, as the served search ranks them; with `floor`,
        only the hits serving would show under that floor (its one rule,
        `ingest.retrieval.passes`: a term hit holding the query's code passes below it)."""
        from ingest.retrieval import passes
        from ingest.sparse import identifiers

        vector = self.embedder.query(query)
        hits = self.store.search(RAFT_TENANT, vector, min(k, len(self.chunks)), text=query)
        if floor is not None:
            names = identifiers(query)
            hits = [h for h in hits if passes(h, floor, names)]
        return [(h.chunk_index, h.score) for h in hits]

    def close(self) -> None:
        self.store.close()
        self._dir.cleanup()

    def __enter__(self) -> ServedRetriever:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def compose_context(
    ranked: Sequence[tuple[int, float]],
    oracles: Sequence[int],
    tokens: Sequence[int],
    *,
    top_k: int,
    min_score: float,
    max_tokens: int,
    leave_out: Sequence[int] = (),
) -> list[int]:
    """Chunk indices to show: the oracles (always, if they fit the budget), then the served
    hits above the floor in retrieval order (the hard negatives), none of `leave_out` (the
    oracles of a row trained without them), up to top_k chunks and `max_tokens` (the served
    budget, in the embedding model's tokens); shown in retrieval order, an oracle the search
    did not rank after the ranked ones."""
    rank = {i: r for r, (i, _) in enumerate(ranked)}
    kept: list[int] = []
    used = 0
    for i in oracles[:top_k]:
        if used + tokens[i] <= max_tokens or not kept:
            kept.append(i)
            used += tokens[i]
    for i, score in ranked:
        if len(kept) >= top_k:
            break
        if i in kept or i in leave_out or score < min_score:
            continue
        if used + tokens[i] > max_tokens:
            break  # serving's fit_to_budget stops at the first chunk that does not fit
        kept.append(i)
        used += tokens[i]
    return sorted(kept, key=lambda i: (rank.get(i, len(rank)), i))


def plan_context(
    samples: Sequence[Sample],
    chunks: Sequence[str],
    retriever: Any,
    *,
    fraction: float,
    oracle_free_share: float,
    top_k: int,
    min_score: float,
    max_tokens: int,
    rng: random.Random,
    counterfactual_share: float = 0.0,
) -> ContextPlan:
    """`round(fraction * n)` randomly chosen samples get context; of those,
    `round(oracle_free_share * chosen)` (among those with an oracle) get the distractors only,
    and `counterfactual_share` of the rest have the facts they look up replaced (module doc).
    `retriever` has `search(query, k) -> [(chunk index, score)]` and `tokens` per chunk."""
    find = OracleFinder(chunks)
    n = len(samples)
    chosen = sorted(rng.sample(range(n), round(fraction * n)))
    oracles = [find(s.completion, s.instruction) for s in samples]
    with_oracle = [i for i in chosen if oracles[i]]
    free = set(
        rng.sample(with_oracle, min(len(with_oracle), round(oracle_free_share * len(chosen))))
    )
    kinds = ["none"] * n
    contexts: list[list[int]] = [[] for _ in range(n)]
    # The served search's own top_k, plus room for the oracles it may hold: left out of an
    # oracle-free row, they leave top_k distractors; an oracle it did not rank comes last.
    depth = top_k + MAX_ORACLES
    for i in chosen:
        # Serving's floor rule picks what may be shown; compose_context cuts no further.
        ranked = retriever.search(samples[i].instruction, depth, floor=min_score)
        given = [] if i in free else oracles[i]
        contexts[i] = compose_context(
            ranked,
            given,
            retriever.tokens,
            top_k=top_k,
            min_score=float("-inf"),
            max_tokens=max_tokens,
            leave_out=oracles[i],
        )
        kinds[i] = "oracle_free" if i in free else "oracle" if oracles[i] else "retrieved"
    replaced: list[dict[str, str]] = [{} for _ in range(n)]
    if counterfactual_share > 0:
        taken = {t for text in chunks for t in _FACT.findall(text)}
        taken |= {t for s in samples for t in _FACT.findall(s.completion + s.instruction)}
        candidates = []
        for i in chosen:
            if kinds[i] != "oracle":
                continue
            facts = looked_up(
                samples[i].completion, samples[i].instruction, [chunks[c] for c in contexts[i]]
            )
            if facts:
                candidates.append((i, facts))
        for i, facts in rng.sample(candidates, round(counterfactual_share * len(candidates))):
            replaced[i] = counterfactual(facts, taken, rng)
    prompts = [
        with_context(s.messages, [substitute(chunks[c], replaced[i]) for c in contexts[i]])
        for i, s in enumerate(samples)
    ]
    completions = [substitute(s.completion, replaced[i]) for i, s in enumerate(samples)]
    return ContextPlan(prompts, kinds, oracles, contexts, completions, replaced)
