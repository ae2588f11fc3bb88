"""Adapters: registration-to-first-token, and throughput with N distinct adapters in rotation
against the base model in the same run.

Starts `ragtune serve` (which spawns vLLM) in a temp data dir, makes rank-`--rank` LoRA adapters
for the served base model (random weights: the cost of serving an adapter does not depend on what
it learned), and then:

1. registration: POST /v1/adapters (a .tar.gz upload) until 201, then a streamed chat with
   `model=<adapter>` until its first content chunk; `--registrations` times; p50/max of each.
2. rotation: for each N in `--adapters` (default 1,4,16,64), the same workload (`--requests`
   requests at `--concurrency`, `--max-tokens` each) sent once with `model=auto` to a tenant in
   mode prompt (the base model) and once rotating over N registered adapters, in alternating
   rounds; completion tokens/s of each, the ratio adapter/base, every failed request, and how
   many adapter loads the engine did during the measured rounds. Each rotation is warmed first
   (one request per adapter), as the base model is, so N within `--max-resident` measures
   batching, and N above it measures load-on-demand churn as well.
   N above the server's `RAGTUNE_ADAPTERS__MAX_RESIDENT` (set with `--max-resident`) makes ragtune
   load and evict adapters on demand while the rotation runs.

Goals: register-to-serving ≤ 1 s for a rank-16 adapter on SmolLM2, no failed request while 64
adapters rotate, and 16 adapters at ≥ 0.6 of the base model's tokens/s, 1 at ≥ 0.8 (`--check`
exits 2 when one is missed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.pack import pack_adapter  # noqa: E402
from bench._common import percentile, served_ragtune, tenant_key  # noqa: E402

# Adapter tokens/s over base tokens/s, by adapters in the rotation (issue 18).
RATIO_GOALS = {1: 0.8, 16: 0.6}
PROMPTS = ["Name a fruit.", "Count to three.", "Say hello.", "What colour is the sky?"]


def make_adapters(n: int, rank: int, base_model_dir: Path, out: Path) -> list[Path]:
    """n rank-`rank` LoRA folders: one made with peft, the others its weights re-drawn."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.helpers.random_lora import make_random_lora

    first = make_random_lora(out / "a0", base_model_dir, seed=0, rank=rank, scale=0.5)
    tensors = load_file(first / "adapter_model.safetensors")
    folders = [first]
    for i in range(1, n):
        gen = torch.Generator().manual_seed(i)
        folder = out / f"a{i}"
        folder.mkdir()
        shutil.copy(first / "adapter_config.json", folder)
        redrawn = {
            k: (torch.randn(v.shape, generator=gen, dtype=torch.float32) * v.float().std())
            .to(v.dtype)
            for k, v in tensors.items()
        }
        save_file(redrawn, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        folders.append(folder)
    return folders



async def register(session, url, key, name: str, data: bytes) -> float:
    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("examples", "[]")
    form.add_field("file", data, filename=f"{name}.tar.gz", content_type="application/gzip")
    started = time.perf_counter()
    async with session.post(f"{url}/v1/adapters", data=form,
                            headers={"Authorization": f"Bearer {key}"}) as r:
        body = await r.text()
        if r.status != 201:
            raise RuntimeError(f"registering {name}: HTTP {r.status} {body[:300]}")
    return time.perf_counter() - started


async def first_token(session, url, key, model: str) -> float:
    started = time.perf_counter()
    body = {"model": model, "stream": True, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": PROMPTS[0]}]}
    async with session.post(f"{url}/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status != 200:
            raise RuntimeError(f"chat with {model}: HTTP {r.status} {await r.text()}")
        async for line in r.content:
            if line.startswith(b"data: ") and b'"content"' in line:
                return time.perf_counter() - started
    raise RuntimeError(f"no content chunk from {model}")


async def workload(session, url, key, models: list[str], n: int, concurrency: int,
                   max_tokens: int, start: int = 0) -> tuple[int, float, list[str]]:
    """(completion tokens, seconds, errors) of n requests, models in rotation from `start`."""
    queue = list(range(start + n - 1, start - 1, -1))  # popped from the end: start first
    tokens, errors = 0, []

    async def one(i: int) -> None:
        nonlocal tokens
        body = {"model": models[i % len(models)], "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
        async with session.post(f"{url}/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {key}"}) as r:
            text = await r.text()
            if r.status != 200:
                errors.append(f"{body['model']}: HTTP {r.status} {text[:200]}")
                return
            tokens += json.loads(text)["usage"]["completion_tokens"]

    async def client() -> None:
        while queue:
            await one(queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return tokens, time.perf_counter() - started, errors


async def measure(args, url: str, admin_key: str, folders: list[Path]) -> bool:
    base_key = tenant_key(url, admin_key, "bench-base", {"mode": "prompt"})
    key = tenant_key(url, admin_key, "bench-adapters", {"mode": "prompt"})
    archives = [pack_adapter(f) for f in folders]
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    ok = True
    async with aiohttp.ClientSession(timeout=timeout) as session:
        print(f"\n1. registration to first token (rank {args.rank}, "
              f"{len(archives[0]) / 1e6:.1f} MB archive)")
        reg, ttft, warm, base = [], [], [], []
        for i in range(args.registrations):
            reg.append(await register(session, url, key, f"reg{i}", archives[i % len(archives)]))
            ttft.append(await first_token(session, url, key, f"reg{i}"))
            warm.append(await first_token(session, url, key, f"reg{i}"))  # loaded, in a slot
            base.append(await first_token(session, url, base_key, "auto"))
        total = [a + b for a, b in zip(reg, ttft, strict=True)]
        print(f"   POST /v1/adapters -> 201 (validated, stored, loaded): p50 "
              f"{percentile(reg, 50) * 1e3:.0f} ms, max {max(reg) * 1e3:.0f} ms")
        print(f"   then first streamed token:  p50 {percentile(ttft, 50) * 1e3:.0f} ms, "
              f"max {max(ttft) * 1e3:.0f} ms")
        print(f"   register-to-first-token:     p50 {percentile(total, 50) * 1e3:.0f} ms, "
              f"max {max(total) * 1e3:.0f} ms   (goal <= 1000 ms)")
        print(f"   for comparison, time to first token: same adapter again p50 "
              f"{percentile(warm, 50) * 1e3:.0f} ms, base model p50 "
              f"{percentile(base, 50) * 1e3:.0f} ms")
        ok &= percentile(total, 50) <= 1.0

        print(f"\n2. throughput, {args.requests} requests x {args.max_tokens} tokens at "
              f"concurrency {args.concurrency}; server max_resident={args.max_resident}")
        names = [f"rot{i}" for i in range(max(args.adapters))]
        for i, name in enumerate(names):
            await register(session, url, key, name, archives[i % len(archives)])
        await workload(session, url, base_key, ["auto"], args.concurrency, args.concurrency,
                       args.max_tokens)  # warm-up
        print(f"   {'adapters':>8} {'base tok/s':>11} {'adapter tok/s':>14} {'ratio':>6} "
              f"{'failed':>7} {'loads':>6}")
        for n in args.adapters:
            models = names[:n]
            # Steady state: every adapter of the rotation touched once first (loaded at the
            # engine, as far as --max-resident lets them stay), like the base model's warm-up.
            await workload(session, url, key, models, n, args.concurrency, 1)
            loads_before = await _loads(session, url)
            base_tok = base_s = ad_tok = ad_s = 0.0
            failures: list[str] = []
            half = args.requests // 2
            turn = 0  # the rotation goes on across rounds: every adapter of it is used
            for order in (("base", "adapter"), ("adapter", "base")) * args.rounds:
                for which in order:  # A B B A ...: drift falls on both
                    if which == "base":
                        t, s, e = await workload(session, url, base_key, ["auto"], half,
                                                 args.concurrency, args.max_tokens)
                        base_tok, base_s = base_tok + t, base_s + s
                    else:
                        t, s, e = await workload(session, url, key, models, half,
                                                 args.concurrency, args.max_tokens, turn)
                        turn += half
                        ad_tok, ad_s = ad_tok + t, ad_s + s
                    failures += e
            b, a = base_tok / base_s, ad_tok / ad_s
            loads = await _loads(session, url) - loads_before
            goal = RATIO_GOALS.get(n)
            print(f"   {n:>8} {b:>11.1f} {a:>14.1f} {a / b:>6.2f} {len(failures):>7} "
                  f"{loads:>6.0f}" + (f"   (goal >= {goal})" if goal else ""))
            if goal:
                ok &= a / b >= goal
            for f in failures[:5]:
                print(f"      failed: {f}")
            ok &= not failures
        status, text = await _get(session, f"{url}/metrics")
        loads = [ln for ln in text.splitlines() if ln.startswith(("ragtune_adapter_loads_total",
                                                                  "ragtune_adapter_unloads_total"))]
        print("   " + "; ".join(loads))
    return ok


async def _loads(session, url) -> float:
    """ragtune_adapter_loads_total: adapters loaded at the engine so far (on demand included)."""
    _, text = await _get(session, f"{url}/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ragtune_adapter_loads_total"))


async def _get(session, url):
    async with session.get(url) as r:
        return r.status, await r.text()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapters", default="1,4,16,64",
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--registrations", type=int, default=5)
    p.add_argument("--requests", type=int, default=64, help="per arm, adapter count and round")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternations (base, adapter, adapter, base) per adapter count")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-resident", type=int, default=32,
                   help="RAGTUNE_ADAPTERS__MAX_RESIDENT of the server")
    p.add_argument("--max-loras", type=int, default=None,
                   help="RAGTUNE_ENGINE__MAX_LORAS of the server (adapters in one engine step); "
                   "default: ragtune's")
    p.add_argument("--model-dir", type=Path, default=Path(".data/models/base"))
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--check", action="store_true", help="exit 2 when a goal is missed")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-adapters-"))
    failed = True
    try:
        from core.base_model import ensure_base_model

        ensure_base_model(args.model_dir)  # the adapters are made for it before serve starts
        print(f"making {min(max(args.adapters), 8)} distinct rank-{args.rank} adapters ...")
        folders = make_adapters(min(max(args.adapters), 8), args.rank, args.model_dir, tmp)
        env = {"RAGTUNE_ADAPTERS__MAX_RESIDENT": str(args.max_resident)}
        if args.max_loras is not None:
            env["RAGTUNE_ENGINE__MAX_LORAS"] = str(args.max_loras)
        with served_ragtune(tmp, args.model_dir, env) as proc:
            ok = asyncio.run(measure(args, proc.url, proc.admin_key, folders))
        failed = False
        return 2 if args.check and not ok else 0
    finally:
        if failed:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
