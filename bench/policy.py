"""The automatic policy: decision accuracy on the labeled query sets, and what deciding costs.

Starts `ragtune serve` (real vLLM) in a temp dir and sets up the four example tenants as a new
user would: Halvard (the Skerry manual uploaded, a rank-16 adapter registered with a description
and ten training instructions as its examples), Brisling (the same for its routing language),
Zephyr (its four policy pages) and a plain tenant. Then:

0. accuracy of the defaults, nothing calibrated (goal >= 90%): `auto`'s path on every labeled row;
1. accuracy: `ragtune policy calibrate` on the even rows of each labeled set (applied), then
   `auto`'s path on the odd rows (held out), and on all rows;
2. cost: the same chat requests (`max_tokens` 1) to each tenant in mode `prompt` and in mode
   `auto`, alternating, in the same run; the added p50/p99 latency of `auto` (query embedding,
   retrieval over the tenant's chunks, adapter match), and the server's own decision time per
   request (the `route` entry of the `Server-Timing` header; the decision histogram
   `ragtune_route_decision_duration_seconds` too).

Goal: auto adds at most 10 ms at p50 on this CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import percentile, served_ragtune  # noqa: E402

EX = REPO / "examples"
SETS = {
    "halvard": EX / "dsl" / "labeled_queries.jsonl",
    "brisling": EX / "brisling" / "labeled_queries.jsonl",
    "zephyr": EX / "policy_docs" / "labeled_queries.jsonl",
    "plain": EX / "plain" / "labeled_queries.jsonl",
}
# (tenant, adapter name, manual, training rows, description): the DSL tenants' adapters
ADAPTERS = [
    ("halvard", "skerry", EX / "dsl" / "manual", EX / "dsl" / "data" / "train.jsonl",
     "Writes Skerry programs for Halvard's warehouse control system"),
    ("brisling", "brisling", EX / "brisling" / "manual", EX / "brisling" / "data" / "train.jsonl",
     "Writes Brisling routing rules for Tollhaven Parcel"),
]
EXAMPLE_PROMPTS = 10


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def upload(c: httpx.Client, key: str, folder: Path) -> None:
    files = [("file", (p.name, p.read_bytes())) for p in sorted(folder.glob("*.md"))]
    r = c.post("/v1/documents", headers={"Authorization": f"Bearer {key}"}, files=files)
    r.raise_for_status()
    job = r.json()["job_id"]
    while (s := c.get(f"/v1/jobs/{job}", headers={"Authorization": f"Bearer {key}"})
           .json()["state"]) not in ("succeeded", "failed"):
        time.sleep(0.2)
    if s != "succeeded":
        raise RuntimeError(f"indexing {folder} failed")


def setup(c: httpx.Client, admin: str, tmp: Path, model_dir: Path) -> dict[str, str]:
    from tests.helpers.random_lora import make_random_lora

    keys = {}
    for t in SETS:
        r = c.post("/v1/tenants", headers={"Authorization": f"Bearer {admin}"},
                   json={"id": t, "policy": {}})
        r.raise_for_status()
        keys[t] = r.json()["api_key"]
    upload(c, keys["zephyr"], EX / "policy_docs" / "docs")
    for i, (tenant, name, manual, train, description) in enumerate(ADAPTERS):
        upload(c, keys[tenant], manual)
        lora = make_random_lora(tmp / name, model_dir, seed=i, rank=16, scale=0.3)
        lines = train.read_text().splitlines()[:EXAMPLE_PROMPTS]
        examples = [json.loads(line)["messages"][0]["content"] for line in lines]
        done = subprocess.run(
            [str(Path(sys.executable).with_name("ragtune")), "adapters", "register", str(lora),
             "--name", name, "--examples", json.dumps(examples), "--description", description,
             "--key", keys[tenant], "--url", str(c.base_url)],
            capture_output=True, text=True,
        )
        if done.returncode:
            raise RuntimeError(done.stderr)
    return keys


def defaults(c: httpx.Client, keys: dict[str, str]) -> float:
    print("\n0. decision accuracy of the defaults (nothing calibrated; goal >= 90%)")
    total = hits_all = 0
    for t, path in SETS.items():
        labeled = rows(path)
        ex = c.post("/v1/policy/explain", headers={"Authorization": f"Bearer {keys[t]}"},
                    json={"queries": [r["query"] for r in labeled]}).json()["data"]
        ok = [e["route"]["path"] == r["path"] for e, r in zip(ex, labeled, strict=True)]
        floors = {e["route"]["signals"].get("floor") for e in ex} - {None}
        print(f"   {t:<8} {sum(ok):>3}/{len(ok):<3} = {sum(ok) / len(ok):6.1%}  "
              f"floor {', '.join(f'{f:.3f}' for f in sorted(floors)) or '-'}")
        for e, r, good in zip(ex, labeled, ok, strict=True):
            if not good:
                s = e["route"]["signals"]
                print(f"      {r['path']:>11} -> {e['route']['path']:<11} top "
                      f"{s.get('top_score')} match {s.get('adapter_match')}  {r['query'][:70]}")
        total += len(ok)
        hits_all += sum(ok)
    print(f"   all tenants: {hits_all}/{total} = {hits_all / total:.1%}")
    return hits_all / total


def accuracy(c: httpx.Client, admin: str, keys: dict[str, str], tmp: Path) -> None:
    print("\n1. decision accuracy (thresholds from `ragtune policy calibrate` on the even rows)")
    print(f"   {'tenant':<8} {'calibrated':>10} {'held out':>9} {'all':>6}  thresholds")
    total = hits_all = 0
    for t, path in SETS.items():
        labeled = rows(path)
        tune = tmp / f"{t}.jsonl"
        tune.write_text("".join(json.dumps(r) + "\n" for r in labeled[0::2]))
        out = subprocess.run(
            [str(Path(sys.executable).with_name("ragtune")), "policy", "calibrate", "--tenant",
             t, "--labeled", str(tune), "--key", keys[t], "--admin-key", admin, "--apply",
             "--json", "--url", str(c.base_url)],
            capture_output=True, text=True,
        )
        if out.returncode:
            raise RuntimeError(out.stderr or out.stdout)
        report = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
        ex = c.post("/v1/policy/explain", headers={"Authorization": f"Bearer {keys[t]}"},
                    json={"queries": [r["query"] for r in labeled]}).json()["data"]
        ok = [e["route"]["path"] == r["path"] for e, r in zip(ex, labeled, strict=True)]
        held = ok[1::2]
        print(f"   {t:<8} {report['suggested_accuracy']:>10.1%} "
              f"{sum(held) / len(held):>9.1%} {sum(ok) / len(ok):>6.1%}  {report['suggested']}")
        total += len(ok)
        hits_all += sum(ok)
    print(f"   all tenants: {hits_all}/{total} = {hits_all / total:.1%}")


def latency(
    c: httpx.Client, admin: str, keys: dict[str, str], rounds: int, gap_s: float = 0.0
) -> bool:
    print(f"\n2. what auto adds over the prompt path ({rounds} rounds, max_tokens 1"
          + (f", {gap_s * 1e3:.0f} ms between requests)" if gap_s else ", back to back)"))
    queries = [(t, r["query"]) for t, path in SETS.items() for r in rows(path)]
    cost = {"prompt": [], "auto": []}
    decided: dict[str, list[float]] = {}  # auto's decisions by path: Server-Timing's route (ms)
    steps: dict[str, dict[str, list[float]]] = {}  # path -> step -> ms (Server-Timing)
    auto_buckets: dict[float, float] = {}
    for i in range(rounds):
        for mode in (("prompt", "auto") if i % 2 == 0 else ("auto", "prompt")):
            before = _buckets(c.get("/metrics").text)
            for t in SETS:
                c.patch(f"/v1/tenants/{t}", headers={"Authorization": f"Bearer {admin}"},
                        json={"policy": {"mode": mode}}).raise_for_status()
            for t, q in queries:
                time.sleep(gap_s)
                started = time.perf_counter()
                r = c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {keys[t]}"},
                           json={"messages": [{"role": "user", "content": q}], "max_tokens": 1,
                                 "temperature": 0})
                elapsed = time.perf_counter() - started
                r.raise_for_status()
                cost[mode].append(elapsed)
                if mode == "auto":
                    timing = _timings(r)
                    timing.pop("engine", None)
                    route = timing.pop("route")
                    decided.setdefault(r.headers["x-route"], []).append(route)
                    # the thread hop, adapter match, context fitting, deciding itself
                    timing["rest"] = route - sum(timing.values())
                    for step, ms in timing.items():
                        steps.setdefault(r.headers["x-route"], {}).setdefault(step, []).append(ms)
            if mode == "auto":  # the decisions of this round only
                after = _buckets(c.get("/metrics").text)
                for le, n in after.items():
                    auto_buckets[le] = auto_buckets.get(le, 0.0) + n - before.get(le, 0.0)
    p50 = {m: percentile(v, 50) * 1e3 for m, v in cost.items()}
    p99 = {m: percentile(v, 99) * 1e3 for m, v in cost.items()}
    print(f"   end to end p50: prompt {p50['prompt']:.1f} ms, auto {p50['auto']:.1f} ms "
          f"(+{p50['auto'] - p50['prompt']:.1f} ms; the engine reads the added context too)")
    print(f"   end to end p99: prompt {p99['prompt']:.1f} ms, auto {p99['auto']:.1f} ms")
    every = [ms for v in decided.values() for ms in v]
    print("   auto's decision time by path it took (the Server-Timing header's route, ms): "
          + ", ".join(f"{p} p50 {percentile(v, 50):.2f} p99 {percentile(v, 99):.2f} (n={len(v)})"
                      for p, v in sorted(decided.items())))
    for p, by_step in sorted(steps.items()):
        print(f"     {p} steps p50 (ms): " + ", ".join(
            f"{k} {percentile(v, 50):.2f} (n={len(v)})" for k, v in by_step.items()))
    hist, bound = _p50(auto_buckets)
    print(f"   the same from the decision histogram (interpolated as Prometheus' "
          f"histogram_quantile does): p50 {hist:.1f} ms, in the bucket <= {bound:.1f} ms")
    p50 = percentile(every, 50)
    print(f"   auto's decision time p50 over every auto request: {p50:.2f} ms "
          f"(p99 {percentile(every, 99):.2f}; goal <= 10 ms p50)")
    print(f"   ratio: auto's decision p50 / the prompt path's end-to-end p50 in this run = "
          f"{p50 / (percentile(cost['prompt'], 50) * 1e3):.3f}")
    return p50 <= 10


def _timings(r: httpx.Response) -> dict[str, float]:
    """The response's Server-Timing entries (`route;dur=<ms>`, `embed;dur=<ms>`...): ms."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r"(?:^|,)\s*([a-z_]+);dur=([0-9.]+)", r.headers["server-timing"])}


