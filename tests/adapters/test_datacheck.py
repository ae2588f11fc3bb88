"""The training-data check: formats, each kind of garbage, and the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.datacheck import (
    MIN_SAMPLES,
    check_training_data,
    load_jsonl,
    normalise_row,
    parse_jsonl,
)
from core.errors import TrainingDataError


def pairs(n: int, start: int = 0) -> list[dict]:
    return [
        {"prompt": f"Write the rule for zone {i}.", "completion": f"RULE zone_{i} -> allow;"}
        for i in range(start, start + n)
    ]


def chats(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You write rules."},
                {"role": "user", "content": f"Rule for zone {i}?"},
                {"role": "assistant", "content": f"RULE zone_{i} -> deny;"},
            ]
        }
        for i in range(n)
    ]


def test_clean_data_passes() -> None:
    report = check_training_data(pairs(40) + chats(20))
    assert report.passes, report.reasons
    assert (report.rows, report.valid, report.unique, report.score) == (60, 60, 60, 1.0)
    assert report.reasons == [] and report.warnings == []
    json.dumps(report.to_dict())  # the advisor returns it as JSON
    assert "PASSES" in report.summary()


def test_formats_are_normalised_alike() -> None:
    a = normalise_row({"prompt": "Hi", "completion": "Hello"}, 1)
    b = normalise_row(
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ]
        },
        2,
    )
    c = normalise_row(
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "completion": [{"role": "assistant", "content": "Hello"}],
        },
        3,
    )
    assert a.messages == b.messages == c.messages == ({"role": "user", "content": "Hi"},)
    assert a.completion == b.completion == c.completion == "Hello"
    assert a.chat()[-1] == {"role": "assistant", "content": "Hello"}


@pytest.mark.parametrize(
    "row, why",
    [
        ({"text": "x"}, "expected"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "last message"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "no user message"),
        ({"prompt": "hi", "completion": 3}, "completion"),
        ("just a string", "object"),
    ],
)
def test_invalid_rows_fail_with_their_reason(row, why: str) -> None:
    report = check_training_data([*pairs(60), row])
    assert not report.passes
    assert report.invalid.count == 1 and why in report.invalid.examples[0]["error"]
    assert report.invalid.examples[0]["row"] == 61


def test_too_few_samples() -> None:
    report = check_training_data(pairs(MIN_SAMPLES - 1))
    assert not report.passes
    assert any(f"at least {MIN_SAMPLES}" in r for r in report.reasons)


def test_exact_duplicates_warn_then_fail() -> None:
    few = check_training_data(pairs(60) + pairs(2))
    assert few.passes and few.exact_duplicates.count == 2
    assert few.exact_duplicates.examples[0]["rows"] == [1, 61]
    many = check_training_data(pairs(60) + pairs(20))
    assert not many.passes and many.exact_duplicates.count == 20
    assert any("exact duplicates" in r for r in many.reasons)


def test_near_duplicates_are_a_warning() -> None:
    rows = pairs(60) + [
        {"prompt": "  WRITE the rule for zone 3 ", "completion": "RULE zone_3 -> allow;"}
    ]
    report = check_training_data(rows)
    assert report.passes
    assert report.near_duplicates.count == 1
    assert report.near_duplicates.examples[0]["rows"] == [4, 61]
    assert any("case/spacing" in w for w in report.warnings)


def test_conflicting_answers() -> None:
    rows = pairs(60) + [
        {"prompt": f"write the rule for zone {i}", "completion": f"RULE zone_{i} -> deny;"}
        for i in range(5)
    ]
    report = check_training_data(rows)
    assert report.conflicts.count == 5
    assert not report.passes  # 5 of 60 instructions (8%) disagree with themselves
    example = report.conflicts.examples[0]
    assert {tuple(a["rows"]) for a in example["answers"]} == {(1,), (61,)}
    assert report.score == round((65 - 10) / 65, 3)
    one = check_training_data(rows[:61])
    assert one.passes and one.conflicts.count == 1 and one.warnings


def test_empty_prompt_or_answer_fails() -> None:
    report = check_training_data(
        pairs(60)
        + [
            {"prompt": "Rule for zone X?", "completion": "  "},
            {"prompt": "", "completion": "RULE x;"},
        ]
    )
    assert not report.passes
    assert report.empty.count == 2
    assert [e["empty"] for e in report.empty.examples] == ["answer", "prompt"]


def test_overlong_counts_tokens_with_a_tokenizer() -> None:
    from transformers import AutoTokenizer

    from tests.helpers.adapter_files import base_model_dir

    tok = AutoTokenizer.from_pretrained(base_model_dir())
    long = {"prompt": "zone " * 300, "completion": "RULE long;"}
    report = check_training_data([*pairs(60), long], tokenizer=tok, max_tokens=200)
    assert report.length_unit == "tokens"
    assert report.overlong.count == 1 and report.overlong.examples[0]["length"] > 300
    assert report.passes  # 1 in 61 is a warning
    estimated = check_training_data([*pairs(60), long], max_tokens=200)
    assert estimated.length_unit == "estimated tokens" and estimated.overlong.count == 1


def test_load_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a", oops}\n')
    with pytest.raises(TrainingDataError) as exc:
        load_jsonl(path)
    assert "train.jsonl line 3" in exc.value.message
    assert exc.value.status == 422 and exc.value.code == "invalid_training_data"
    with pytest.raises(TrainingDataError, match="line 1: expected a JSON object"):
        parse_jsonl("[1, 2]\n")
    with pytest.raises(TrainingDataError, match="line 2: not UTF-8"):
        parse_jsonl(b'{"a": 1}\n\xff\xfe\n')
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n')
    assert len(load_jsonl(path)) == 2
