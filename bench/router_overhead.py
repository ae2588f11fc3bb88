"""What ragtune's prompt path costs over calling vLLM directly.

The same chat workload (same request bodies, temperature 0) goes to vLLM's own
/v1/chat/completions and to ragtune's, at each concurrency, in one run. Per concurrency it prints
requests/s and tokens/s of each, the throughput ratio (ragtune / direct) and the latency ragtune
adds at p50 and p99. Goal: ratio >= 0.97 and at most 2 ms added at p50.

    .venv/bin/python bench/router_overhead.py [--requests 16,32,64] [--max-tokens 16]
        [--concurrency 1,8,32] [--stream] [--model-dir DIR]

By default it starts `ragtune serve` (which spawns vLLM) in a temp data dir and stops it at the
end; --ragtune-url/--engine-url/--admin-key bench a pair that is already running.

Fairness: both targets get byte-identical bodies from one keep-alive client each, both are warmed
up first, and each concurrency runs in rounds of at least `concurrency` requests in the order
A B B A A B ... (A = direct, B = ragtune, swapped at the next level), so slow drift of a shared,
noisy machine falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from _common import (
    BASE_MODEL,
    NotReady,
    RagtuneServer,
    model_preparation_note,
    percentile,
    say,
    tenant_key,
)

# A tenant whose policy sends every query down the prompt path (no retrieval, no adapter).
PROMPT_POLICY = {"mode": "prompt"}
GOAL_RATIO = 0.97
GOAL_ADDED_P50_MS = 2.0

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Give me a synonym for 'happy'.",
    "How many legs does a spider have?",
    "What does a thermometer measure?",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water in Celsius?",
    "Suggest a name for a pet goldfish.",
    "What is 12 times 12?",
    "Which planet is known as the red planet?",
    "Write one sentence about the ocean.",
    "What is the opposite of 'ancient'?",
    "List two fruits that are yellow.",
    "What language is spoken in Brazil?",
    "Why do leaves change color in autumn?",
    "Describe a bicycle in one sentence.",
]


@dataclass
class Target:
    name: str
    url: str
    key: str | None
    session: aiohttp.ClientSession | None = None

    async def open(self, timeout_s: float) -> None:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=120),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers=headers,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


@dataclass
class Result:
    index: int
    latency_s: float
    ttft_s: float | None
    completion_tokens: int
    text: str
    error: str | None = None
    route: str | None = None


@dataclass
class Phase:
    results: list[Result]
    wall_s: float
    cpu_s: float = 0.0


def process_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system, every thread) the process has used; None without a pid.
    The engine is another process (vLLM, ragtune's child): not counted."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Stats:
    ok: int = 0
    errors: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    round_latencies: list[list[float]] = field(default_factory=list)
    first_error: str | None = None
    cpu_s: float = 0.0  # ragtune's process CPU (user + system) while this target's phases ran

    def add(self, phase: Phase) -> None:
        self.wall_s += phase.wall_s
        self.cpu_s += phase.cpu_s
        good = [r for r in phase.results if r.error is None]
        self.ok += len(good)
        self.errors += len(phase.results) - len(good)
        if self.first_error is None:
            self.first_error = next((r.error for r in phase.results if r.error), None)
        self.tokens += sum(r.completion_tokens for r in good)
        self.latencies += [r.latency_s for r in good]
        self.ttfts += [r.ttft_s for r in good if r.ttft_s is not None]
        self.round_latencies.append([r.latency_s for r in good])

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def ttft_p50(self) -> float:
        return percentile(self.ttfts, 50) * 1000

    def drift_ms(self) -> float | None:
        """How far this target's own p50 moved between its first and second half of rounds: an
        added latency smaller than the other target's drift is within the noise."""
        k = len(self.round_latencies) // 2
        if k == 0:
            return None
        early = [x for r in self.round_latencies[:k] for x in r]
        late = [x for r in self.round_latencies[k:] for x in r]
        return abs(percentile(early, 50) - percentile(late, 50)) * 1000


def encode_bodies(model: str, max_tokens: int, stream: bool) -> list[bytes]:
    """One body per prompt, encoded once: both targets are sent the very same bytes."""
    bodies = []
    for prompt in PROMPTS:
        body: dict = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        bodies.append(json.dumps(body).encode())
    return bodies


