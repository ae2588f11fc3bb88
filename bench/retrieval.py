"""Filtered top-k retrieval of the knowledge base's vector store: latency, recall, build cost.

For each size it fills one collection with random normalised vectors spread over `--tenants`
tenants (as ragtune does: one collection, a tenant index, every query filtered on one tenant),
through ragtune's own ChunkStore code path, then runs `--queries` filtered top-k searches and,
in the same run, the exact answer (numpy brute force over that tenant's vectors). It prints
p50/p99 latency of both, their ratio, recall@k against exact search, the queries that came back
short, insert and optimize time, and how latency grows with size. Goal (embedded Qdrant Edge):
p99 <= 5 ms at 100k chunks and recall >= 0.99.

Hybrid search (dense + BM25 terms fused by RRF, `QdrantSettings.retrieval = "hybrid"`) is timed
on the same store and the same queries, each query also given a text: every chunk holds ~60
words drawn from a Zipf-distributed 20k-word vocabulary (so posting lists are long for common
words and short for rare ones, as in prose), a query 8 such words. Printed: its p50/p99 and the
ratio to the dense search's in the same run. Goal: hybrid p99 within 2x the dense p99.

    .venv/bin/python bench/retrieval.py [--sizes 10000,100000] [--tenants 100] [--queries 200]
        [--top-k 5] [--qdrant-url URL] [--dir DIR] [--hnsw-ef 128] [--acorn]

1M chunks is opt-in (`--sizes 10000,100000,1000000`): it needs ~8 GB of memory and ~6 GB of
disk, and on a 2-core machine its build (insert + the per-tenant HNSW graphs) takes tens of
minutes (see bench/README.md for the measured figures).

--qdrant-url also benches a Qdrant server (ragtune's server ChunkStore: qdrant-client and
llama-index's QdrantVectorStore) on the same data; its collections are deleted at the end.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _common import percentile  # noqa: E402

from core.settings import QdrantSettings  # noqa: E402
from ingest.stores import open_chunk_store  # noqa: E402
from ingest.vector_store import Chunk, ChunkStore, chunk_id  # noqa: E402

DIM = 384  # all-MiniLM-L6-v2
BATCH = 1000
GOAL_P99_MS = 5.0
GOAL_RECALL = 0.99
GOAL_SIZE = 100_000
GOAL_HYBRID_RATIO = 2.0
VOCAB = 20_000
WORDS_PER_CHUNK = 60
WORDS_PER_QUERY = 8


@dataclass
class Result:
    backend: str
    size: int
    insert_s: float
    optimize_s: float
    stall_s: float
    p50_ms: float
    p99_ms: float
    exact_p50_ms: float
    exact_p99_ms: float
    recall: float
    short: int
    disk_mb: float
    hybrid_p50_ms: float = float("nan")
    hybrid_p99_ms: float = float("nan")


class Data:
    """Vectors made batch by batch from a seed, kept once as float32 (1M x 384 = 1.5 GB).

    Chunk i belongs to tenant i % tenants, so a tenant's vectors are the strided view
    `vectors[t::tenants]` and exact search needs no copy of them.
    """

    def __init__(self, size: int, tenants: int, seed: int = 7) -> None:
        self.size, self.tenants = size, tenants
        self.vectors = np.empty((size, DIM), dtype=np.float32)
        for start in range(0, size, 100_000):
            rng = np.random.default_rng([seed, start])
            block = rng.standard_normal((min(100_000, size - start), DIM), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            self.vectors[start : start + len(block)] = block
        # Word ids per chunk, Zipf-distributed (rank r drawn with weight 1/r).
        weights = 1.0 / np.arange(1, VOCAB + 1)
        self._p = weights / weights.sum()
        rng = np.random.default_rng([seed, 1])
        self.words = rng.choice(VOCAB, size=(size, WORDS_PER_CHUNK), p=self._p).astype(np.int32)

    def text(self, words) -> str:
        return " ".join(f"w{int(w)}x" for w in words)

    def query_text(self, rng: np.random.Generator) -> str:
        return self.text(rng.choice(VOCAB, size=WORDS_PER_QUERY, p=self._p))

    def chunks(self, start: int, stop: int) -> list[Chunk]:
        return [
            Chunk(
                id=chunk_id(f"t{i % self.tenants}", f"doc{i // 50}", 1, i),
                tenant_id=f"t{i % self.tenants}",
                document_id=f"doc{i // 50}",
                version=1,
                chunk_index=i,
                text=self.text(self.words[i]),
                source=f"doc{i // 50}.txt",
                vector=self.vectors[i],
                metadata={},
            )
            for i in range(start, stop)
        ]

    def exact(self, tenant: int, query: np.ndarray, k: int) -> set[int]:
        scores = self.vectors[tenant :: self.tenants] @ query
        top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
        return {tenant + self.tenants * int(j) for j in top}


class StallMeter:
    """Longest gap seen by a Python thread that wants to run every 10 ms: what a blocking call
    holding the GIL costs the serving process's event loop."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(0.01):
            now = time.perf_counter()
            self.longest = max(self.longest, now - last - 0.01)
            last = now

    def __enter__(self) -> StallMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def build(store: ChunkStore, data: Data, progress) -> float:
    """Seconds spent in `upsert` (batches of BATCH chunks), not in making the Chunk objects."""
    spent = 0.0
    next_note = time.perf_counter() + 30
    for start in range(0, data.size, BATCH):
        chunks = data.chunks(start, min(data.size, start + BATCH))
        t0 = time.perf_counter()
        store.upsert(chunks)
        spent += time.perf_counter() - t0
        if time.perf_counter() >= next_note:
            progress(f"    ... {start + BATCH:,} chunks, {spent:.0f}s in upsert", flush=True)
            next_note += 30
    return spent


