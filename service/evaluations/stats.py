"""The statistics of an evaluation: a pass rate's 95% interval (Wilson score), the paired
comparison of two arms on the same items (exact McNemar test on the discordant pairs), and the
recommendation ("the simplest arm not detectably worse than the best").

Pure functions over booleans, so they are unit-tested against known values. Items are paired:
every arm answers every item, and two arms differ only where one passed an item the other failed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
ALPHA = 0.05

Verdict = Literal["a_better", "no_difference", "b_better"]


def wilson_interval(passed: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: sound at 0/n and n/n and for small n,
    where the normal approximation gives intervals outside [0, 1] or of zero width."""
    if total <= 0 or not 0 <= passed <= total:
        raise ValueError(f"need 0 <= passed <= total and total > 0, got {passed}/{total}")
    p = passed / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for `b` items only the first arm passed and `c` only the
    second passed: under "no difference" each discordant item is a fair coin, so the p-value is
    the binomial(b + c, 1/2) probability of a split at least this uneven."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts are not negative")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    diff: float  # pass rate of a minus pass rate of b
    p_value: float
    verdict: Verdict
    only_a: int  # items a passed and b failed
    only_b: int

    def as_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "diff": round(self.diff, 6),
            "p_value": float(f"{self.p_value:.6g}"),
            "verdict": self.verdict,
            "only_a": self.only_a,
            "only_b": self.only_b,
        }


def compare(
    a: str, a_passed: Sequence[bool], b: str, b_passed: Sequence[bool], alpha: float = ALPHA
) -> Comparison:
    """Paired comparison of two arms on the same items, in the same order."""
    if len(a_passed) != len(b_passed) or not a_passed:
        raise ValueError("a paired comparison needs the same non-empty items on both arms")
    only_a = sum(1 for x, y in zip(a_passed, b_passed, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a_passed, b_passed, strict=True) if y and not x)
    p = mcnemar_exact(only_a, only_b)
    diff = (sum(a_passed) - sum(b_passed)) / len(a_passed)
    verdict: Verdict = "no_difference"
    if p < alpha:
        verdict = "a_better" if only_a > only_b else "b_better"
    return Comparison(a, b, diff, p, verdict, only_a, only_b)


def simplicity(arm: str) -> int:
    """The decision guide's order: prompt < rag < adapter_rag (any adapter); auto is a router
    over the others, not a path of its own, so it is never the recommendation."""
    if arm == "prompt":
        return 0
    if arm == "rag":
        return 1
    if arm.startswith("adapter_rag"):
        return 2
    return 9


@dataclass(frozen=True)
class Recommendation:
    arm: str
    reason: str

    def as_dict(self) -> dict:
        return {"arm": self.arm, "reason": self.reason}


def _rate(name: str, results: Sequence[bool]) -> str:
    lo, hi = wilson_interval(sum(results), len(results))
    return (
        f"{name} passes {sum(results)}/{len(results)} ({sum(results) / len(results):.0%}, "
        f"95% CI {lo:.0%}-{hi:.0%})"
    )


def recommend(results: dict[str, Sequence[bool]], alpha: float = ALPHA) -> Recommendation | None:
    """The simplest path arm whose pass rate is not detectably worse (exact McNemar, `alpha`)
    than the best arm's; among arms equally simple, the higher pass rate. None without path arms."""
    paths = {arm: r for arm, r in results.items() if simplicity(arm) < 9}
    if not paths:
        return None
    best = max(paths, key=lambda arm: (sum(paths[arm]), -simplicity(arm)))
    fine = []
    for arm in paths:
        if arm == best:
            fine.append((arm, None))
            continue
        c = compare(arm, paths[arm], best, paths[best], alpha)
        if c.verdict != "b_better":
            fine.append((arm, c))
    arm, c = min(fine, key=lambda x: (simplicity(x[0]), -sum(paths[x[0]])))
    if arm == best:
        others = [compare(best, paths[best], o, paths[o], alpha) for o in paths if o != best]
        parts = [_rate(best, paths[best])]
        simpler = [x for x in others if simplicity(x.b) < simplicity(best)]
        if simpler:
            parts.append("every simpler arm is detectably worse: " + "; ".join(
                f"{x.b} {sum(paths[x.b])}/{len(paths[x.b])} (exact McNemar p={x.p_value:.3g})"
                for x in simpler
            ))
        rest = [x for x in others if simplicity(x.b) >= simplicity(best)]
        if rest:
            parts.append("no other arm is detectably better: " + "; ".join(
                f"{x.b} {sum(paths[x.b])}/{len(paths[x.b])} (p={x.p_value:.3g})" for x in rest
            ))
        if not others:
            parts.append("the only path arm")
        return Recommendation(best, "; ".join(parts))
    reason = (
        f"{_rate(arm, paths[arm])}; the best, {_rate(best, paths[best])}, is not detectably "
        f"better (exact McNemar p={c.p_value:.3g}, {c.only_b} items only it passed, "
        f"{c.only_a} only {arm}): start with the simplest approach"
    )
    return Recommendation(arm, reason)
