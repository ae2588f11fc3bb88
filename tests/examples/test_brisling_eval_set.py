"""examples/brisling/data/eval_set.jsonl, the example's eval set for `ragtune eval` (issue 14):
every held-out task with a `grammar` check against brisling.lark, and the manual's codes as
`contains` checks on the tasks that need them. The set is sound: each reference answer passes its
own item, and a wrong code or a broken program fails it."""

from __future__ import annotations

import json
from pathlib import Path

from service.evaluations.checks import Judge, decode_jsonl, parse_items

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "brisling"


def test_the_eval_set_is_valid_and_its_references_pass():
    grammar = (FOLDER / "brisling.lark").read_text()
    items = parse_items(decode_jsonl((FOLDER / "data" / "eval_set.jsonl").read_bytes()),
                        has_grammar=True)
    rows = {r["id"]: r for r in map(json.loads, (FOLDER / "data" / "test.jsonl").open())}
    assert [i.id for i in items] == list(rows)
    assert sum(1 for i in items if i.checks.contains) == 20
    judge = Judge(grammar)
    for item in items:
        reference = rows[item.id]["messages"][1]["content"]
        assert judge.judge(item, f"```brisling\n{reference}\n```").passed, item.id
        assert not judge.judge(item, reference.replace("{", "(", 1)).passed, item.id
        if item.checks.contains:
            code = item.checks.contains[0]
            assert not judge.judge(item, reference.replace(code, code[0] + "0000")).passed