def measure(
    backend: str,
    store: ChunkStore,
    data: Data,
    args: argparse.Namespace,
    insert_s: float,
    optimize_s: float,
    stall_s: float,
    disk_mb: float,
) -> Result:
    rng = np.random.default_rng(12345)
    queries = rng.standard_normal((args.queries + 20, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    texts = [data.query_text(rng) for _ in range(args.queries + 20)]
    for i in range(20):  # warm-up: page cache, lazily loaded segments
        store.search(f"t{i % data.tenants}", queries[i], args.top_k)
        store.search(f"t{i % data.tenants}", queries[i], args.top_k, text=texts[i])
    lat, exact_lat, hybrid_lat = [], [], []
    found = short = 0
    for i in range(args.queries):
        tenant = (i * 7) % data.tenants
        q = queries[20 + i]
        # Dense and hybrid alternate query by query, so both meet the same machine state.
        t0 = time.perf_counter()
        hits = store.search(f"t{tenant}", q, args.top_k)
        t1 = time.perf_counter()
        exact = data.exact(tenant, q, args.top_k)
        t2 = time.perf_counter()
        fused = store.search(f"t{tenant}", q, args.top_k, text=texts[20 + i])
        t3 = time.perf_counter()
        assert fused.top_score == hits[0].score or abs(fused.top_score - hits[0].score) < 1e-5
        lat.append((t1 - t0) * 1e3)
        exact_lat.append((t2 - t1) * 1e3)
        hybrid_lat.append((t3 - t2) * 1e3)
        short += len(hits) < min(args.top_k, len(range(tenant, data.size, data.tenants)))
        found += len(exact & {h.chunk_index for h in hits})
    return Result(
        backend=backend,
        size=data.size,
        insert_s=insert_s,
        optimize_s=optimize_s,
        stall_s=stall_s,
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        exact_p50_ms=percentile(exact_lat, 50),
        exact_p99_ms=percentile(exact_lat, 99),
        recall=found / (args.queries * args.top_k),
        short=short,
        disk_mb=disk_mb,
        hybrid_p50_ms=percentile(hybrid_lat, 50),
        hybrid_p99_ms=percentile(hybrid_lat, 99),
    )


def bench_edge(data: Data, args: argparse.Namespace, root: Path) -> Result:
    path = root / f"edge-{data.size}"
    settings = QdrantSettings(
        path=path,
        hnsw_ef=args.hnsw_ef,
        acorn=args.acorn,
        # One optimize after the bulk load, timed on its own; in service it runs every
        # `optimize_after_points` written points instead.
        optimize_after_points=10**12,
    )
    store = open_chunk_store(settings, root)
    try:
        store.ensure_collection(DIM)
        insert_s = build(store, data, print)
        print(f"    inserted in {insert_s:.1f}s; optimizing ...", flush=True)
        with StallMeter() as stall:
            t0 = time.perf_counter()
            store.optimize()
            optimize_s = time.perf_counter() - t0
        disk_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        return measure("edge", store, data, args, insert_s, optimize_s, stall.longest, disk_mb)
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)


def bench_server(data: Data, args: argparse.Namespace) -> Result:
    from ingest.store_qdrant import ServerChunkStore

    settings = QdrantSettings(
        url=args.qdrant_url,
        collection=f"ragtune_bench_{data.size}_{int(time.time())}",
        hnsw_ef=args.hnsw_ef,
        acorn=args.acorn,
        timeout_s=120,
    )
    store = open_chunk_store(settings, Path("."))
    assert isinstance(store, ServerChunkStore)
    client = store._client
    try:
        store.ensure_collection(DIM)
        insert_s = build(store, data, print)
        print(f"    inserted in {insert_s:.1f}s; waiting for the server's optimizer ...")
        t0 = time.perf_counter()
        while client.get_collection(settings.collection).status != "green":
            time.sleep(0.5)
        optimize_s = time.perf_counter() - t0
        return measure("server", store, data, args, insert_s, optimize_s, 0.0, float("nan"))
    finally:
        client.delete_collection(settings.collection)
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated chunk counts")
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--hnsw-ef", type=int, default=QdrantSettings().hnsw_ef)
    ap.add_argument("--acorn", action="store_true", help="ACORN filtered search on")
    ap.add_argument("--qdrant-url", help="also bench this Qdrant server")
    ap.add_argument("--dir", type=Path, help="where the embedded stores go (default: a temp dir)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if max(sizes) >= 1_000_000:
        print(
            "note: 1M chunks needs ~8 GB of memory and ~6 GB of disk; on 2 cores its build takes\n"
            "      tens of minutes (bench/README.md has the figures measured here)."
        )

    root = Path(tempfile.mkdtemp(prefix="ragtune-retrieval-", dir=args.dir))
    results: list[Result] = []
    try:
        for size in sizes:
            print(f"\n== {size:,} chunks, {args.tenants} tenants (~{size // args.tenants:,} each)")
            t0 = time.perf_counter()
            data = Data(size, args.tenants)
            print(f"    vectors made in {time.perf_counter() - t0:.1f}s")
            print("  embedded Qdrant Edge")
            results.append(bench_edge(data, args, root))
            report(results[-1])
            if args.qdrant_url:
                print(f"  Qdrant server at {args.qdrant_url}")
                results.append(bench_server(data, args))
                report(results[-1])
            del data
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary(results, args)
    return 0


def report(r: Result) -> None:
    print(
        f"    insert {r.insert_s:.1f}s ({r.size / r.insert_s:,.0f}/s)  optimize {r.optimize_s:.1f}s"
        + (f" (other threads stalled up to {r.stall_s:.1f}s)" if r.backend == "edge" else "")
    )
    print(
        f"    filtered top-k  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms   exact (numpy) "
        f"p50 {r.exact_p50_ms:.2f} ms  p99 {r.exact_p99_ms:.2f} ms   ratio p50 "
        f"{r.p50_ms / r.exact_p50_ms:.2f}x"
    )
    print(
        f"    hybrid (dense + terms, RRF)  p50 {r.hybrid_p50_ms:.2f} ms  p99 "
        f"{r.hybrid_p99_ms:.2f} ms   ratio to dense p50 {r.hybrid_p50_ms / r.p50_ms:.2f}x  "
        f"p99 {r.hybrid_p99_ms / r.p99_ms:.2f}x"
    )
    print(f"    recall@k {r.recall:.4f}  short results {r.short}", flush=True)


def summary(results: list[Result], args: argparse.Namespace) -> None:
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"\nSummary (top-{args.top_k}, {args.tenants} tenants, hnsw_ef {args.hnsw_ef}, "
        f"ACORN {'on' if args.acorn else 'off'}; peak RSS {rss_gb:.1f} GB)"
    )
    print(
        f"{'backend':8} {'chunks':>10} {'insert s':>9} {'optim. s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'exact p50':>10} {'ratio':>6} {'recall':>7} {'short':>6} {'disk MB':>8}"
        f" {'hyb p50':>8} {'hyb p99':>8} {'p99 x':>6}"
    )
    for r in results:
        print(
            f"{r.backend:8} {r.size:>10,} {r.insert_s:>9.1f} {r.optimize_s:>9.1f} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.exact_p50_ms:>10.2f} "
            f"{r.p50_ms / r.exact_p50_ms:>6.2f} {r.recall:>7.4f} {r.short:>6} {r.disk_mb:>8.0f}"
            f" {r.hybrid_p50_ms:>8.2f} {r.hybrid_p99_ms:>8.2f} {r.hybrid_p99_ms / r.p99_ms:>6.2f}"
        )
    for backend in sorted({r.backend for r in results}):
        rs = [r for r in results if r.backend == backend]
        for a, b in itertools.pairwise(rs):
            print(
                f"{backend}: {b.size // a.size}x the chunks -> p50 x{b.p50_ms / a.p50_ms:.2f}, "
                f"p99 x{b.p99_ms / a.p99_ms:.2f} (exact search p50 x"
                f"{b.exact_p50_ms / a.exact_p50_ms:.2f})"
            )
    goal = [r for r in results if r.backend == "edge" and r.size == GOAL_SIZE]
    if goal:
        r = goal[0]
        ok = r.p99_ms <= GOAL_P99_MS and r.recall >= GOAL_RECALL
        print(
            f"goal (embedded, {GOAL_SIZE:,} chunks: p99 <= {GOAL_P99_MS} ms, recall >= "
            f"{GOAL_RECALL}): {'MET' if ok else 'NOT MET'} (p99 {r.p99_ms:.2f} ms, "
            f"recall {r.recall:.4f})"
        )
        ratio = r.hybrid_p99_ms / r.p99_ms
        print(
            f"goal (embedded, {GOAL_SIZE:,} chunks: hybrid p99 <= {GOAL_HYBRID_RATIO}x dense p99): "
            f"{'MET' if ratio <= GOAL_HYBRID_RATIO else 'NOT MET'} (hybrid p99 "
            f"{r.hybrid_p99_ms:.2f} ms, dense {r.p99_ms:.2f} ms, {ratio:.2f}x)"
        )


if __name__ == "__main__":
    sys.exit(main())
