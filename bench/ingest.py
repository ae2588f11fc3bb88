"""Ingestion throughput: chunks/s through the whole upload -> indexed path, against the raw
embedding speed of the very same chunks, measured in the same run.

The path is ragtune's own code, in process: `DocumentService.upload` (read the file, store it and
its sections, registry rows for the version and the job) on a SQLite registry, then
`IngestWorker.run_once` until the queue is empty (claim, split, embed, upsert into an embedded
Qdrant Edge store, renew the lease, switch the version, retire the previous one). The baseline is
`Embedder.texts` on the chunk texts that path produces, one call per document as the pipeline
makes it (so the same batches of `embedding.batch_size`). The ratio says how much of the
embedding speed survives everything around it. Goal: >= 0.9.

    .venv/bin/python bench/ingest.py [--docs 6] [--paragraphs 120] [--rounds 3] [--check]

Rounds run in the order A B, B A, A B ... (A: the whole path, B: raw embedding), so a drift of
a busy machine falls on both alike; each round's own ratio is printed too, to show the noise.
Round 1 of the path indexes new documents; later rounds upload them again, so each is a
replacement (a new version, the switch, the old version's points deleted). The corpus is
generated from a seed: prose in several registers (policies, runbooks, minutes, manuals), as
.md, .txt and .html files, so every file goes through its reader.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.registry.db import Registry  # noqa: E402
from core.settings import (  # noqa: E402
    ChunkingSettings,
    DocumentLimits,
    EmbeddingSettings,
    QdrantSettings,
    WorkerSettings,
)
from ingest.documents import DocumentService, Upload  # noqa: E402
from ingest.embedding import Embedder, shared_embedder  # noqa: E402
from ingest.pipeline import ChunkPipeline  # noqa: E402
from ingest.readers import content_type_for, read_sections  # noqa: E402
from ingest.stores import open_chunk_store  # noqa: E402
from ingest.vector_store import ChunkStore  # noqa: E402
from ingest.worker import IngestWorker  # noqa: E402
from service.policy import Policy  # noqa: E402
from service.tenants import TenantService  # noqa: E402

GOAL_RATIO = 0.9
TENANT = "bench"

# ---- the corpus ------------------------------------------------------------------------------

REGISTERS = {
    "policy": {
        "title": ["Travel and Expenses Policy", "Remote Work Policy", "Data Retention Policy"],
        "subjects": ["every employee", "a team lead", "the finance office", "a contractor",
                     "the people team", "an approver", "the requester", "each department"],
        "verbs": ["must submit", "may request", "should keep", "is required to file",
                  "can claim", "has to confirm", "will review", "needs to archive"],
        "objects": ["the original receipts", "a written justification", "the signed form",
                    "an itemised statement", "the booking confirmation", "a cost estimate",
                    "the manager's approval", "copies of all invoices"],
        "tails": ["within thirty days of the trip", "before the end of the quarter",
                  "unless the amount is below the petty cash limit",
                  "in the shared records system", "for at least seven years",
                  "when travelling outside the home country", "as described in annex B"],
    },
    "runbook": {
        "title": ["Database Failover Runbook", "Release Procedure", "Incident Response Guide"],
        "subjects": ["the on-call engineer", "the primary node", "the load balancer",
                     "the deployment job", "the replica", "the health check", "the operator",
                     "the backup agent"],
        "verbs": ["restarts", "promotes", "drains", "verifies", "rolls back", "pages",
                  "snapshots", "throttles"],
        "objects": ["the write-ahead log", "the connection pool", "the standby cluster",
                    "the canary instances", "the previous release", "the metrics dashboard",
                    "the queue consumers", "the configuration bundle"],
        "tails": ["after the lag drops below five seconds", "before traffic is shifted back",
                  "if the error rate exceeds two percent", "during the maintenance window",
                  "once the checksum matches", "and records the step in the incident channel",
                  "without waiting for the nightly job"],
    },
    "minutes": {
        "title": ["Steering Committee Minutes", "Quarterly Planning Notes", "Design Review"],
        "subjects": ["the committee", "Priya", "Marcus", "the platform group", "Helena",
                     "the vendor", "the working group", "Tomasz"],
        "verbs": ["proposed", "agreed to postpone", "raised concerns about", "approved",
                  "asked for a review of", "presented", "questioned", "volunteered to draft"],
        "objects": ["the migration timeline", "the revised budget", "the hiring plan",
                    "the new storage tier", "the customer survey results", "the pricing model",
                    "the security audit findings", "the onboarding checklist"],
        "tails": ["pending input from legal", "for the next meeting", "with two abstentions",
                  "subject to a cost analysis", "after a long discussion",
                  "as an action item due in March", "once the pilot has ended"],
    },
    "manual": {
        "title": ["Pump Controller Manual", "Label Printer Guide", "Thermostat Installation"],
        "subjects": ["the controller", "the user", "the sensor", "the display", "the installer",
                     "the firmware", "the safety relay", "the calibration routine"],
        "verbs": ["adjusts", "measures", "shows", "disconnects", "stores", "resets",
                  "calibrates", "locks"],
        "objects": ["the flow rate", "the inlet pressure", "the error code", "the main supply",
                    "the last twenty readings", "the factory settings", "the output valve",
                    "the temperature offset"],
        "tails": ["when the button is held for three seconds", "at every start-up",
                  "if the reading stays out of range", "before any maintenance",
                  "in the non-volatile memory", "unless service mode is active",
                  "according to the table in section 4"],
    },
}
CONNECTIVES = ["However,", "In practice,", "For example,", "As a rule,", "Note that",
               "In most cases,", "Afterwards,", "Where possible,", "By contrast,", ""]
ASIDES = ["which was last revised in {y}", "as agreed with {n}", "(see item {k})",
          "at a cost of about {c} euros", "for roughly {p} percent of cases"]
NAMES = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Alvarez", "Novak", "Haddad", "Kowalski"]


def _sentence(rng: random.Random, reg: dict) -> str:
    words = [rng.choice(reg["subjects"]), rng.choice(reg["verbs"]), rng.choice(reg["objects"])]
    if rng.random() < 0.7:
        words.append(rng.choice(reg["tails"]))
    if rng.random() < 0.3:
        words.append(
            rng.choice(ASIDES).format(
                y=rng.randint(2015, 2025), n=rng.choice(NAMES), k=rng.randint(1, 40),
                c=rng.randint(2, 900) * 10, p=rng.randint(2, 95),
            )
        )
    lead = rng.choice(CONNECTIVES) if rng.random() < 0.35 else ""
    text = " ".join(w for w in [lead, *words] if w)
    return text[0].upper() + text[1:] + "."


def _paragraph(rng: random.Random, reg: dict) -> str:
    if rng.random() < 0.1:  # now and then a list, as real documents have
        return "\n".join(f"- {_sentence(rng, reg)}" for _ in range(rng.randint(3, 6)))
    return " ".join(_sentence(rng, reg) for _ in range(rng.randint(2, 9)))


def make_corpus(docs: int, paragraphs: int, seed: int = 20240611) -> list[Upload]:
    """`docs` files of `paragraphs` paragraphs each, cycling registers and formats."""
    rng = random.Random(seed)
    names = list(REGISTERS)
    out = []
    for d in range(docs):
        reg = REGISTERS[names[d % len(names)]]
        title = reg["title"][(d // len(names)) % len(reg["title"])]
        paras = [_paragraph(rng, reg) for _ in range(paragraphs)]
        fmt = ("md", "txt", "html")[d % 3]
        if fmt == "md":
            parts = [f"# {title}"]
            for i, p in enumerate(paras):
                if i % 12 == 0:
                    parts.append(f"## Section {i // 12 + 1}")
                parts.append(p)
            body = "\n\n".join(parts)
        elif fmt == "txt":
            body = title.upper() + "\n\n" + "\n\n".join(paras)
        else:
            blocks = [f"<h2>Section {i // 12 + 1}</h2><p>{p}</p>" if i % 12 == 0 else f"<p>{p}</p>"
                      for i, p in enumerate(paras)]
            body = (f"<html><head><title>{title}</title><style>p {{margin: 0}}</style></head>"
                    f"<body><h1>{title}</h1>{''.join(blocks)}</body></html>")
        slug = title.lower().replace(" ", "-")
        out.append(Upload(f"{d:02d}-{slug}.{fmt}", body.encode()))
    return out


# ---- what is measured ------------------------------------------------------------------------


class Stages:
    """Seconds inside each step of the path, from thin wrappers around the worker's parts.
    Exclusive time: a step nested in another (embed in pipeline.run, the retiring delete in the
    version switch) is counted once, in its own row."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.enabled = True
        self._stack: list[list] = []  # [label, seconds of wrapped calls nested in it]

    def wrap(self, obj: object, name: str, label: str, nested_labels: dict | None = None) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            if not self.enabled:
                return inner(*args, **kwargs)
            parent = self._stack[-1] if self._stack else None
            own = (nested_labels or {}).get(parent[0] if parent else None, label)
            frame = [own, 0.0]
            self._stack.append(frame)
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                self._stack.pop()
                self.seconds[own] += elapsed - frame[1]
                if parent is not None:
                    parent[1] += elapsed

        setattr(obj, name, timed)