async def one_request(target: Target, index: int, body: bytes, stream: bool) -> Result:
    started = time.perf_counter()
    ttft = None
    try:
        async with target.session.post(target.url, data=body) as resp:
            route = resp.headers.get("X-Route")
            if resp.status != 200:
                raw = await resp.read()
                return Result(index, 0, None, 0, "", f"HTTP {resp.status}: {raw[:300]!r}")
            if not stream:
                out = json.loads(await resp.read())
                latency = time.perf_counter() - started
                tokens = (out.get("usage") or {}).get("completion_tokens", 0)
                text = out["choices"][0]["message"].get("content") or ""
                return Result(index, latency, None, tokens, text, route=route)
            parts, tokens = [], 0
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if ttft is None:
                    ttft = time.perf_counter() - started
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return Result(index, 0, None, 0, "", f"stream error: {chunk['error']}")
                for choice in chunk.get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens", 0)
            latency = time.perf_counter() - started
            return Result(index, latency, ttft, tokens, "".join(parts), route=route)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        return Result(index, 0, None, 0, "", f"{type(exc).__name__}: {exc}")


async def run_phase(
    target: Target, bodies: list[bytes], indices: range, concurrency: int, stream: bool
) -> Phase:
    """`concurrency` closed-loop workers send the requests `indices` (prompt = index mod count)."""
    results: list[Result] = []
    pending = iter(indices)

    async def worker() -> None:
        for i in pending:  # shared iterator: each index is taken by exactly one worker
            results.append(await one_request(target, i, bodies[i % len(bodies)], stream))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(indices)))))
    return Phase(results, time.perf_counter() - started)


async def warm_up(
    direct: Target, ragtune: Target, bodies: list[bytes], concurrency: int, stream: bool
) -> None:
    # Every prompt once per target (prefix caches filled alike), at the highest concurrency so
    # each client and ragtune's own engine pool already hold their keep-alive connections.
    n = max(len(bodies), concurrency)
    phases = {}
    for target in (direct, ragtune):
        await one_request(target, 0, bodies[0], stream)  # first-request costs, sequentially
        phases[target.name] = await run_phase(target, bodies, range(n), concurrency, stream)
    for target in (direct, ragtune):
        bad = [r.error for r in phases[target.name].results if r.error]
        if bad:
            raise RuntimeError(f"warm-up requests to {target.name} failed: {bad[0]}")
    # Same prompt, same engine, temperature 0: the texts should match; say so if they do not.
    direct_text = {r.index: r.text for r in phases[direct.name].results}
    same = sum(r.text == direct_text[r.index] for r in phases[ragtune.name].results)
    routes = sorted({str(r.route) for r in phases[ragtune.name].results})
    print(f"warm-up: {n} requests per target at c={concurrency}; identical completions "
          f"{same}/{n}; ragtune route: {', '.join(routes)}")
    if routes != ["prompt"]:
        print("warning: ragtune did not answer on the prompt path alone (X-Route above); "
              "this is not the prompt path's overhead")


async def bench_level(
    direct: Target,
    ragtune: Target,
    bodies: list[bytes],
    concurrency: int,
    n: int,
    stream: bool,
    flip: bool,
    pid: int | None = None,
) -> tuple[Stats, Stats]:
    """`pid`: ragtune's process, whose CPU time is counted per phase (see `process_cpu_s`)."""
    stats = {direct.name: Stats(), ragtune.name: Stats()}
    a, b = (ragtune, direct) if flip else (direct, ragtune)
    for k, indices in enumerate(plan_rounds(n, concurrency)):
        for target in (a, b) if k % 2 == 0 else (b, a):  # A B B A A B ...
            before = process_cpu_s(pid)
            phase = await run_phase(target, bodies, indices, concurrency, stream)
            after = process_cpu_s(pid)
            if before is not None and after is not None:
                phase.cpu_s = after - before
            stats[target.name].add(phase)
    return stats[direct.name], stats[ragtune.name]


