"""The seed case of the decision guide, end to end: an in-house language no public model has seen
(examples/dsl, Skerry, or examples/brisling, Brisling: `--example`), answered five ways through
ragtune with the real vLLM, on the example's held-out test set.

Arms (every request through ragtune's chat endpoint, greedy, `--max-tokens`):
- base + manual: the base model with the whole reference manual as a system message (path
  prompt);
- RAG: the base model, the manual uploaded as the tenant's knowledge base (path rag);
- adapter: a LoRA trained by `ragtune adapters train` on data/train.jsonl with the bench's
  explicit hyperparameters (rank 16, lr 1e-3, `--steps`), no context (a tenant without
  documents);
- adapter + RAG (old recipe): a LoRA trained with the same explicit hyperparameters plus
  `--context-docs manual/ --context-fraction 0.4`, served with the bench's retrieval (`--top-k`
  chunks, no floor), as this arm always ran;
- adapter + RAG (new training): a LoRA trained by `ragtune adapters train --data train.jsonl
  --context-docs manual/` with the training defaults (only `--new-steps` caps it), served with
  the context it was trained with (the top_k, floor and budget in its training record).
- `--arms new-wide` (not in the default set): the same new adapter served with the RAG arm's
  retrieval (`--top-k` chunks, no floor) through the policy override `adapter_context: policy`,
  for tasks whose facts need more chunks than the adapter was trained with.

Prints syntax validity and task correctness per arm (the example's score.py), for all rows and
for the rows that need a fact from the manual, and each training's wall time. Training dominates
the run time on CPU; `--adapter-dir`, `--rag-adapter-dir` and `--new-adapter-dir` reuse adapters
trained before, `--arms` runs a subset.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import served_ragtune  # noqa: E402

RAGTUNE = str(Path(sys.executable).with_name("ragtune"))
TRAINING_RECORD = "ragtune_training.json"  # adapters.peft_files.TRAINING_NAME


@dataclass(frozen=True)
class Example:
    """What differs between the example languages."""

    language: str  # as the instructions name it
    folder: Path  # data/train.jsonl, data/test.jsonl, manual/*.md, score.py
    adapter: str  # the adapter's name in ragtune
    max_tokens: int  # enough for the longest reference program
    max_model_len: int  # the base + manual arm sends the whole manual

    @property
    def train_data(self) -> Path:
        return self.folder / "data" / "train.jsonl"

    @property
    def test_data(self) -> Path:
        return self.folder / "data" / "test.jsonl"

    @property
    def manual(self) -> Path:
        return self.folder / "manual"

    def system_prompt(self) -> str:
        """The base + manual arm's system message: the whole manual, worded as the example's
        retrieved-context message is."""
        pages = "\n\n".join(p.read_text() for p in sorted(self.manual.glob("*.md")))
        return f"Answer with a {self.language} program only. Reference:\n\n{pages}"


EXAMPLES = {
    # programs at most 59 SmolLM2 tokens (mean 27); the manual 3,231 tokens
    "dsl": Example("Skerry", REPO / "examples" / "dsl", "skerry", 96, 4096),
    # programs at most 100 SmolLM2 tokens (mean 47); the manual 3,282 tokens
    "brisling": Example("Brisling", REPO / "examples" / "brisling", "brisling", 160, 4096),
}


@cache
def score_module(folder: Path) -> ModuleType:
    """The example's score.py, loaded by path under its own name. Both examples' score.py import
    a sibling `lang`: it is imported from the example's folder and then taken out of
    sys.modules again, so the two examples' modules never meet."""
    saved = sys.modules.pop("lang", None)
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"{folder.name}_score", folder / "score.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("lang", None)
        if saved is not None:
            sys.modules["lang"] = saved


