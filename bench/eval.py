"""What the evaluation harness costs: items/s of an evaluation against the same requests sent
as plain chat completions, in the same run, against the same server.

Starts `ragtune serve` (real vLLM) in a temp dir, with one tenant whose knowledge base is the
examples/policy_docs pages (the Zephyr tenant). The eval set is `--items` of its labeled rag
questions (each with a `contains` check). Then, alternating `--rounds` times:
- the evaluation: `POST /v1/evaluations` with arms prompt and rag, polled until it succeeded
  (the runner sends `--concurrency` items at once: the server's `RAGTUNE_EVALUATIONS__CONCURRENCY`);
- the plain run: the same items on the same two paths (`route` prompt / rag), greedy, the same
  `max_tokens`, from a client keeping `--concurrency` requests in flight.

Prints items/s of each and their ratio (goal >= 0.9: the harness adds nothing worth measuring:
judging, storing each result and summarising are small beside the engine's answer).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import served_ragtune  # noqa: E402

DOCS = REPO / "examples" / "policy_docs" / "docs"
LABELED = REPO / "examples" / "policy_docs" / "labeled_queries.jsonl"


def questions() -> list[str]:
    rows = [json.loads(x) for x in LABELED.read_text().splitlines() if x.strip()]
    return [r["query"] for r in rows if r["path"] == "rag"]


def items(n: int) -> list[dict]:
    qs = questions()
    return [{"id": f"q{i}", "query": qs[i % len(qs)], "checks": {"contains": ["the"]}}
            for i in range(n)]


def plain_run(c: httpx.Client, key: str, rows: list[dict], max_tokens: int,
              concurrency: int) -> float:
    auth = {"Authorization": f"Bearer {key}"}

    def one(args):
        row, path = args
        r = c.post("/v1/chat/completions", headers=auth, json={
            "messages": [{"role": "user", "content": row["query"]}], "route": path,
            "temperature": 0, "max_tokens": max_tokens})
        r.raise_for_status()

    work = [(row, path) for row in rows for path in ("prompt", "rag")]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, work))
    return len(work) / (time.perf_counter() - started)


def eval_run(c: httpx.Client, key: str, set_id: str, max_tokens: int) -> float:
    auth = {"Authorization": f"Bearer {key}"}
    started = time.perf_counter()
    r = c.post("/v1/evaluations", headers=auth,
               json={"eval_set": set_id, "arms": ["prompt", "rag"], "max_tokens": max_tokens})
    r.raise_for_status()
    while True:
        ev = c.get(f"/v1/evaluations/{r.json()['id']}", headers=auth).json()
        if ev["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    if ev["state"] != "succeeded":
        raise RuntimeError(f"evaluation failed: {ev.get('error')}")
    return ev["progress"]["total"] / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--model-dir", type=Path, default=REPO / ".data/models/base")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-eval-"))
    env = {"RAGTUNE_EVALUATIONS__CONCURRENCY": str(args.concurrency),
           "RAGTUNE_EVALUATIONS__POLL_S": "0.05"}
    try:
        with served_ragtune(tmp, args.model_dir, env) as server, \
                httpx.Client(base_url=server.url, timeout=600) as c:
            admin = {"Authorization": f"Bearer {server.admin_key}"}
            r = c.post("/v1/tenants", headers=admin, json={"id": "bench-eval", "policy": {}})
            r.raise_for_status()
            key = r.json()["api_key"]
            auth = {"Authorization": f"Bearer {key}"}
            files = [("file", (f.name, f.read_bytes())) for f in sorted(DOCS.glob("*.md"))]
            job = c.post("/v1/documents", headers=auth, files=files).json()["job_id"]
            while c.get(f"/v1/jobs/{job}", headers=auth).json()["state"] not in (
                    "succeeded", "failed"):
                time.sleep(0.2)
            rows = items(args.items)
            set_id = c.post("/v1/eval-sets", headers=auth,
                            json={"name": "bench", "items": rows}).json()["id"]
            plain_run(c, key, rows[:2], args.max_tokens, args.concurrency)  # warm-up
            evals, plains = [], []
            for n in range(args.rounds):
                evals.append(eval_run(c, key, set_id, args.max_tokens))
                plains.append(plain_run(c, key, rows, args.max_tokens, args.concurrency))
                print(f"round {n + 1}: evaluation {evals[-1]:.2f} items/s, plain chats "
                      f"{plains[-1]:.2f} requests/s")
            e, pl = sum(evals) / len(evals), sum(plains) / len(plains)
            print(f"\n{args.items} items x 2 arms, max_tokens {args.max_tokens}, "
                  f"concurrency {args.concurrency}, {args.rounds} rounds")
            print(f"evaluation {e:.2f} items/s, plain chats {pl:.2f} requests/s: "
                  f"ratio {e / pl:.2f} (goal >= 0.9)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
