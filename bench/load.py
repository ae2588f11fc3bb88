"""A bounded, self-stopping load run: mixed prompt / RAG / adapter traffic from many concurrent
clients with uploads in parallel, against `ragtune serve` and its real vLLM on loopback.

Tenants: `load-prompt` (mode prompt), `load-rag` (mode rag, the policy-documents example
uploaded), `load-adapter` (a rank-8 adapter, asked by `model`), and `load-limited` (mode prompt,
`requests_per_minute` set low, so its 429s are the declared kind). `--clients` clients each loop
over the four for `--duration` seconds (then stop; every request is bounded by
`--request-timeout`), while one uploader adds a document to `load-rag` every `--upload-every`
seconds. Prints p50/p99 by path, every error that is not a declared 429, and the resident memory
of the ragtune process (API + router + embedded Qdrant + embedding model; vLLM is its own
process) sampled through the run: flat means the last samples are within 10% of the first ones
after warm-up.

Goal: zero errors other than declared 429s, memory flat.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from adapters.pack import pack_adapter  # noqa: E402
from bench._common import percentile, served_ragtune, tenant_key  # noqa: E402

QUESTIONS = {
    "prompt": ["Name a fruit.", "Say hello in French.", "What colour is grass?"],
    "rag": ["How long is the warranty on a Zephyr tent?", "How much is express delivery?",
            "When do loyalty points expire?"],
    "adapter": ["Write a rule.", "Give me a code.", "Say something."],
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")



async def setup(s: aiohttp.ClientSession, url: str, admin: str, tmp: Path, model_dir: Path):
    from tests.helpers.random_lora import make_random_lora

    # First: making it takes seconds, and an idle keep-alive connection may be closed meanwhile.
    lora = make_random_lora(tmp / "lora", model_dir, seed=1, rank=8, scale=0.3)
    keys = {
        "prompt": tenant_key(url, admin, "load-prompt", {"mode": "prompt"}),
        "rag": tenant_key(url, admin, "load-rag", {"mode": "rag"}),
        "adapter": tenant_key(url, admin, "load-adapter", {}),
        "limited": tenant_key(url, admin, "load-limited",
                              {"mode": "prompt", "requests_per_minute": 30}),
    }
    form = aiohttp.FormData()
    for p in sorted((REPO / "examples/policy_docs/docs").glob("*.md")):
        form.add_field("file", p.read_bytes(), filename=p.name)
    async with s.post(f"{url}/v1/documents", data=form,
                      headers={"Authorization": f"Bearer {keys['rag']}"}) as r:
        assert r.status == 202, await r.text()
    form = aiohttp.FormData()
    form.add_field("name", "loadtest")
    form.add_field("file", pack_adapter(lora), filename="a.tar.gz")
    async with s.post(f"{url}/v1/adapters", data=form,
                      headers={"Authorization": f"Bearer {keys['adapter']}"}) as r:
        assert r.status == 201, await r.text()
    return keys


async def run(args, url: str, admin: str, pid: int, tmp: Path) -> bool:
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    declared_429 = uploads = 0
    memory: list[tuple[float, float]] = []
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as s:
        keys = await setup(s, url, admin, tmp, args.model_dir)
        started = time.monotonic()
        deadline = started + args.duration

        async def client(i: int) -> None:
            nonlocal declared_429
            kinds = ["prompt", "rag", "adapter", "limited"]
            n = i
            while time.monotonic() < deadline:
                kind = kinds[n % len(kinds)]
                n += 1
                qs = QUESTIONS["prompt" if kind == "limited" else kind]
                body = {"messages": [{"role": "user", "content": qs[n % len(qs)]}],
                        "max_tokens": args.max_tokens, "temperature": 0}
                if kind == "adapter":
                    body["model"] = "loadtest"
                t0 = time.perf_counter()
                try:
                    async with s.post(f"{url}/v1/chat/completions", json=body,
                                      headers={"Authorization": f"Bearer {keys[kind]}"}) as r:
                        text = await r.text()
                        path = r.headers.get("x-route", "?")
                    if r.status == 200:
                        latencies[path].append(time.perf_counter() - t0)
                    elif r.status == 429 and kind == "limited" and "rate_limit_exceeded" in text:
                        declared_429 += 1
                    else:
                        errors.append(f"{kind}: HTTP {r.status} {text[:160]}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(f"{kind}: {type(exc).__name__} {exc}")

        async def uploader() -> None:
            nonlocal uploads
            i = 0
            while time.monotonic() < deadline:
                form = aiohttp.FormData()
                text = f"Load notice {i}: the Bergen shop opens at {8 + i % 3}:00 on day {i}."
                form.add_field("file", text.encode(), filename=f"notice-{i}.txt")
                async with s.post(f"{url}/v1/documents", data=form,
                                  headers={"Authorization": f"Bearer {keys['rag']}"}) as r:
                    if r.status != 202:
                        errors.append(f"upload: HTTP {r.status} {(await r.text())[:160]}")
                i += 1
                uploads = i
                await asyncio.sleep(args.upload_every)

        async def sampler() -> None:
            while time.monotonic() < deadline:
                memory.append((time.monotonic() - started, rss_mib(pid)))
                await asyncio.sleep(5)
            memory.append((time.monotonic() - started, rss_mib(pid)))

        print(f"running {args.clients} clients for {args.duration:.0f}s ...", flush=True)
        await asyncio.gather(*(client(i) for i in range(args.clients)), uploader(), sampler())
        took = time.monotonic() - started

    total = sum(len(v) for v in latencies.values())
    print(f"\n{total} answered in {took:.0f}s ({total / took:.1f}/s), {declared_429} declared "
          f"429s (load-limited), {len(errors)} errors, {uploads} uploads")
    print(f"   {'path':<12} {'n':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for path, values in sorted(latencies.items()):
        print(f"   {path:<12} {len(values):>6} {percentile(values, 50) * 1e3:>8.0f} "
              f"{percentile(values, 99) * 1e3:>8.0f}")
    for e in errors[:10]:
        print(f"   error: {e}")
    warm = [m for t, m in memory if t >= args.warmup]
    flat = bool(warm) and max(warm[-3:]) <= 1.10 * min(warm[:3])
    print("   ragtune RSS (MiB) over time: " + ", ".join(f"{t:.0f}s {m:.0f}" for t, m in memory))
    print(f"   memory {'flat' if flat else 'NOT flat'} after {args.warmup:.0f}s of warm-up "
          f"(first {min(warm[:3]) if warm else float('nan'):.0f} MiB, last "
          f"{max(warm[-3:]) if warm else float('nan'):.0f} MiB)")
    return not errors and flat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=15.0, help="seconds before memory counts")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--upload-every", type=float, default=2.0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--model-dir", type=Path, default=REPO / ".data/models/base")
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-load-"))
    try:
        with served_ragtune(tmp, args.model_dir) as proc:
            ok = asyncio.run(run(args, proc.url, proc.admin_key, proc.proc.pid, tmp))
        return 2 if args.check and not ok else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