@cache
def train_options() -> str:
    """`ragtune adapters train --help`: the old recipe passes --grad-accum only where the
    command still has it."""
    return subprocess.run(
        [RAGTUNE, "adapters", "train", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    ).stdout


def train(cmd: list[str], out: Path, times: dict[str, str], arm: str) -> Path:
    started = time.monotonic()
    subprocess.run([*cmd, "--out", str(out)], check=True)
    took = time.monotonic() - started
    times[arm] = f"{took:.0f}s"
    print(f"   trained {out.name} in {took:.0f}s", flush=True)
    return out


def old_recipe(ex: Example, steps: int, model_dir: Path, context: bool) -> list[str]:
    """The adapter arms' command as the bench always ran it: explicit hyperparameters. Where the
    training counts the retrieved context in --max-len (the command has --tokens-per-pass), the
    RAFT adapter leaves --max-len at its default: 384 would drop nearly every context sample."""
    cmd = [RAGTUNE, "adapters", "train", "--data", str(ex.train_data), "--rank", "16",
           "--max-steps", str(steps), "--batch-size", "8", "--lr", "1e-3",
           "--base-model-dir", str(model_dir)]  # fmt: skip
    new_cli = "--tokens-per-pass" in train_options()
    if not (context and new_cli):
        cmd += ["--max-len", "384"]
    if "--grad-accum" in train_options():
        cmd += ["--grad-accum", "2" if context else "1"]
    if context:
        cmd += ["--context-docs", str(ex.manual), "--context-fraction", "0.4"]
    return cmd


def new_recipe(ex: Example, steps: int | None, model_dir: Path, extra: str = "") -> list[str]:
    """The training defaults, with the manual as context docs: what a tenant would run (plus
    `extra`, e.g. the serving k that bench/hybrid.py chose for the example's questions)."""
    cmd = [RAGTUNE, "adapters", "train", "--data", str(ex.train_data),
           "--context-docs", str(ex.manual), "--base-model-dir", str(model_dir)]  # fmt: skip
    return cmd + (["--max-steps", str(steps)] if steps else []) + shlex.split(extra)


def trained_context(folder: Path) -> tuple[bool, dict | None]:
    """(whether the adapter has a training record, the retrieval it was trained with: None when
    it was trained without context)."""
    record = folder / TRAINING_RECORD
    if not record.is_file():
        return False, None
    return True, json.loads(record.read_text()).get("context")


def policy_field(name: str) -> bool:
    """Whether this ragtune's tenant policy has `name` (the policy refuses unknown fields)."""
    from service.policy import Policy

    return name in Policy.model_fields


def tenant(c: httpx.Client, admin: str, name: str, policy: dict) -> str:
    r = c.post(
        "/v1/tenants",
        headers={"Authorization": f"Bearer {admin}"},
        json={"id": name, "policy": policy},
    )
    r.raise_for_status()
    return r.json()["api_key"]


def upload_manual(c: httpx.Client, key: str, manual: Path) -> None:
    files = [("file", (p.name, p.read_bytes())) for p in sorted(manual.glob("*.md"))]
    r = c.post("/v1/documents", headers={"Authorization": f"Bearer {key}"}, files=files)
    r.raise_for_status()
    job = r.json()["job_id"]
    while c.get(f"/v1/jobs/{job}", headers={"Authorization": f"Bearer {key}"}).json()[
        "state"
    ] not in ("succeeded", "failed"):
        time.sleep(0.2)


def register(url: str, key: str, folder: Path, name: str) -> None:
    subprocess.run(
        [RAGTUNE, "adapters", "register", str(folder), "--name", name, "--key", key,
         "--url", url, "--examples", "[]"],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def answers(
    c: httpx.Client, key: str, rows: list[dict], model: str, system: str | None, max_tokens: int
) -> list[str]:
    out = []
    for row in rows:
        messages = [m for m in row["messages"] if m["role"] == "user"]
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        r = c.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens},
        )
        if r.status_code != 200:
            raise RuntimeError(f"{model} answered {r.status_code}: {r.text[:500]}")
        out.append(r.json()["choices"][0]["message"]["content"])
    return out


ARMS = {
    "base": "base + manual",
    "rag": "RAG",
    "adapter": "adapter",
    "old": "adapter + RAG (old recipe)",
    "new": "adapter + RAG (new training)",
    "new-alone": "new training, no documents",  # part of the "new" arm
    "new-wide": "new training, served --top-k chunks",
}
CHOICES = [a for a in ARMS if a != "new-alone"]


_CODE = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z0-9_]*[0-9][A-Za-z0-9_]*(?![A-Za-z0-9_])")


