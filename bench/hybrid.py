"""The auto policy's retrieval signal: does BM25, or dense + BM25, tell "the knowledge base is
relevant" from "it is not" better than the dense top score alone, on the labeled query sets?

No server: the example tenants' knowledge bases are chunked exactly as ingestion chunks them
(`ingest.readers.read_sections` per file, then `ChunkPipeline.splitter_for(ChunkingSettings())`,
160-token chunks with 24 of overlap, in the embedding model's tokens) and embedded with ragtune's
own `Embedder` (all-MiniLM-L6-v2, bf16, as served). Halvard: the Skerry manual; Zephyr: its four
policy pages; the plain tenant has no documents, so its queries always go to the prompt path and
are right whatever the signal (counted only in the totals). Per labeled query (the text the
service embeds: the last user message), the signals are

- dense: the top cosine of the query's embedding over the tenant's chunk vectors (exact, numpy):
  what the service's search returns as `top_score`, the signal `decide_auto` uses today;
- bm25: the top BM25 score over the same chunks, per tenant, with `bm25s` set up as llama-index's
  BM25Retriever sets it up (Lucene BM25, k1 1.5, b 0.75, English stop words, Snowball English
  stemmer from PyStemmer);
- bm25n: bm25 over the highest score the query could reach in this index, the sum of its tokens'
  IDFs (bm25s's Lucene IDF, log(1 + (N - df + 0.5) / (df + 0.5)); a token no chunk holds gets
  the IDF of df 0): the share of the query's informative terms the best chunk matches, in
  [0, 1), comparable across queries of different lengths and across tenants;
- mean: (dense + bm25n) / 2, a fixed-weight hybrid score;
- either: relevant when dense >= its own fitted threshold or bm25n >= its own (each fitted alone,
  as below); its score, for the AUC and the gap, is the larger of the two margins, each in units
  of its signal's range on the fit rows, so it depends on the fitted thresholds;
- dense@0.35: dense at the policy's default floor (`Policy.min_score`), nothing fitted.

The question asked of each is binary, per tenant: relevant (label rag or adapter_rag) or not
(label prompt), relevant when score >= threshold, as in `decide_auto`. The threshold is fitted on
the even rows (0-based) to the best accuracy there, ties going to the widest gap between
neighbouring scores, the threshold at its midpoint (as `ragtune policy calibrate` places it);
it is then scored on the odd rows (held out) and on all rows; "2-fold" adds the reverse (fit on
the odd rows, score the even ones) to the held-out count, so every row is scored once unseen.
Nothing but the threshold(s) is fitted: the hybrid's weight stays 1/2, BM25's k1 and b stay
the library's defaults.

Two threshold-free figures of separation over all of a tenant's rows: AUC (ROC, ties count one
half; 1.0 means some threshold separates relevant from not perfectly), and, because AUC is 1.0
for every separable signal however narrow its margin, the gap: (lowest relevant score - highest
prompt score) over the range of the signal on those rows, negative when the classes overlap,
larger meaning a threshold has more room. Printed: per-query scores with --scores, one table,
and the queries each signal gets wrong.

Then the same, with the top score as the service computes it in each retrieval mode: `hybrid`
is `top_score` of ragtune's own Edge store searched in hybrid mode (dense + BM25 terms fused by
Qdrant's RRF): it is the dense top by construction, and the table shows it.

Fact recall (the Halvard DSL tenant, served as ragtune serves it: its manual in an Edge store,
searched through `Retriever`-equivalent calls, the floor applied by `Retrieval.above`): the
share of tasks whose needed codes all reach the model, at serving k (the first k hits, then the
floor), dense vs hybrid, for each k in --ks. Three query kinds:

- names: the 20 rows of examples/dsl/data/test.jsonl with `needs_manual` (a product or zone
  named in words, "salted butter", "the returns dock"; its code is in the manual only). A fact
  is served when one served chunk holds both the name and its code (the catalogue or zone line).
- codes: one question per catalogue product and zone naming its code ("Which product has SKU
  F3362, and where is it stored?"); served when a chunk holds the code and its name.
- prose: the manual questions labelled `rag` in labeled_queries.jsonl, each with the manual's
  line that answers it (PROSE_ANSWERS); served when a chunk holds that line.

Floors: the policy's default 0.35 (`Policy().min_score`) with the service's rule
(`Retrieval.above`: cosine, or a term hit holding a query identifier, or a term hit within
0.1 of the floor) and the plain cosine rule for comparison. "oracle" is the best any ranking
can do at k (some tasks need facts from up to four pages). Goal: fact recall >= 0.95 for the
chosen mode.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/hybrid.py [--scores] [--ks 2,3,4,6,8]

Needs `bm25s` and `PyStemmer` (the dev extra, which `make install` installs).
Runs on one torch thread: about 20 s on a 2-core machine, most of it loading the model.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.settings import ChunkingSettings, EmbeddingSettings, QdrantSettings  # noqa: E402
from ingest.pipeline import ChunkPipeline  # noqa: E402
from ingest.readers import content_type_for, read_sections  # noqa: E402
from ingest.retrieval import Retrieval  # noqa: E402
from ingest.vector_store import Chunk, chunk_id  # noqa: E402
from service.policy import Policy  # noqa: E402

EX = REPO / "examples"
# tenant -> (labeled queries, knowledge-base folder or None)
TENANTS: dict[str, tuple[Path, Path | None]] = {
    "halvard": (EX / "dsl" / "labeled_queries.jsonl", EX / "dsl" / "manual"),
    "zephyr": (EX / "policy_docs" / "labeled_queries.jsonl", EX / "policy_docs" / "docs"),
    "plain": (EX / "plain" / "labeled_queries.jsonl", None),
}
SIGNALS = ("dense", "hybrid", "bm25", "bm25n", "mean", "either", "dense@0.35")
DEFAULT_FLOOR = Policy().min_score
# The labelled manual questions (path rag) and the manual line that answers each.
PROSE_ANSWERS = {
    "Which zone holds frozen goods?": "`@FZ1`: the main freezer",
    "What does reason code !RCL mean?": "`!RCL`: supplier recall",
    "What is the SKU of salted butter?": "salted butter, 250 g: `C1203`",
    "Which dock handles returns?": "`@D4`: the returns dock",
    "Where is ice cream stored in the Trondheim warehouse?": "`@FZ2`: the deep-freeze room",
    "How often must the chilled zones be counted under house policy?":
        "House policy: count the frozen and chilled zones",
    "What product family do SKUs starting with A9 belong to?": "`A9...` non-food",
}
END_MARGIN = 0.05  # thresholds tried beyond the lowest and highest score (as calibrate does)


@dataclass
class Row:
    query: str
    label: str
    dense: float
    bm25: float
    bm25n: float
    hybrid: float = float("nan")  # top_score of ragtune's store searched in hybrid mode

    @property
    def relevant(self) -> bool:
        return self.label in ("rag", "adapter_rag")


@dataclass
class Fit:
    signal: str
    threshold: str
    auc: float
    gap: float  # (lowest relevant score - highest prompt score) / the scores' range
    held_right: int
    held_n: int
    fold_right: int  # 2-fold: fit on even rows, test odd; plus fit on odd rows, test even
    all_right: int
    all_n: int
    wrong: list[tuple[int, Row, float]] = field(default_factory=list)  # (index, row, score)
    fold_wrong: list[tuple[int, Row, float]] = field(default_factory=list)  # even rows, odd fit


def labeled(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chunk_texts(folder: Path, splitter) -> list[str]:
    """Each Markdown file as one upload would index it: its sections, split by the splitter."""
    texts = []
    for f in sorted(folder.glob("*.md")):
        sections = read_sections(f.read_bytes(), content_type_for(f.name), f.name)
        nodes = splitter.get_nodes_from_documents(ChunkPipeline.documents(sections))
        texts += [n.get_content() for n in nodes]
    return texts


class BM25Index:
    """bm25s over one tenant's chunks, configured as llama-index's BM25Retriever configures it."""

    def __init__(self, texts: list[str]) -> None:
        import bm25s
        import Stemmer

        self._bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english")
        corpus = self.tokens(texts)
        self.index = bm25s.BM25()  # method "lucene", k1 1.5, b 0.75
        self.index.index(corpus, show_progress=False)
        n = len(texts)
        df = Counter(t for doc in corpus for t in set(doc))
        self.idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
        self.unseen_idf = math.log(1 + (n + 0.5) / 0.5)

    def tokens(self, texts: list[str]) -> list[list[str]]:
        return self._bm25s.tokenize(
            texts, stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False
        )

    def top(self, query: str) -> tuple[float, float]:
        """(top BM25 score over the chunks, that score over the query's highest possible one)."""
        toks = self.tokens([query])[0]
        if not toks:  # nothing but stop words
            return 0.0, 0.0
        top = float(np.max(self.index.get_scores(toks)))
        bound = sum(self.idf.get(t, self.unseen_idf) for t in toks)
        assert top <= bound + 1e-4, (query, top, bound)
        return top, top / bound


class Served:
    """One tenant's chunks in ragtune's embedded store (hybrid mode: term vectors stored too),
    searched as the service searches: dense (no text) or hybrid (the query's text)."""

    def __init__(self, texts: list[str], vectors: np.ndarray, root: Path) -> None:
        from ingest.store_edge import EdgeChunkStore

        self.store = EdgeChunkStore(root, QdrantSettings(path=root, retrieval="hybrid"))
        self.store.ensure_collection(vectors.shape[1])
        self.store.upsert([
            Chunk(id=chunk_id("t", "kb", 1, i), tenant_id="t", document_id="kb", version=1,
                  chunk_index=i, text=t, source="kb", vector=v.tolist())
            for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
        ])

    def search(self, vector, query: str, k: int, mode: str) -> Retrieval:
        hits = self.store.search("t", vector, k, text=query if mode == "hybrid" else None)
        return Retrieval(list(hits), 0.0, hits.top_score, query)

    def close(self) -> None:
        self.store.close()


def cover(texts: list[str], facts: list[tuple[str, ...]]) -> int:
    """The fewest chunks that hold every fact (what a perfect ranking would need to show)."""
    holders = [{i for i, t in enumerate(texts) if all(p in t for p in fact)} for fact in facts]
    pool = sorted(set().union(*holders))
    for m in range(1, len(facts) + 1):
        for combo in itertools.combinations(pool, m):
            if all(h & set(combo) for h in holders):
                return m
    return len(texts) + 1  # some fact is in no chunk


def plain_floor(retrieval: Retrieval, floor: float) -> list:
    return [h for h in retrieval.hits if h.score >= floor]


def fact_recall(embedder, splitter, ks: list[int], root: Path) -> None:
    """Fact recall on the Halvard manual (see the module docstring)."""
    sys.path.insert(0, str(EX / "dsl"))
    gen = importlib.import_module("generate")
    code_of = {name: sku for name, (sku, _) in gen.PRODUCTS.items()}
    code_of |= {name: f"@{zone}" for zone, name in gen.ZONE_NAMES.items()}
    texts = chunk_texts(EX / "dsl" / "manual", splitter)
    vectors = np.asarray(embedder.texts(texts), dtype=np.float32)
    served = Served(texts, vectors, root / "halvard-facts")
    floor = DEFAULT_FLOOR
    # kind -> [(query, facts)]; a fact is served when one served chunk holds all its strings.
    kinds: dict[str, list[tuple[str, list[tuple[str, ...]]]]] = {
        "names": [], "codes": [], "prose": []
    }
    for line in (EX / "dsl" / "data" / "test.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["needs_manual"]:
            facts = [(f, code_of[f]) for f in dict.fromkeys(row["facts"])]
            kinds["names"].append((row["messages"][0]["content"], facts))
    for name, (sku, _) in gen.PRODUCTS.items():
        kinds["codes"].append((f"Which product has SKU {sku}, and where is it stored?",
                               [(name, sku)]))
    for zone, name in gen.ZONE_NAMES.items():
        kinds["codes"].append((f"What is zone @{zone} used for?", [(name, f"@{zone}")]))
    for it in labeled(EX / "dsl" / "labeled_queries.jsonl"):
        if it["path"] == "rag":
            kinds["prose"].append((it["query"], [(PROSE_ANSWERS[it["query"]],)]))
    rules = {"rule": Retrieval.above, "cosine": plain_floor}

    def found(facts, shown) -> bool:
        return all(any(all(p in h.text for p in fact) for h in shown) for fact in facts)

    print(f"\nfact recall, Halvard manual ({len(texts)} chunks): share of tasks whose needed "
          f"codes all reach the model (first k hits, then the floor {floor:.2f});")
    print("'rule' = Retrieval.above (the service's floor rule), 'cosine' = score >= floor only; "
          "chunks = mean chunks served")
    head = f"{'kind':6} {'n':>3} {'k':>2} {'oracle':>6} " + " ".join(
        f"{m + '/' + r:>14} {'chunks':>6}" for m in ("dense", "hybrid") for r in rules)
    print(head)
    print("-" * len(head))
    for kind, tasks in kinds.items():
        qv = [(q, embedder.query(q), facts) for q, facts in tasks]
        for k in ks:
            cells = []
            oracle = sum(cover(texts, facts) <= k for _, _, facts in qv) / len(qv)
            for mode in ("dense", "hybrid"):
                for floor_rule in rules.values():
                    ok = chunks = 0
                    for q, v, facts in qv:
                        shown = floor_rule(served.search(v, q, k, mode), floor)
                        chunks += len(shown)
                        ok += found(facts, shown)
                    cells.append(f"{ok / len(qv):>14.3f} {chunks / len(qv):>6.2f}")
            print(f"{kind:6} {len(qv):>3} {k:>2} {oracle:>6.2f} " + " ".join(cells))
    served.close()


def auc(scores: list[float], positive: list[bool]) -> float:
    """ROC AUC: P(score of a relevant row > score of a non-relevant one), ties one half."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return float("nan")
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def candidates(values: list[float]) -> list[tuple[float, float]]:
    """(threshold, gap): midway between neighbouring distinct values, and beyond both ends."""
    xs = sorted(set(values))
    out = [(xs[0] - END_MARGIN, 0.0), (xs[-1] + END_MARGIN, 0.0)]
    return out + [((a + b) / 2, b - a) for a, b in itertools.pairwise(xs)]


def fit_one(values: list[float], positive: list[bool]) -> float:
    best = max(
        candidates(values),
        key=lambda c: (sum((v >= c[0]) == p for v, p in zip(values, positive, strict=True)),
                       c[1]),
    )
    return best[0]


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) or 1.0


def rule(signal: str, fit: list[Row]) -> tuple[Callable[[Row], float], float, str]:
    """(score of a row, threshold, how to print it) for `signal`, fitted on the rows `fit`."""
    positive = [r.relevant for r in fit]
    if signal == "dense@0.35":
        return (lambda r: r.dense), DEFAULT_FLOOR, f"{DEFAULT_FLOOR:.3f} (default)"
    if signal == "either":
        # Each part's own fitted threshold; the score is the larger margin, each in units of
        # its signal's spread on the fit rows, so relevant <=> score >= 0.
        d, n = [r.dense for r in fit], [r.bm25n for r in fit]
        td, tn = fit_one(d, positive), fit_one(n, positive)
        sd, sn = spread(d), spread(n)
        return (lambda r: max((r.dense - td) / sd, (r.bm25n - tn) / sn)), 0.0, (
            f"dense>={td:.3f} or bm25n>={tn:.3f}"
        )
    score_of = (lambda r: (r.dense + r.bm25n) / 2) if signal == "mean" else (
        lambda r: getattr(r, signal)
    )
    threshold = fit_one([score_of(r) for r in fit], positive)
    return score_of, threshold, f"{threshold:.3f}"


def right(score_of: Callable[[Row], float], threshold: float, rows: list[Row]) -> list[bool]:
    return [(score_of(r) >= threshold) == r.relevant for r in rows]


def evaluate(signal: str, rows: list[Row]) -> Fit:
    score_of, threshold, shown = rule(signal, rows[0::2])
    ok = right(score_of, threshold, rows)
    odd_score, odd_threshold, _ = rule(signal, rows[1::2])
    swapped = right(odd_score, odd_threshold, rows[0::2])
    scores = [score_of(r) for r in rows]
    rel = [s for s, r in zip(scores, rows, strict=True) if r.relevant]
    neg = [s for s, r in zip(scores, rows, strict=True) if not r.relevant]
    return Fit(
        signal=signal,
        threshold=shown,
        auc=auc(scores, [r.relevant for r in rows]),
        gap=(min(rel) - max(neg)) / spread(scores),
        held_right=sum(ok[1::2]),
        held_n=len(ok[1::2]),
        fold_right=sum(ok[1::2]) + sum(swapped),
        all_right=sum(ok),
        all_n=len(ok),
        wrong=[(i, rows[i], scores[i]) for i, good in enumerate(ok) if not good],
        fold_wrong=[(2 * j, rows[2 * j], odd_score(rows[2 * j]))
                    for j, good in enumerate(swapped) if not good],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scores", action="store_true", help="print every query's signals too")
    ap.add_argument("--ks", default="2,3,4,6,8", help="serving k for fact recall")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ragtune-hybrid-"))
    started = time.perf_counter()

    import torch

    torch.set_num_threads(1)  # modest: the Embedder batches on the threads set here
    from ingest.embedding import Embedder

    embedder = Embedder(EmbeddingSettings())
    splitter = ChunkPipeline.splitter_for(ChunkingSettings(), embedder.tokenizer)
    loaded = time.perf_counter()
    print(f"embedding model loaded in {loaded - started:.1f}s", flush=True)

    per_tenant: dict[str, list[Row]] = {}
    plain: dict[str, int] = {}  # tenant without documents -> its number of queries
    for tenant, (queries_path, folder) in TENANTS.items():
        items = labeled(queries_path)
        if folder is None:
            # No documents: top_score is None and decide_auto answers "prompt" for every query.
            if any(it["path"] != "prompt" for it in items):
                raise SystemExit(f"{tenant} has no documents, yet labels other than prompt")
            plain[tenant] = len(items)
            print(f"{tenant}: no documents, {len(items)} queries, all routed to prompt")
            continue
        t0 = time.perf_counter()
        texts = chunk_texts(folder, splitter)
        vectors = np.asarray(embedder.texts(texts), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        bm25 = BM25Index(texts)
        served = Served(texts, vectors, root / tenant)
        rows = []
        for it in items:
            q = np.asarray(embedder.query(it["query"]), dtype=np.float32)
            q /= np.linalg.norm(q)
            top, share = bm25.top(it["query"])
            hybrid = served.search(q.tolist(), it["query"], 3, "hybrid").top_score
            rows.append(Row(it["query"], it["path"], float(np.max(vectors @ q)), top, share,
                            hybrid if hybrid is not None else float("nan")))
        served.close()
        per_tenant[tenant] = rows
        labels = Counter("relevant" if r.relevant else "prompt" for r in rows)
        print(
            f"{tenant}: {len(texts)} chunks, {len(rows)} queries ({labels['relevant']} relevant, "
            f"{labels['prompt']} prompt; even rows: {sum(not r.relevant for r in rows[0::2])} "
            f"prompt) in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )

    if args.scores:
        for tenant, rows in per_tenant.items():
            print(f"\n{tenant}: per-query signals")
            print(f"{'row':>3} {'label':11} {'dense':>6} {'bm25':>6} {'bm25n':>6}  query")
            for i, r in enumerate(rows):
                print(f"{i:>3} {r.label:11} {r.dense:6.3f} {r.bm25:6.2f} {r.bm25n:6.3f}  "
                      f"{r.query[:70]}")

    fits = {(t, s): evaluate(s, rows) for t, rows in per_tenant.items() for s in SIGNALS}

    print("\nrelevant (rag | adapter_rag) vs not (prompt); threshold fitted on even rows")
    head = (f"{'tenant':8} {'signal':11} {'AUC':>6} {'gap':>7} {'held-out acc':>14} "
            f"{'2-fold acc':>14} {'all-rows acc':>14}  threshold")
    print(head)
    print("-" * len(head))

    def frac(r: int, n: int) -> str:
        return f"{r:>3}/{n:<3}{r / n:6.3f}"

    for (tenant, signal), f in fits.items():
        print(f"{tenant:8} {signal:11} {f.auc:6.3f} {f.gap:7.3f} {frac(f.held_right, f.held_n)}  "
              f"{frac(f.fold_right, f.all_n)}  {frac(f.all_right, f.all_n)}  {f.threshold}")
    names = " + ".join([*per_tenant, *plain])
    for signal in SIGNALS:
        fs = [fits[t, signal] for t in per_tenant]
        # The plain tenant: every query right (prompt), whatever the signal.
        held = sum(f.held_right for f in fs) + sum(k // 2 for k in plain.values())
        held_n = sum(f.held_n for f in fs) + sum(k // 2 for k in plain.values())
        fold = sum(f.fold_right for f in fs) + sum(plain.values())
        every = sum(f.all_right for f in fs) + sum(plain.values())
        n = sum(f.all_n for f in fs) + sum(plain.values())
        print(f"{'total':8} {signal:11} {'-':>6} {'-':>7} {frac(held, held_n)}  {frac(fold, n)}  "
              f"{frac(every, n)}  ({names})")

    print("\nmisclassified: fit on even rows, all rows (* = held-out row); + = even row that the "
          "reverse fold (fit on odd rows) gets wrong")
    for (tenant, signal), f in fits.items():
        wrong = [("*" if i % 2 else " ", i, r, s) for i, r, s in f.wrong]
        wrong += [("+", i, r, s) for i, r, s in f.fold_wrong]
        print(f"{tenant} {signal}:" + ("" if wrong else " none"))
        for mark, i, r, s in wrong:
            print(f"  {mark}{i:>3} {r.label:11} score {s:7.3f} (dense {r.dense:.3f}, "
                  f"bm25 {r.bm25:.2f}, bm25n {r.bm25n:.3f})  {r.query}")
    drift = max((abs(r.hybrid - r.dense) for rows in per_tenant.values() for r in rows),
                default=0.0)
    print(f"\nhybrid top_score vs dense top cosine: largest difference {drift:.2e} "
          "(the routing signal is the same in both modes)")
    try:
        fact_recall(embedder, splitter, [int(k) for k in args.ks.split(",")], root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.1f}s (model load {loaded - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
