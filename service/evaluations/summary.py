"""From an evaluation's per-item results to API.md's figures: each arm's pass rate with its 95%
interval, per-check rates, retrieval hit rate, latency, tokens and engine time; a paired
comparison for every pair of arms; and the recommendation."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from service.evaluations.stats import compare, recommend, wilson_interval


def _arm(arm: str, rows: Sequence) -> dict:
    total = len(rows)
    passed = sum(1 for r in rows if r.passed)
    lo, hi = wilson_interval(passed, total)
    kinds: dict[str, list[bool]] = {}
    for r in rows:
        for kind, ok in (r.checks or {}).items():
            kinds.setdefault(kind, []).append(bool(ok))
    hits = [r.documents_hit for r in rows if r.documents_hit is not None]
    latency = np.array([r.latency_ms for r in rows], dtype=float)
    paths: dict[str, int] = {}
    for r in rows:
        path = (r.route or {}).get("path", "error")
        paths[path] = paths.get(path, 0) + 1
    return {
        "arm": arm,
        "passed": passed,
        "total": total,
        "pass_rate": round(passed / total, 6),
        "ci95": [round(lo, 6), round(hi, 6)],
        "checks": {k: round(sum(v) / len(v), 6) for k, v in sorted(kinds.items())},
        "retrieval_hit_rate": round(sum(hits) / len(hits), 6) if hits else None,
        "latency_ms": {
            "p50": round(float(np.percentile(latency, 50)), 1),
            "p95": round(float(np.percentile(latency, 95)), 1),
        },
        "tokens": {
            "prompt": sum(r.prompt_tokens for r in rows),
            "completion": sum(r.completion_tokens for r in rows),
        },
        "engine_seconds": round(sum(r.engine_seconds for r in rows), 3),
        "errors": sum(1 for r in rows if r.error),
        "paths": paths,
    }


def summarise(arms: Sequence[str], results: Sequence) -> dict:
    """`results`: EvalResult rows (every arm answered every item: the comparisons are paired on
    the item ids)."""
    by_arm: dict[str, dict[str, object]] = {arm: {} for arm in arms}
    for r in results:
        by_arm.setdefault(r.arm, {})[r.item_id] = r
    items = sorted(set.intersection(*(set(v) for v in by_arm.values())) if by_arm else set())
    passed = {arm: [by_arm[arm][i].passed for i in items] for arm in arms}
    figures = [_arm(arm, [by_arm[arm][i] for i in items]) for arm in arms if items]
    comparisons = (
        [compare(a, passed[a], b, passed[b]).as_dict() for a, b in combinations(arms, 2)]
        if items
        else []
    )
    rec = recommend(passed) if items else None
    return {
        "arms": figures,
        "comparisons": comparisons,
        "recommendation": rec.as_dict() if rec else None,
    }