@dataclass
class Bench:
    registry: Registry
    store: ChunkStore
    docs: DocumentService
    worker: IngestWorker
    embedder: Embedder
    stages: Stages

    def close(self) -> None:
        self.store.close()
        self.registry.dispose()


def setup(root: Path, grace_s: float) -> Bench:
    registry = Registry(f"sqlite:///{root / 'registry.db'}")
    registry.migrate()
    TenantService(registry).create(TENANT, Policy(mode="rag"))
    TenantService(registry).create("warmup", Policy(mode="rag"))
    embedder = shared_embedder(EmbeddingSettings())
    store = open_chunk_store(QdrantSettings(path=root / "qdrant"), root)
    store.ensure_collection(embedder.dim)
    worker = IngestWorker(
        registry,
        store,
        ChunkPipeline(embedder, ChunkingSettings()),
        WorkerSettings(retire_grace_s=grace_s, poll_s=0.05),
    )
    stages = Stages()
    # The pipeline's _Embed holds this very Embedder, so the wrapper sees its calls.
    assert worker.pipeline.pipeline.transformations[1].embedder is embedder
    stages.wrap(embedder, "texts", "embed")
    stages.wrap(worker.pipeline, "run", "pipeline.run")
    stages.wrap(store, "upsert", "upsert")
    stages.wrap(store, "delete_version", "clean start", {"switch version": "retire"})
    stages.wrap(worker, "_renew", "renew lease")
    stages.wrap(worker, "_switch", "switch version")
    docs = DocumentService(registry, root / "uploads", DocumentLimits())
    return Bench(registry, store, docs, worker, embedder, stages)