def plan_rounds(n: int, concurrency: int) -> list[range]:
    """Rounds of `concurrency` requests (4 at least, so c=1 is not one request per switch),
    and at least two rounds per target, so the order can alternate."""
    size = min(max(concurrency, 4), max(1, n // 2))
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def parse_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Throughput and latency of ragtune's prompt path against vLLM directly.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--concurrency", type=parse_list, default="1,8,32",
                   help="concurrency levels, comma-separated")
    p.add_argument("--requests", type=parse_list, default="16,32,64",
                   help="measured requests per target: one number for every level, or one per "
                        "level (give at least 2x the concurrency so each round fills it)")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens of every request")
    p.add_argument("--stream", action="store_true", help="SSE streaming (also reports TTFT)")
    p.add_argument("--model", default=BASE_MODEL, help="model name sent to both targets")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds")
    p.add_argument("--check", action="store_true",
                   help="exit with status 2 when the goal is not met")
    ext = p.add_argument_group("an already running pair (instead of starting one)")
    ext.add_argument("--ragtune-url", help="e.g. http://127.0.0.1:8000")
    ext.add_argument("--engine-url", help="the vLLM behind it, e.g. http://127.0.0.1:8100")
    ext.add_argument("--admin-key", help="ragtune admin key: creates tenant --tenant with policy "
                     "mode 'prompt' (or sets that mode on it and adds a key)")
    ext.add_argument("--tenant-key", help="use this key (of a tenant in mode 'prompt') instead")
    ext.add_argument("--engine-key", help="bearer key of the vLLM server, if it has one")
    ext.add_argument("--ragtune-pid", type=int,
                     help="ragtune's process id on this machine: its CPU per request is counted")
    own = p.add_argument_group("the pair this script starts")
    own.add_argument("--model-dir", type=Path,
                     help="prepared base model folder (forwarded as RAGTUNE_MODEL_DIR)")
    own.add_argument("--engine-python", help="forwarded as RAGTUNE_ENGINE__PYTHON")
    own.add_argument("--data-dir", type=Path, help="default: a temp dir, removed afterwards")
    own.add_argument("--port", type=int, help="ragtune port (default: a free one)")
    own.add_argument("--engine-port", type=int, help="vLLM port (default: a free one)")
    own.add_argument("--startup-timeout", type=float, default=900.0,
                     help="seconds to wait for /readyz (model preparation included)")
    p.add_argument("--tenant", default="bench", help="tenant id the benchmark uses")
    args = p.parse_args(argv)
    if isinstance(args.concurrency, str):
        args.concurrency = parse_list(args.concurrency)
    if isinstance(args.requests, str):
        args.requests = parse_list(args.requests)
    if len(args.requests) == 1:
        args.requests = args.requests * len(args.concurrency)
    if len(args.requests) != len(args.concurrency):
        p.error("--requests takes one number, or one per --concurrency level")
    if bool(args.ragtune_url) != bool(args.engine_url):
        p.error("--ragtune-url and --engine-url go together")
    if args.ragtune_url and not (args.admin_key or args.tenant_key):
        p.error("with --ragtune-url, give --admin-key (or --tenant-key)")
    if args.max_tokens < 1:
        p.error("--max-tokens must be at least 1")
    return args


_METRIC = re.compile(
    r'^(ragtune_http_request_duration_seconds|ragtune_chat_duration_seconds)_(sum|count)'
    r'\{(?:route="/v1/chat/completions"|path="prompt")\} (\S+)$',
    re.M,
)


async def scrape_own_time(target: Target, base_url: str) -> dict[str, float] | None:
    """ragtune's chat HTTP time and engine-call time (sums and counts) from its /metrics."""
    try:
        async with target.session.get(f"{base_url}/metrics") as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    found = {f"{m[1]}_{m[2]}": float(m[3]) for m in _METRIC.finditer(text)}
    return found if len(found) == 4 else None


def own_time_ms(before: dict | None, after: dict | None) -> float | None:
    """Mean time a chat request spent in ragtune outside its call to the engine (auth, parsing,
    policy, rendering, middleware): the part of the overhead the engine's noise cannot hide."""
    if not before or not after:
        return None
    d = {k: after[k] - before[k] for k in after}
    n = d["ragtune_http_request_duration_seconds_count"]
    if n <= 0:
        return None
    http = d["ragtune_http_request_duration_seconds_sum"]
    engine = d["ragtune_chat_duration_seconds_sum"]
    return (http - engine) / n * 1000


def chat_url(base: str) -> str:
    base = base.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return f"{base}/v1/chat/completions"


def report_level(
    c: int, n: int, d: Stats, r: Stats, stream: bool, own_ms: float | None
) -> dict:
    ratio = r.tps / d.tps if d.tps else float("nan")
    added_p50 = r.p(50) - d.p(50)
    added_p99 = r.p(99) - d.p(99)
    drift = d.drift_ms()
    met = ratio >= GOAL_RATIO and added_p50 <= GOAL_ADDED_P50_MS
    for label, s in (("direct", d), ("ragtune", r)):
        row = (f"{c if label == 'direct' else '':>4} {n if label == 'direct' else '':>5}  "
               f"{label:<8}{s.rps:>7.2f} {s.tps:>8.1f} {s.p(50):>9.1f} {s.p(99):>9.1f}")
        if stream:
            row += f" {s.ttft_p50():>9.1f}"
        if s.errors:
            row += f"   {s.errors} failed, first: {s.first_error}"
        print(row)
    pad = " " * 12
    print(f"{pad}ragtune/direct: throughput ratio {ratio:.3f}, added p50 {added_p50:+.1f} ms, "
          f"added p99 {added_p99:+.1f} ms  [{'goal met' if met else 'goal missed'}]")
    if stream:
        print(f"{pad}added TTFT p50 {r.ttft_p50() - d.ttft_p50():+.1f} ms")
    if own_ms is not None:
        print(f"{pad}ragtune's own time per request, outside the engine call: {own_ms:.2f} ms "
              "(its /metrics)")
    cpu_ms = None
    if r.ok and (r.cpu_s or d.cpu_s):
        # Its CPU while direct's phases ran is what it burns idle (timers, the worker's poll):
        # taken off at the same rate, what is left is its CPU per request it served.
        idle_rate = d.cpu_s / d.wall_s if d.wall_s else 0.0
        cpu_ms = max(0.0, r.cpu_s - idle_rate * r.wall_s) / r.ok * 1000
        print(f"{pad}ragtune's CPU per request: {cpu_ms:.2f} ms (its process's user + system "
              f"time in its phases, less its idle rate {idle_rate * 1000:.1f} ms/s)")
    if drift is not None:
        print(f"{pad}noise: direct's own p50 moved {drift:.1f} ms from its early to late rounds")
    if d.tokens != r.tokens:
        print(f"{pad}warning: completion tokens differ (direct {d.tokens}, ragtune {r.tokens})")
    return {"c": c, "ratio": ratio, "added_p50": added_p50, "met": met, "drift": drift,
            "errors": d.errors + r.errors, "cpu_ms": cpu_ms}


async def measure(
    args: argparse.Namespace, direct: Target, ragtune: Target, ragtune_url: str
) -> list[dict]:
    bodies = encode_bodies(args.model, args.max_tokens, args.stream)
    for t in (direct, ragtune):
        await t.open(args.request_timeout)
    try:
        await warm_up(direct, ragtune, bodies, max(args.concurrency), args.stream)
        header = f"{'conc':>4} {'reqs':>5}  {'target':<8}{'req/s':>7} {'tok/s':>8} " \
                 f"{'p50 ms':>9} {'p99 ms':>9}"
        if args.stream:
            header += f" {'TTFT p50':>9}"
        print(header, flush=True)
        out = []
        for level, (c, n) in enumerate(zip(args.concurrency, args.requests, strict=True)):
            if n < 2 * c:
                size = len(plan_rounds(n, c)[0])
                print(f"  (c={c}: {n} requests per target make rounds of {size}; "
                      f"the effective concurrency is lower than {c})")
            flip = level % 2 == 1  # D R R D, then R D D R, ...
            before = await scrape_own_time(ragtune, ragtune_url)
            d, r = await bench_level(direct, ragtune, bodies, c, n, args.stream, flip,
                                     args.ragtune_pid)
            own = own_time_ms(before, await scrape_own_time(ragtune, ragtune_url))
            out.append(report_level(c, n, d, r, args.stream, own))
            sys.stdout.flush()
        return out
    finally:
        for t in (direct, ragtune):
            await t.close()


def summarize(levels: list[dict]) -> bool:
    goal = f"throughput ratio >= {GOAL_RATIO} and added p50 <= {GOAL_ADDED_P50_MS:g} ms"
    missed = [x for x in levels if not x["met"]]
    if not missed:
        at = ", ".join(f"c={x['c']}" for x in levels)
        print(f"summary: goal ({goal}) met at every concurrency ({at}); "
              f"worst ratio {min(x['ratio'] for x in levels):.3f}, "
              f"worst added p50 {max(x['added_p50'] for x in levels):+.1f} ms")
    else:
        at = ", ".join(
            f"c={x['c']} (ratio {x['ratio']:.3f}, added p50 {x['added_p50']:+.1f} ms)"
            for x in missed
        )
        print(f"summary: goal ({goal}) missed at {at}; "
              f"met at {len(levels) - len(missed)}/{len(levels)} concurrency levels")
    noise = max((x["drift"] for x in levels if x["drift"] is not None), default=None)
    if noise is not None and noise > GOAL_ADDED_P50_MS:
        print(f"caution: direct's own p50 moved up to {noise:.1f} ms within this run, more than "
              f"the {GOAL_ADDED_P50_MS:g} ms the goal must resolve; rerun on a quiet machine "
              "and/or with more --requests before reading the verdict as ragtune's")
    return not missed


def run_async(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _interrupt(signum, frame) -> None:
    # A SIGTERM to the bench unwinds like Ctrl-C, so main's finally stops what it started.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when piped to a file too
    signal.signal(signal.SIGTERM, _interrupt)
    proc: RagtuneServer | None = None
    tmp_dir: Path | None = None
    keep_logs = False
    try:
        if args.ragtune_url:
            ragtune_url, engine_url = args.ragtune_url.rstrip("/"), args.engine_url
            key = args.tenant_key or tenant_key(
                ragtune_url, args.admin_key, args.tenant, PROMPT_POLICY
            )
            print(f"benching the running pair: ragtune {ragtune_url}, vLLM {engine_url}")
        else:
            if args.data_dir is None:
                tmp_dir = Path(tempfile.mkdtemp(prefix="ragtune-bench-"))
            proc = RagtuneServer(
                args.data_dir or tmp_dir,
                admin_key="bench-admin-" + secrets.token_urlsafe(16),
                port=args.port,
                engine_port=args.engine_port,
                model_dir=args.model_dir,
                engine_python=args.engine_python,
                new_session=True,
            )
            note = model_preparation_note(proc.resolved_model_dir)
            if note:
                print(note)
            print(f"starting ragtune serve on {proc.url} (vLLM on {proc.engine_url}), "
                  f"data dir {proc.data_dir}", flush=True)
            proc.start()
            took = proc.wait_ready(args.startup_timeout, progress=say)
            print(f"ragtune ready after {took:.0f}s", flush=True)
            ragtune_url, engine_url = proc.url, proc.engine_url
            args.ragtune_pid = proc.proc.pid
            key = tenant_key(ragtune_url, proc.admin_key, args.tenant, PROMPT_POLICY)
        direct = Target("direct", chat_url(engine_url), args.engine_key)
        ragtune = Target("ragtune", chat_url(ragtune_url), key)
        print(f"workload: {len(PROMPTS)} prompts, max_tokens {args.max_tokens}, temperature 0, "
              f"{'streaming' if args.stream else 'non-streaming'}, model {args.model}; "
              f"concurrency {args.concurrency}, requests {args.requests} per target", flush=True)
        levels = run_async(measure(args, direct, ragtune, ragtune_url))
        met = summarize(levels)
        if any(x["errors"] for x in levels):
            keep_logs = True
            return 1
        return 2 if args.check and not met else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        keep_logs = True
        if proc is not None and not isinstance(exc, NotReady):  # NotReady holds the logs
            print(proc.log_tail(), file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the shutdown finish
            print(proc.stop(), flush=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if tmp_dir is not None:
            if keep_logs:
                print(f"logs kept in {tmp_dir}", file=sys.stderr)
            else:
                shutil.rmtree(tmp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