def _buckets(text: str) -> dict[float, float]:
    """Cumulative decision-time histogram over all paths: upper bound (s) -> count."""
    per_le: dict[float, float] = {}
    for m in re.finditer(
        r'^ragtune_route_decision_duration_seconds_bucket{le="([^"]+)",path="[^"]+"} (\S+)$',
        text, re.M,
    ):
        le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        per_le[le] = per_le.get(le, 0.0) + float(m.group(2))
    return per_le


def _p50(per_le: dict[float, float]) -> tuple[float, float]:
    """The median decision (ms), interpolated linearly inside its histogram bucket, and that
    bucket's upper bound (ms)."""
    total = per_le.get(float("inf"), 0.0)
    lower, below = 0.0, 0.0
    for le in sorted(per_le):
        if total and per_le[le] >= total / 2:
            if le == float("inf"):
                return lower * 1e3, le
            share = (total / 2 - below) / max(per_le[le] - below, 1e-9)
            return (lower + (le - lower) * share) * 1e3, le * 1e3
        lower, below = le, per_le[le]
    return float("inf"), float("inf")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="pause before each request (the engine's trailing work ends first)")
    p.add_argument("--model-dir", type=Path, default=REPO / ".data/models/base")
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-policy-"))
    try:
        with served_ragtune(tmp, args.model_dir) as proc, \
                httpx.Client(base_url=proc.url, timeout=300) as c:
            keys = setup(c, proc.admin_key, tmp, args.model_dir)
            defaults(c, keys)
            accuracy(c, proc.admin_key, keys, tmp)
            ok = latency(c, proc.admin_key, keys, args.rounds, args.gap_ms / 1e3)
        return 2 if args.check and not ok else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
