"""The seed case of the decision guide, end to end: Skerry (examples/dsl), a language no public
model has seen, answered four ways through ragtune with the real vLLM, on the held-out test set.

Arms (every request through ragtune's chat endpoint, greedy, `--max-tokens`):
- base + manual: the base model with the whole reference manual as a system message (path
  prompt);
- RAG: the base model, the manual uploaded as the tenant's knowledge base (path rag);
- adapter: a LoRA trained by `ragtune adapters train` on data/train.jsonl, no context (a tenant
  without documents);
- adapter + RAG: a LoRA trained with `--context-docs manual/` (RAFT-style: retrieved passages plus
  distractors in a share of the samples), served with retrieved context (path adapter_rag).

Prints syntax validity and task correctness per arm (examples/dsl/score.py), for all rows and
for the rows that need a fact from the manual. Training dominates the run time on CPU (about
`--steps` x 5 s per adapter, more with context); `--adapter-dir`/`--rag-adapter-dir` reuse
adapters trained before.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples" / "dsl"))

from score import score  # noqa: E402

from bench._common import served_ragtune  # noqa: E402

DSL = REPO / "examples" / "dsl"
RAGTUNE = str(Path(sys.executable).with_name("ragtune"))


def train(out: Path, steps: int, model_dir: Path, context: bool) -> Path:
    cmd = [RAGTUNE, "adapters", "train", "--data", str(DSL / "data" / "train.jsonl"),
           "--out", str(out), "--rank", "16", "--max-steps", str(steps), "--batch-size", "8",
           "--grad-accum", "2" if context else "1", "--lr", "1e-3", "--max-len", "384",
           "--base-model-dir", str(model_dir)]
    if context:
        cmd += ["--context-docs", str(DSL / "manual"), "--context-fraction", "0.4"]
    started = time.monotonic()
    subprocess.run(cmd, check=True)
    print(f"   trained {out.name} in {time.monotonic() - started:.0f}s", flush=True)
    return out


def tenant(c: httpx.Client, admin: str, name: str, policy: dict) -> str:
    r = c.post("/v1/tenants", headers={"Authorization": f"Bearer {admin}"},
               json={"id": name, "policy": policy})
    r.raise_for_status()
    return r.json()["api_key"]


def upload_manual(c: httpx.Client, key: str) -> None:
    files = [("file", (p.name, p.read_bytes())) for p in sorted((DSL / "manual").glob("*.md"))]
    r = c.post("/v1/documents", headers={"Authorization": f"Bearer {key}"}, files=files)
    r.raise_for_status()
    job = r.json()["job_id"]
    while c.get(f"/v1/jobs/{job}", headers={"Authorization": f"Bearer {key}"}).json()[
        "state"
    ] not in ("succeeded", "failed"):
        time.sleep(0.2)


def register(url: str, key: str, folder: Path, name: str) -> None:
    subprocess.run([RAGTUNE, "adapters", "register", str(folder), "--name", name, "--key", key,
                    "--url", url, "--examples", "[]"], check=True, stdout=subprocess.DEVNULL)


def answers(c: httpx.Client, key: str, rows: list[dict], model: str, system: str | None,
            max_tokens: int) -> list[str]:
    out = []
    for row in rows:
        messages = [m for m in row["messages"] if m["role"] == "user"]
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        r = c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": model, "messages": messages, "temperature": 0,
                         "max_tokens": max_tokens})
        if r.status_code != 200:
            raise RuntimeError(f"{model} answered {r.status_code}: {r.text[:500]}")
        out.append(r.json()["choices"][0]["message"]["content"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=150, help="training steps per adapter")
    p.add_argument("--limit", type=int, default=60, help="test rows (of 60)")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--top-k", type=int, default=8,
                   help="chunks retrieved for the RAG arms (a task names up to three facts "
                        "from different manual pages; with 2, all of a task's codes were in the "
                        "context for 3 of the 20 fact rows, with 8 for 15)")
    p.add_argument("--adapter-dir", type=Path, help="a trained adapter (no context) to reuse")
    p.add_argument("--rag-adapter-dir", type=Path, help="a trained RAFT adapter to reuse")
    p.add_argument("--model-dir", type=Path, default=REPO / ".data/models/base")
    p.add_argument("--keep", type=Path, help="keep the trained adapters in this folder")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    rows = [json.loads(x) for x in (DSL / "data" / "test.jsonl").read_text().splitlines()]
    rows = rows[: args.limit]
    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-dsl-"))
    store = args.keep or tmp
    reused = [d for d in (args.adapter_dir, args.rag_adapter_dir) if d]
    print("1. adapters " + (f"(reusing {', '.join(map(str, reused))})" if reused else
                            f"({args.steps} steps each)"))
    plain = args.adapter_dir or train(store / "skerry", args.steps, args.model_dir, False)
    raft = args.rag_adapter_dir or train(store / "skerry-raft", args.steps, args.model_dir, True)
    print("2. the four arms through ragtune")
    try:
        # The whole manual is ~3.2k tokens: the base + manual arm needs more than the default
        # 2048-token context (SmolLM2 has 8192).
        with served_ragtune(tmp, args.model_dir,
                            extra_env={"RAGTUNE_ENGINE__MAX_MODEL_LEN": "4096"}) as proc, \
                httpx.Client(base_url=proc.url, timeout=600) as c:
            admin = proc.admin_key
            k_base = tenant(c, admin, "dsl-base", {"mode": "prompt"})
            # every retrieved chunk reaches the model: no floor, a budget that holds top_k
            rag = {"top_k": args.top_k, "min_score": 0.0, "context_max_tokens": 200 * args.top_k}
            k_rag = tenant(c, admin, "dsl-rag", {"mode": "rag", **rag})
            k_ad = tenant(c, admin, "dsl-adapter", {})
            k_adrag = tenant(c, admin, "dsl-adapter-rag", rag)
            upload_manual(c, k_rag)
            upload_manual(c, k_adrag)
            register(proc.url, k_ad, plain, "skerry")
            register(proc.url, k_adrag, raft, "skerry")
            manual = "Answer with a Skerry program only. Reference:\n\n" + "\n\n".join(
                p.read_text() for p in sorted((DSL / "manual").glob("*.md"))
            )
            arms = {
                "base + manual": answers(c, k_base, rows, "auto", manual, args.max_tokens),
                "RAG": answers(c, k_rag, rows, "auto", None, args.max_tokens),
                "adapter": answers(c, k_ad, rows, "skerry", None, args.max_tokens),
                "adapter + RAG": answers(c, k_adrag, rows, "skerry", None, args.max_tokens),
            }
        needs = [i for i, r in enumerate(rows) if r.get("needs_manual")]
        print(f"\n3. Skerry on {len(rows)} held-out tasks ({len(needs)} need a fact from the "
              f"manual; RAG arms retrieve {args.top_k} chunks)")
        print(f"   {'arm':<14} {'syntax valid':>12} {'correct':>8} {'correct, needs manual':>22}")
        for arm, preds in arms.items():
            s = score(preds, rows)
            sn = score([preds[i] for i in needs], [rows[i] for i in needs]) if needs else None
            print(f"   {arm:<14} {s['syntax_valid']:>12.0%} {s['task_correct']:>8.0%} "
                  f"{(sn['task_correct'] if sn else float('nan')):>22.0%}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
