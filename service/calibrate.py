"""`ragtune policy calibrate`: from labeled queries, how often the tenant's `auto` thresholds pick
the labeled path, and the thresholds that would pick it more often.

The signals come from the server (`POST /v1/policy/explain`: retrieval top score and adapter match
per query, measured exactly as serving measures them); the decision is re-run here with
`service.policy.decide_auto` itself, so what is tuned is what serves. The rule is a cascade
(adapter match first, then the knowledge base), so the adapter threshold is chosen first, on
"adapter_rag or not", then the retrieval floor on the rest; each threshold is placed in the
middle of the widest gap among the best-scoring candidates, to generalise beyond the labels.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from service.policy import PATHS, AdapterMatch, Policy, decide_auto


@dataclass
class Labeled:
    query: str
    label: str
    top_score: float | None
    adapter: str | None
    adapter_match: float | None
    adapter_named: bool = False
    floor: float | None = None  # the floor serving used (the background floor, where unset)


@dataclass
class Calibration:
    n: int
    current: dict
    current_accuracy: float
    suggested: dict
    suggested_accuracy: float
    confusion: dict = field(default_factory=dict)  # label -> {predicted: count}, suggested
    mistakes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def predict(policy: Policy, row: Labeled) -> str:
    match = (
        AdapterMatch(row.adapter or "adapter", row.adapter_match, row.adapter_named)
        if row.adapter_match is not None
        else None
    )
    return decide_auto(policy, row.top_score, match, row.floor).path


def accuracy(policy: Policy, rows: list[Labeled]) -> float:
    return sum(predict(policy, r) == r.label for r in rows) / len(rows) if rows else 0.0


def _candidates(values: list[float]) -> list[tuple[float, float]]:
    """(threshold, gap) midway between neighbouring distinct values, and beyond both ends."""
    xs = sorted(set(values))
    if not xs:
        return []
    out = [(xs[0] - 0.05, 0.0), (xs[-1] + 0.05, 0.0)]
    out += [((a + b) / 2, b - a) for a, b in zip(xs, xs[1:], strict=False)]
    return out


def _best(policy: Policy, name: str, values: list[float], score) -> float:
    current = getattr(policy, name)
    best_key, best_value = None, current
    for threshold, gap in [(current, -1.0), *_candidates(values)]:
        # None: left unset (min_score: the background floor), as the tenant has it now
        value = None if threshold is None else round(max(-1.0, min(1.0, threshold)), 4)
        trial = policy.model_copy(update={name: value})
        key = (score(trial), gap)
        if best_key is None or key > best_key:
            best_key, best_value = key, getattr(trial, name)
    return best_value


def calibrate(policy: Policy, rows: list[Labeled]) -> Calibration:
    if not rows:
        raise ValueError("no labeled queries")
    bad = sorted({r.label for r in rows} - set(PATHS))
    if bad:
        raise ValueError(f"unknown labels {bad}: use {', '.join(PATHS)}")
    matches = [r.adapter_match for r in rows if r.adapter_match is not None]
    tops = [r.top_score for r in rows if r.top_score is not None]

    def adapter_score(p: Policy) -> float:
        return sum((predict(p, r) == "adapter_rag") == (r.label == "adapter_rag") for r in rows)

    tuned = policy
    if matches:
        tuned = tuned.model_copy(
            update={"adapter_match_min": _best(tuned, "adapter_match_min", matches, adapter_score)}
        )
    if tops:
        tuned = tuned.model_copy(
            update={"min_score": _best(tuned, "min_score", tops, lambda p: accuracy(p, rows))}
        )
    confusion: dict[str, Counter] = {label: Counter() for label in PATHS}
    mistakes = []
    for r in rows:
        got = predict(tuned, r)
        confusion[r.label][got] += 1
        if got != r.label:
            mistakes.append({"query": r.query, "label": r.label, "predicted": got,
                             "top_score": r.top_score, "adapter_match": r.adapter_match})
    keys = ("min_score", "adapter_match_min")
    return Calibration(
        n=len(rows),
        current={k: getattr(policy, k) for k in keys},
        current_accuracy=round(accuracy(policy, rows), 4),
        suggested={k: getattr(tuned, k) for k in keys},
        suggested_accuracy=round(accuracy(tuned, rows), 4),
        confusion={k: dict(v) for k, v in confusion.items() if v},
        mistakes=mistakes,
    )


def labeled_from_explain(labels: list[dict], explained: list[dict]) -> list[Labeled]:
    """Join labeled rows ({"query", "path"}) with /v1/policy/explain's answers."""
    out = []
    for row, ex in zip(labels, explained, strict=True):
        signals = ex["route"]["signals"]
        out.append(Labeled(
            query=row["query"], label=row.get("path") or row.get("label"),
            top_score=signals.get("top_score"),
            adapter=ex["route"].get("adapter"),
            adapter_match=signals.get("adapter_match"),
            adapter_named=bool(signals.get("adapter_named")),
            floor=signals.get("floor"),
        ))
    return out


def labels_from_evaluation(items: list[dict]) -> list[dict]:
    """Labeled rows ({"query", "path"}) from an evaluation's item lines: an item's label is the
    simplest path arm that passed it (prompt < rag < adapter_rag); items no path arm passed
    teach nothing about routing and are left out, as are `auto` lines and items without their
    query (the eval set was deleted)."""
    order = {p: i for i, p in enumerate(PATHS)}
    best: dict[str, tuple[int, str]] = {}
    queries: dict[str, str] = {}
    for line in items:
        path = line["arm"].split(":", 1)[0]
        if path not in order or not line.get("query"):
            continue
        queries[line["item"]] = line["query"]
        if line["passed"] and (line["item"] not in best or order[path] < best[line["item"]][0]):
            best[line["item"]] = (order[path], path)
    return [{"query": queries[i], "path": path} for i, (_, path) in best.items()]