def ingest_round(b: Bench, corpus: list[Upload], tenant: str = TENANT) -> tuple[float, int]:
    """(seconds, chunks) of uploading every file (one upload each, as `ragtune ingest` does)
    and running the worker until the queue is empty."""
    t0 = time.perf_counter()
    jobs = []
    for f in corpus:
        t_up = time.perf_counter()
        jobs.append(b.docs.upload(tenant, [f])["job_id"])
        if b.stages.enabled:
            b.stages.seconds["upload"] += time.perf_counter() - t_up
    b.stages._stack.clear()
    while b.worker.run_once():
        pass
    seconds = time.perf_counter() - t0
    chunks = 0
    for job_id in jobs:
        job = b.docs.get_job(tenant, job_id)
        if job["state"] != "succeeded":
            raise RuntimeError(f"job {job_id} ended {job['state']}: {job['error']}")
        chunks += job["chunks"]
    return seconds, chunks


def raw_round(b: Bench, texts_per_doc: list[list[str]]) -> float:
    t0 = time.perf_counter()
    for texts in texts_per_doc:
        b.embedder.texts(texts)
    return time.perf_counter() - t0


def chunk_texts(b: Bench, corpus: list[Upload]) -> list[list[str]]:
    """The texts the path embeds, per document: the same reader and splitter it runs."""
    out = []
    for f in corpus:
        sections = read_sections(f.data, content_type_for(f.filename), f.filename)
        out.append([n.get_content() for n in b.worker.pipeline.split(sections)])
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docs", type=int, default=6, help="documents in the corpus")
    ap.add_argument("--paragraphs", type=int, default=120, help="paragraphs per document")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds of each (A B B A ...)")
    ap.add_argument("--retire-grace-s", type=float, default=0.01,
                    help="worker.retire_grace_s (the service default, 2 s, sleeps per replaced "
                         "document)")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="skip the extra, untimed round under tracemalloc")
    ap.add_argument("--dir", type=Path, help="where the temp dir goes")
    ap.add_argument("--check", action="store_true", help="exit 2 when the goal is missed")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ragtune-ingest-", dir=args.dir))
    try:
        return run(args, root)
    finally:
        with contextlib.suppress(Exception):
            shutil.rmtree(root)


def run(args: argparse.Namespace, root: Path) -> int:
    t0 = time.perf_counter()
    b = setup(root, args.retire_grace_s)
    try:
        return measure(args, b, t0)
    finally:
        b.close()


