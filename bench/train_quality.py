"""Training quality: `train_lora` with its defaults against a plain transformers + peft script,
trained on the same data, scored on the example's held-out test set with its own score.py.

    .venv/bin/python bench/train_quality.py --example examples/dsl [--steps 150] [--limit 20]
        [--setups ragtune,plain] [--context-docs] [--out results.json]

Setups (each runs in its own subprocess, so its peak RSS is its own):
- ragtune: `adapters.train.train_lora` with its defaults (only `max_steps` when --steps is
  given); with --context-docs it trains RAFT-style on the example's manual/ and is ALSO scored
  with served context (the manual in a temporary store, the served top_k/floor/budget, no
  oracle: what adapter_rag would give it).
- plain: a typical peft recipe: LoRA r=16, alpha 32, dropout 0.05 on all linear projections,
  AdamW lr 2e-4, batch 8, linear warmup/decay, 3 epochs (or --steps), the chat rendered with the
  model's template and the loss over the whole sequence (prompt included), no context.

Each is generated greedily with transformers (`--max-new-tokens`, default 96) on the first
`--limit` test rows (rendered with the chat template and the generation prompt, as vLLM serves
them) and scored with the example's score.py (loaded by path): syntax valid and task correct,
all rows and the rows marked `needs_manual`. Prints per setup: scores, training steps, wall time,
peak RSS; and the ratio ragtune / plain. Train set: data/train.jsonl; test: data/test.jsonl.

Measured (issue 13; 2 cores shared with other jobs, load 3-7, --threads 1, so times are slow):
`--example examples/dsl --steps 20 --limit 8`: ragtune 50% valid / 12% correct, plain 0% / 0%;
training 573 s vs 660 s, peak RSS 4.97 GB vs 6.31 GB; ragtune's held-out answer loss (32 rows)
3.48 -> 0.51. `--example examples/brisling`, same options: ragtune 75% / 50%, plain 0% / 0%;
training 911 s vs 627 s, peak RSS 6.91 GB vs 8.69 GB (generation included). A 20-step run
shows which recipe learns faster, not where 150 steps end up.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def load_score(example: Path):
    """The example's score.py, loaded by path (it imports its siblings, e.g. lang.py)."""
    sys.path.insert(0, str(example))
    spec = importlib.util.spec_from_file_location(f"score_{example.name}", example / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the plain script -----------------------------------------------------------------------


def train_plain(rows: list[dict], out: Path, base_dir: Path, steps: int | None, seed: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    model = get_peft_model(model, config)
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    encoded = [tok.encode(t, add_special_tokens=False)[:512] for t in texts]
    batch, epochs = 8, 3
    total = steps or epochs * math.ceil(len(encoded) / batch)
    warmup = max(1, total // 20)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    rng = random.Random(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.train()
    step, losses = 0, []
    while step < total:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for i in range(0, len(order), batch):
            part = [encoded[j] for j in order[i : i + batch]]
            width = max(map(len, part))
            ids = torch.tensor([x + [pad] * (width - len(x)) for x in part])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in part])
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % 10 == 0:
                print(f"  plain step {step}/{total} loss {sum(losses[-10:]) / 10:.3f}", flush=True)
            if step >= total:
                break
    model.save_pretrained(str(out))
    return {"steps": step}


# ---- generation and scoring -----------------------------------------------------------------


def generate(adapter: Path, base_dir: Path, prompts: list[list[dict]], max_new: int) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    rendered = [
        tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts
    ]
    out: list[str] = []
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
    replies: dict[int, str] = {}
    for start in range(0, len(order), 8):
        idx = order[start : start + 8]
        enc = tok(
            [rendered[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        for i, row in zip(idx, gen[:, enc["input_ids"].shape[1] :], strict=True):
            replies[i] = tok.decode(row, skip_special_tokens=True)
    out = [replies[i] for i in range(len(prompts))]
    return out


def scores(scorer, replies: list[str], tests: list[dict]) -> dict:
    result = {"all": scorer.score(replies, tests)}
    manual = [i for i, t in enumerate(tests) if t.get("needs_manual")]
    if manual:
        result["needs_manual"] = scorer.score(
            [replies[i] for i in manual], [tests[i] for i in manual]
        )
    return result


def served_prompts(tests: list[dict], docs: Path) -> list[list[dict]]:
    """Each test prompt with the context adapter_rag would give it: the manual in a temporary
    store, searched for the instruction, cut to the served top_k / floor / budget."""
    from adapters.raft import (
        DEFAULT_CONTEXT_MAX_TOKENS,
        DEFAULT_MIN_SCORE,
        DEFAULT_TOP_K,
        ServedRetriever,
        compose_context,
        load_context_chunks,
    )
    from core.settings import ChunkingSettings, EmbeddingSettings, QdrantSettings
    from ingest.context import with_context

    chunks = load_context_chunks(docs, chunking=ChunkingSettings(), embedding=EmbeddingSettings())
    out = []
    with ServedRetriever(chunks, EmbeddingSettings(), QdrantSettings()) as r:
        for t in tests:
            prompt = t["messages"][:-1]
            query = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
            kept = compose_context(
                r.search(query, DEFAULT_TOP_K),
                [],
                r.tokens,
                top_k=DEFAULT_TOP_K,
                min_score=DEFAULT_MIN_SCORE,
                max_tokens=DEFAULT_CONTEXT_MAX_TOKENS,
            )
            out.append(with_context(prompt, [chunks[i] for i in kept]))
    return out


def run_one(setup: str, a: argparse.Namespace) -> dict:
    from core.base_model import ensure_base_model
    from core.settings import BASE_MODEL_NAME, ChunkingSettings, EmbeddingSettings, Settings

    example = a.example.resolve()
    rows = read_jsonl(example / "data" / "train.jsonl")
    tests = read_jsonl(example / "data" / "test.jsonl")[: a.limit or None]
    base_dir = ensure_base_model(Settings().resolved_model_dir)
    scorer = load_score(example)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if not a.max_new_tokens:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base_dir)
        longest = max(len(tok.encode(t["messages"][-1]["content"])) for t in tests)
        a.max_new_tokens = max(96, longest + 16)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-train-{setup}-"))
    started = time.monotonic()
    info: dict = {"setup": setup}
    if setup == "ragtune":
        from adapters.train import train_lora

        result = train_lora(
            rows,
            tmp / "adapter",
            base_model_dir=base_dir,
            base_model_name=BASE_MODEL_NAME,
            chunking=ChunkingSettings(),
            embedding=EmbeddingSettings(),
            max_steps=a.steps,
            context_docs=example / "manual" if a.context_docs else None,
            **({"lr": a.lr} if a.lr else {}),
            threads=a.threads,
            progress=True,
            log=print,
        )
        info.update(
            steps=result.steps,
            record=result.record,
            passes=result.passes,
            checkpointing=result.gradient_checkpointing,
        )
    else:
        info.update(train_plain(rows, tmp / "adapter", base_dir, a.steps, a.seed))
    info["train_seconds"] = round(time.monotonic() - started, 1)
    info["train_peak_rss_mb"] = round(peak_rss_mb())
    started = time.monotonic()
    plain_prompts = [t["messages"][:-1] for t in tests]
    info["no_context"] = scores(
        scorer, generate(tmp / "adapter", base_dir, plain_prompts, a.max_new_tokens), tests
    )
    if setup == "ragtune" and a.context_docs:
        prompts = served_prompts(tests, example / "manual")
        info["served_context"] = scores(
            scorer, generate(tmp / "adapter", base_dir, prompts, a.max_new_tokens), tests
        )
    info["generate_seconds"] = round(time.monotonic() - started, 1)
    info["peak_rss_mb"] = round(peak_rss_mb())
    return info


def fmt(s: dict) -> str:
    return f"valid {s['syntax_valid']:.0%} correct {s['task_correct']:.0%} (n={s['n']})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", type=Path, default=REPO / "examples" / "dsl")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: epochs)")
    ap.add_argument("--limit", type=int, default=20, help="test rows scored (0: all)")
    ap.add_argument("--setups", default="ragtune,plain")
    ap.add_argument("--context-docs", action="store_true", help="ragtune trains with manual/")
    ap.add_argument("--lr", type=float, default=None, help="override ragtune's default lr")
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="default: 96, or the longest test answer + 16 tokens if longer",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    a = ap.parse_args(argv)
    if a.one:
        print("RESULT " + json.dumps(run_one(a.one, a)), flush=True)
        return
    results = []
    for setup in a.setups.split(","):
        print(f"== {setup}", flush=True)
        args = [a2 for a2 in (argv if argv is not None else sys.argv[1:])]
        proc = subprocess.run(
            [sys.executable, __file__, *args, "--one", setup],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        lines = proc.stdout.splitlines()
        print("\n".join(line for line in lines if not line.startswith("RESULT ")), flush=True)
        results.append(json.loads(next(x for x in lines if x.startswith("RESULT "))[7:]))
    for r in results:
        print(
            f"{r['setup']:8} {r['steps']} steps, train {r['train_seconds']}s, "
            f"peak RSS {r['peak_rss_mb']} MB"
        )
        for what in ("no_context", "served_context"):
            if what in r:
                print(
                    f"  {what:15} all: {fmt(r[what]['all'])}"
                    + (
                        f"; needs_manual: {fmt(r[what]['needs_manual'])}"
                        if "needs_manual" in r[what]
                        else ""
                    )
                )
    by = {r["setup"]: r for r in results}
    if "ragtune" in by and "plain" in by:
        rt, pl = by["ragtune"]["no_context"]["all"], by["plain"]["no_context"]["all"]
        ratio = lambda x, y: f"{x / y:.2f}" if y else "n/a"  # noqa: E731
        print(
            f"ratio ragtune/plain: syntax valid {ratio(rt['syntax_valid'], pl['syntax_valid'])}"
            f", task correct {ratio(rt['task_correct'], pl['task_correct'])}"
        )
    if a.out:
        a.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