def fact_recall(answered: list[str], rows: list[dict]) -> float:
    """Of the codes the reference answers use that their instructions do not state (what must
    come from the manual), the share the answers write (as whole tokens)."""
    wanted = found = 0
    for text, row in zip(answered, rows, strict=True):
        instruction = next(m["content"] for m in row["messages"] if m["role"] == "user")
        reference = next(m["content"] for m in row["messages"] if m["role"] == "assistant")
        stated = set(_CODE.findall(instruction))
        needed = {t for t in _CODE.findall(reference) if t not in stated}
        written = set(_CODE.findall(text))
        wanted += len(needed)
        found += len(needed & written)
    return found / wanted if wanted else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--example", choices=sorted(EXAMPLES), default="dsl")
    p.add_argument(
        "--arms",
        default=",".join(a for a in CHOICES if a != "new-wide"),
        help=f"comma-separated subset of {','.join(CHOICES)} (default: the five of the issue's "
        "table; new-wide serves the new adapter with the policy's --top-k chunks instead of its "
        "training record's)",
    )
    p.add_argument("--steps", type=int, default=150, help="training steps, old-recipe adapters")
    p.add_argument(
        "--new-steps",
        type=int,
        help="cap the new training at this many steps (default: the training's own default)",
    )
    p.add_argument(
        "--new-train-args",
        default="",
        help="more options for the new training, e.g. '--top-k 8 --context-max-tokens 1400'",
    )
    p.add_argument("--limit", type=int, default=60, help="test rows (of 60)")
    p.add_argument(
        "--max-tokens", type=int, help="default: the example's (Skerry 96, Brisling 160)"
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=8,
        help="chunks retrieved for the RAG and old-recipe arms (a Skerry task names up to three "
        "facts from different manual pages; with 2, all of a task's codes were in the context "
        "for 3 of the 20 fact rows, with 8 for 15)",
    )
    p.add_argument("--adapter-dir", type=Path, help="a trained adapter (no context) to reuse")
    p.add_argument("--rag-adapter-dir", type=Path, help="an old-recipe RAFT adapter to reuse")
    p.add_argument("--new-adapter-dir", type=Path, help="a new-training adapter to reuse")
    p.add_argument("--model-dir", type=Path, default=REPO / ".data/models/base")
    p.add_argument("--keep", type=Path, help="keep the trained adapters in this folder")
    p.add_argument("--save-answers", type=Path, help="write every arm's answers here (JSONL)")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    ex = EXAMPLES[args.example]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := set(arms) - set(CHOICES):
        p.error(f"unknown arms {sorted(unknown)}; choose from {','.join(CHOICES)}")
    max_tokens = args.max_tokens or ex.max_tokens
    score = score_module(ex.folder).score
    rows = [json.loads(x) for x in ex.test_data.read_text().splitlines()][: args.limit]
    tmp = Path(tempfile.mkdtemp(prefix=f"ragtune-bench-{args.example}-"))
    store = args.keep or tmp
    name = ex.adapter
    times: dict[str, str] = {}

    print(f"1. {ex.language} adapters")
    folders: dict[str, Path] = {}
    reuse = {"adapter": args.adapter_dir, "old": args.rag_adapter_dir, "new": args.new_adapter_dir}
    sub = {"adapter": name, "old": f"{name}-raft-old", "new": f"{name}-raft-new"}
    for arm in ("adapter", "old", "new"):
        if arm not in arms and not (arm == "new" and "new-wide" in arms):
            continue
        if reuse[arm]:
            folders[arm], times[arm] = reuse[arm], "reused"
            print(f"   {ARMS[arm]}: reusing {reuse[arm]}")
            continue
        print(f"   {ARMS[arm]}: training")
        if arm == "new":
            cmd = new_recipe(ex, args.new_steps, args.model_dir, args.new_train_args)
        else:
            cmd = old_recipe(ex, args.steps, args.model_dir, context=arm == "old")
        folders[arm] = train(cmd, store / sub[arm], times, arm)

    print(f"2. {len(arms)} arms through ragtune")
    # every retrieved chunk reaches the model: no floor, a budget that holds top_k
    rag = {"top_k": args.top_k, "min_score": 0.0, "context_max_tokens": 200 * args.top_k}
    prefix = args.example
    try:
        # The whole manual (~3.3k tokens) needs more than the default 2048-token context
        # (SmolLM2 has 8192).
        with (
            served_ragtune(
                tmp,
                args.model_dir,
                # a quality benchmark: a slow, shared CPU must not turn into failed requests
                extra_env={
                    "RAGTUNE_ENGINE__MAX_MODEL_LEN": str(ex.max_model_len),
                    "RAGTUNE_ENGINE__REQUEST_TIMEOUT_S": "1800",
                },
            ) as proc,
            httpx.Client(base_url=proc.url, timeout=600) as c,
        ):
            admin = proc.admin_key
            preds: dict[str, list[str]] = {}
            if "base" in arms:
                k = tenant(c, admin, f"{prefix}-base", {"mode": "prompt"})
                preds["base"] = answers(c, k, rows, "auto", ex.system_prompt(), max_tokens)
            if "rag" in arms:
                k = tenant(c, admin, f"{prefix}-rag", {"mode": "rag", **rag})
                upload_manual(c, k, ex.manual)
                preds["rag"] = answers(c, k, rows, "auto", None, max_tokens)
            if "adapter" in arms:
                k = tenant(c, admin, f"{prefix}-adapter", {})
                register(proc.url, k, folders["adapter"], name)
                preds["adapter"] = answers(c, k, rows, name, None, max_tokens)
            if "old" in arms:
                # As this arm always ran: the bench's retrieval, whatever the adapter's training
                # record says (where the policy has the switch).
                old = dict(rag)
                if policy_field("adapter_context"):
                    old["adapter_context"] = "policy"
                k = tenant(c, admin, f"{prefix}-adapter-rag-old", old)
                upload_manual(c, k, ex.manual)
                register(proc.url, k, folders["old"], name)
                preds["old"] = answers(c, k, rows, name, None, max_tokens)
            if "new" in arms:
                # The context it was trained with: ragtune serves an adapter's training record
                # (adapter_context "trained", the default); the policy repeats the record's
                # figures, so the rag path's retrieval is the same wherever it is used.
                has_record, ctx = trained_context(folders["new"])
                fields = ("top_k", "min_score", "context_max_tokens")
                new = {f: ctx[f] for f in fields if f in (ctx or {})}
                served = (
                    f"the context it was trained with, {new}"
                    if ctx
                    else "no passages (trained without context)"
                    if has_record
                    else "the default policy's context (no training record)"
                )
                print(f"   {ARMS['new']}: served with {served}")
                k = tenant(c, admin, f"{prefix}-adapter-rag-new", new)
                upload_manual(c, k, ex.manual)
                register(proc.url, k, folders["new"], name)
                preds["new"] = answers(c, k, rows, name, None, max_tokens)
                # The same adapter for a tenant without documents: what it knows by itself
                # (near 0% on the fact tasks, or the facts did not come from retrieval).
                k = tenant(c, admin, f"{prefix}-adapter-new-alone", new)
                register(proc.url, k, folders["new"], name)
                preds["new-alone"] = answers(c, k, rows, name, None, max_tokens)
            if "new-wide" in arms:
                # The same adapter served with more chunks than it was trained with: the
                # policy's context (adapter_context "policy"), the RAG arm's retrieval.
                k = tenant(
                    c, admin, f"{prefix}-adapter-rag-new-wide", {**rag, "adapter_context": "policy"}
                )
                upload_manual(c, k, ex.manual)
                register(proc.url, k, folders["new"], name)
                preds["new-wide"] = answers(c, k, rows, name, None, max_tokens)
        needs = [i for i, r in enumerate(rows) if r.get("needs_manual")]
        print(
            f"\n3. {ex.language} on {len(rows)} held-out tasks ({len(needs)} need a fact from the "
            f"manual; RAG and old-recipe arms retrieve {args.top_k} chunks)"
        )
        width = max(len(ARMS[a]) for a in preds)
        print(
            f"   {'arm':<{width}} {'syntax valid':>12} {'correct':>8} "
            f"{'correct, needs manual':>22} {'facts in answer':>16} {'training':>9}"
        )
        for arm, answered in preds.items():
            s = score(answered, rows)
            sn = score([answered[i] for i in needs], [rows[i] for i in needs]) if needs else None
            facts = fact_recall([answered[i] for i in needs], [rows[i] for i in needs])
            print(
                f"   {ARMS[arm]:<{width}} {s['syntax_valid']:>12.0%} {s['task_correct']:>8.0%} "
                f"{(sn['task_correct'] if sn else float('nan')):>22.0%} {facts:>16.0%} "
                f"{times.get(arm, '-'):>9}"
            )
        print("   facts in answer: of the codes a needs-manual task's reference answer uses and "
              "its instruction does not state, the share the answer writes")
        if args.save_answers:
            with args.save_answers.open("w") as out:
                for arm, answered in preds.items():
                    for row, text in zip(rows, answered, strict=True):
                        out.write(json.dumps({"arm": arm, "id": row.get("id"),
                                              "needs_manual": row.get("needs_manual", False),
                                              "answer": text}) + "\n")
            print(f"   answers saved to {args.save_answers}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
