"""Score model outputs against test.jsonl: syntax validity and task correctness.

    python examples/brisling/score.py predictions.jsonl [--test examples/brisling/data/test.jsonl]

A predictions row is a JSON string, or an object with "prediction", "content", "output" or chat
"messages" (the last assistant message). Rows match test rows by "id" when every row has one,
else by line order.

Extraction rule (chat models wrap code in fences and prose):
1. If the reply has a fenced block (```...```), the program is the first such block.
2. Otherwise the program runs from the first `rule "` to the last "}" of the reply (prose
   before and after is dropped; inline backticks are dropped first).
3. If there is no `rule "`, the whole reply is the program (and is scored invalid unless it
   parses).
A program is correct when it is equivalent (lang.equivalent) to the reference: same rules in the
same order, same names, and blocks that do the same thing (see lang.canonical).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from lang import equivalent, is_valid

_FENCE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|$)", re.S)
_START = re.compile(r'\brule\s+"')


def extract_program(reply: str) -> str:
    fenced = _FENCE.search(reply)
    if fenced:
        return fenced.group(1).strip()
    text = reply.replace("`", "")
    start = _START.search(text)
    if start is None:
        return reply.strip()
    text = text[start.start() :]
    end = text.rfind("}")
    return (text[: end + 1] if end >= 0 else text).strip()


def score(predictions: list[str], test_rows: list[dict]) -> dict:
    """Fractions of predictions that parse and that do what their test row asks."""
    if len(predictions) != len(test_rows):
        raise ValueError(f"{len(predictions)} predictions for {len(test_rows)} test rows")
    programs = [extract_program(p) for p in predictions]
    refs = [row["messages"][-1]["content"] for row in test_rows]
    n = len(programs)
    valid = sum(is_valid(p) for p in programs)
    correct = sum(equivalent(p, r) for p, r in zip(programs, refs, strict=True))
    return {
        "syntax_valid": valid / n if n else 0.0,
        "task_correct": correct / n if n else 0.0,
        "n": n,
    }


def _reply(row) -> str:
    if isinstance(row, str):
        return row
    for key in ("prediction", "content", "output"):
        if key in row:
            return row[key]
    return [m for m in row["messages"] if m["role"] == "assistant"][-1]["content"]


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions", type=Path)
    ap.add_argument(
        "--test", type=Path, default=Path(__file__).resolve().parent / "data/test.jsonl"
    )
    a = ap.parse_args(argv)
    preds, tests = read_jsonl(a.predictions), read_jsonl(a.test)
    if all(isinstance(p, dict) and "id" in p for p in preds):
        by_id = {p["id"]: p for p in preds}
        preds = [by_id[t["id"]] for t in tests]
    replies = [_reply(p) for p in preds]
    report = {"all": score(replies, tests)}
    for label, want in (("needs_manual", True), ("syntax_only", False)):
        idx = [i for i, t in enumerate(tests) if t.get("needs_manual", False) is want]
        if idx:
            report[label] = score([replies[i] for i in idx], [tests[i] for i in idx])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
