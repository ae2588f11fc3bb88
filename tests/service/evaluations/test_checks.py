"""Eval set rows and checks: each bad row is refused with its own code and names the row; each
check kind judges answers as documented."""

import json

import pytest

from core.errors import EvalError
from service.evaluations.checks import Judge, code_block, compile_grammar, decode_jsonl, parse_items

GRAMMAR = r"""
start: stmt+
stmt: "reserve" CODE "x" INT ";"
CODE: /[A-Z][0-9]{3}/
%import common.INT
%import common.WS
%ignore WS
"""


def item(**kw):
    return parse_items([{"query": "q", **kw}], has_grammar=True)[0]


@pytest.mark.parametrize(
    ("rows", "code", "in_message"),
    [
        ([], "empty_eval_set", "no items"),
        (
            [
                {"query": "q", "checks": {"contains": ["a"]}},
                {"query": "q", "checks": {"smells": "ok"}},
            ],
            "unknown_check_kind",
            "row 2: unknown check kind 'smells'",
        ),
        (
            [{"query": "q", "checks": {}}],
            "invalid_eval_set",
            "row 1: an item needs at least one check",
        ),
        (
            [{"checks": {"contains": ["a"]}}],
            "invalid_eval_set",
            "exactly one of query and messages",
        ),
        (
            [
                {
                    "query": "q",
                    "messages": [{"role": "user", "content": "q"}],
                    "checks": {"exact": "a"},
                }
            ],
            "invalid_eval_set",
            "exactly one of query and messages",
        ),
        (
            [{"messages": [{"role": "assistant", "content": "q"}], "checks": {"exact": "a"}}],
            "invalid_eval_set",
            "end with a user message",
        ),
        ([{"query": "q", "checks": {"regex": "("}}], "invalid_eval_set", "regex does not compile"),
        ([{"query": "q", "checks": {"contains": "a"}}], "invalid_eval_set", "checks.contains"),
        (["not an object"], "invalid_eval_set", "row 1: an item is a JSON object"),
        (
            [{"id": "a", "query": "q", "checks": {"exact": "a"}}] * 2,
            "invalid_eval_set",
            "row 2: item id 'a' is used twice",
        ),
    ],
)
def test_bad_rows_have_their_own_code_and_name_the_row(rows, code, in_message):
    with pytest.raises(EvalError) as e:
        parse_items(rows, has_grammar=False)
    assert e.value.code == code and e.value.status == 422
    assert in_message in e.value.message


def test_a_grammar_check_needs_the_sets_grammar():
    rows = [{"query": "q", "checks": {"grammar": True}}]
    with pytest.raises(EvalError, match="needs the set's grammar") as e:
        parse_items(rows, has_grammar=False)
    assert e.value.code == "invalid_eval_set"
    assert parse_items(rows, has_grammar=True)[0].checks.grammar


@pytest.mark.parametrize("bad", ["start: undefined_rule", "start: (", "%import nowhere.X"])
def test_a_grammar_that_does_not_compile_is_invalid_grammar(bad):
    with pytest.raises(EvalError) as e:
        compile_grammar(bad)
    assert e.value.code == "invalid_grammar" and e.value.param == "grammar"


def test_jsonl_lines_that_are_not_json_name_the_line():
    with pytest.raises(EvalError, match="line 2: not JSON") as e:
        decode_jsonl(b'{"query": "q", "checks": {"exact": "a"}}\n{oops\n')
    assert e.value.code == "invalid_eval_set"
    rows = decode_jsonl(b'\n{"query": "q", "checks": {"exact": "a"}}\n\n')
    assert [i.id for i in parse_items(rows, has_grammar=False)] == ["1"]


def test_each_check_kind():
    j = Judge()
    v = j.judge(item(checks={"contains": ["Paris", "france"]}), "The capital of France is paris.")
    assert v.passed and v.checks == {"contains": True}
    v = j.judge(item(checks={"contains": ["Paris", "Lyon"]}), "Paris")
    assert not v.passed and v.failed == ["contains"]
    assert not j.judge(item(checks={"not_contains": ["berlin"]}), "Berlin, surely").passed
    assert j.judge(item(checks={"not_contains": ["berlin"]}), "Paris").passed
    assert j.judge(item(checks={"regex": r"\bF\d{4}\b"}), "use F3362 here").passed
    assert not j.judge(item(checks={"regex": r"^F\d{4}$"}), "use F3362 here").passed
    assert j.judge(item(checks={"exact": "42"}), "  42\n").passed
    assert not j.judge(item(checks={"exact": "42"}), "42.").passed
    both = j.judge(item(checks={"contains": ["a"], "exact": "b"}), "a")
    assert not both.passed and both.failed == ["exact"] and both.checks["contains"]


def test_grammar_check_parses_the_fenced_block_or_the_whole_answer():
    j = Judge(GRAMMAR)
    it = item(checks={"grammar": True})
    assert j.judge(it, "reserve A123 x2;").passed
    assert j.judge(
        it, "Here you go:\n```skerry\nreserve A123 x2;\nreserve B001 x10;\n```\nDone."
    ).passed
    assert not j.judge(it, "```\nreserve A12 x2;\n```").passed
    assert not j.judge(it, "I would reserve A123 twice.").passed
    assert code_block("```\nunclosed") == "unclosed"


def test_documents_are_a_hit_rate_not_a_check():
    it = item(checks={"contains": ["x"]}, documents=["doc_1", "doc_2"])
    assert Judge().judge(it, "x", cited=["doc_2", "doc_1", "doc_9"]).documents_hit is True
    v = Judge().judge(it, "x", cited=["doc_1"])
    assert v.passed and v.documents_hit is False
    assert Judge().judge(item(checks={"contains": ["x"]}), "x").documents_hit is None


def test_items_round_trip_to_chat_messages():
    rows = [
        json.loads(
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "s"},
                        {"role": "user", "content": "u"},
                    ],
                    "checks": {"exact": "a"},
                }
            )
        )
    ]
    assert parse_items(rows, has_grammar=False)[0].chat_messages()[-1] == {
        "role": "user",
        "content": "u",
    }
    assert item(checks={"exact": "a"}).chat_messages() == [{"role": "user", "content": "q"}]