def measure(args: argparse.Namespace, b: Bench, t0: float) -> int:
    corpus = make_corpus(args.docs, args.paragraphs)
    texts = chunk_texts(b, corpus)
    n_chunks = sum(map(len, texts))
    tokens = sum(b.embedder.count_tokens(t) for doc in texts for t in doc)
    size_kb = sum(len(f.data) for f in corpus) / 1024
    formats = ", ".join(sorted({f.filename.rsplit(".", 1)[1] for f in corpus}))
    print(
        f"corpus: {len(corpus)} documents ({formats}), "
        f"{args.docs * args.paragraphs} paragraphs, {size_kb:.0f} KB -> {n_chunks} chunks, "
        f"{tokens / n_chunks:.0f} tokens a chunk on average"
    )
    print(f"setup (registry, embedding model, store) {time.perf_counter() - t0:.1f}s")

    # Warm-up, not measured: the model's first batches, the splitter, SQLite, Edge.
    ingest_round(b, corpus[:1], tenant="warmup")
    raw_round(b, texts[:1])
    rss_warm = rss_mb()
    b.stages.seconds.clear()

    order = [("A", "B"), ("B", "A")]
    path_s = raw_s = 0.0
    path_chunks = 0
    per_round: list[float] = []
    for r in range(args.rounds):
        took = {}
        for kind in order[r % 2]:
            if kind == "A":
                s, c = ingest_round(b, corpus)
                if c != n_chunks:
                    raise RuntimeError(f"the path indexed {c} chunks, the splitter made {n_chunks}")
                path_s += s
                path_chunks += c
                took["A"] = s
                print(f"  round {r + 1} upload->indexed  {s:6.1f}s  {c / s:6.1f} chunks/s"
                      + ("  (new documents)" if r == 0 else "  (replacing every document)"),
                      flush=True)
            else:
                b.stages.enabled = False
                s = raw_round(b, texts)
                b.stages.enabled = True
                raw_s += s
                took["B"] = s
                print(f"  round {r + 1} raw embedding    {s:6.1f}s  {n_chunks / s:6.1f} chunks/s",
                      flush=True)
        per_round.append(took["B"] / took["A"])  # same chunks: the time ratio is the rate ratio
    rss_end = rss_mb()
    stages = dict(b.stages.seconds)

    traced_mb = None
    if not args.no_tracemalloc:
        tracemalloc.start()
        ingest_round(b, corpus)
        traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

    path_rate = path_chunks / path_s
    raw_rate = n_chunks * args.rounds / raw_s
    ratio = path_rate / raw_rate
    print(f"\nupload->indexed {path_rate:.1f} chunks/s, raw embedding {raw_rate:.1f} chunks/s "
          f"(same chunks, batch size {EmbeddingSettings().batch_size}): ratio {ratio:.3f}")
    median = statistics.median(per_round)
    print(f"ratio per round (A and B side by side): {' '.join(f'{x:.3f}' for x in per_round)}"
          f"  (median {median:.3f}; their spread is the run's noise)")
    plural = "s" if args.rounds > 1 else ""
    print(f"where the path's {path_s:.1f}s went (summed over its {args.rounds} round{plural}):")
    rows = [
        ("embed (Embedder.texts)", stages.pop("embed", 0.0)),
        ("split + Chunk records (pipeline.run less embed)", stages.pop("pipeline.run", 0.0)),
        ("upload (read, store files, registry rows)", stages.pop("upload", 0.0)),
        ("upsert into Edge", stages.pop("upsert", 0.0)),
        ("delete_version before indexing (clean start)", stages.pop("clean start", 0.0)),
        ("delete_version of the replaced version (retire)", stages.pop("retire", 0.0)),
        (f"switch version (registry + grace sleep {args.retire_grace_s:g}s a replaced doc)",
         stages.pop("switch version", 0.0)),
        ("renew lease", stages.pop("renew lease", 0.0)),
    ]
    rows.append(("rest (claim, version rows, job rows, ...)", path_s - sum(v for _, v in rows)))
    for label, secs in rows:
        print(f"  {label:72} {secs:6.2f}s  {100 * secs / path_s:5.1f}%")
    embed_share = rows[0][1] / path_s
    print(f"own time: {100 * (1 - embed_share):.1f}% of the path is outside Embedder.texts, so "
          f"with embedding as fast as raw the ratio would be {embed_share:.3f} (a bound that the "
          "machine's noise moves far less)")
    print(
        f"peak memory: RSS (getrusage ru_maxrss, whole process incl. torch and the model) "
        f"{rss_warm:.0f} MB after warm-up, {rss_end:.0f} MB after the measured rounds"
        + (f"; Python heap peak of one upload->indexed round (tracemalloc, excludes torch's "
           f"tensors) {traced_mb:.1f} MB" if traced_mb is not None else "")
    )
    ok = median >= GOAL_RATIO
    print(f"goal (upload->indexed >= {GOAL_RATIO} x raw embedding, median of the rounds): "
          f"{'MET' if ok else 'NOT MET'} (median {median:.3f}, overall {ratio:.3f}, own-time "
          f"bound {embed_share:.3f})")
    return 2 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
