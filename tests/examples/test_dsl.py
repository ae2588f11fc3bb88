"""Skerry (examples/dsl): parser, equivalence, generator and scorer."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

DSL = Path(__file__).resolve().parents[2] / "examples" / "dsl"
sys.path.insert(0, str(DSL))

import generate  # noqa: E402
import lang  # noqa: E402
import score  # noqa: E402

VALID = [
    "move F2041 x12 @FZ1 -> @D2;",
    "pick #40213 @D1 { F2041 x3, C1107 x2 };",
    "hold C1107 @CH1 !TMP;\nrelease C1107 @CH1;",
    "count @AM1 every 7d; -- weekly",
    "when F2041 @FZ1 < 20 => move F2041 x40 @RF1 -> @FZ1;",
    "when A4402 @AM2 == 0 => count @AM2 every 4h;",
]

INVALID = [  # (source, line, col, words in the message)
    ("move F2041 12 @FZ1 -> @D2;", 1, 12, "quantity"),
    ("move F2041 x12 @FZ1 > @D2;", 1, 21, "'->'"),
    ("move F2041 x12 @FZ1 -> @D2", 1, 27, "';'"),
    ("move F2041 x0 @FZ1 -> @D2;", 1, 12, "quantity"),
    ("move f2041 x1 @FZ1 -> @D2;", 1, 6, "SKU"),
    ("pick #4021 @D1 { F2041 x3 };", 1, 6, "order number"),
    ("pick #40213 @D1 { };", 1, 19, "SKU"),
    ("hold C1107 @CH1 TMP;", 1, 17, "reason"),
    ("count @AM1 every 7 days;", 1, 18, "interval"),
    ("release C1107 @CH1;\nmv F2041 x1 @FZ1 -> @D2;", 2, 1, "statement"),
    ("when F2041 @FZ1 < 20 => when F2041 @FZ1 < 5 => count @FZ1 every 1d;", 1, 25, "action"),
    ("when F2041 @FZ1 = 20 => count @FZ1 every 1d;", 1, 17, "unexpected character '='"),
    ("when F2041 @FZ1 20 => count @FZ1 every 1d;", 1, 17, "comparison"),
    ("hold C1107 @CH1 !TMP; $", 1, 23, "unexpected character"),
    ("MOVE F2041 x12 @FZ1 -> @D2;", 1, 1, "statement"),
]


@pytest.mark.parametrize("src", VALID)
def test_valid_programs_parse_and_round_trip(src):
    stmts = lang.parse(src)
    assert lang.is_valid(src)
    assert lang.parse("\n".join(lang.fmt(s) for s in stmts)) == stmts
    assert lang.check(stmts) == []


@pytest.mark.parametrize("src,line,col,words", INVALID)
def test_invalid_programs_name_the_position(src, line, col, words):
    with pytest.raises(lang.SkerryError) as err:
        lang.parse(src)
    assert (err.value.line, err.value.col) == (line, col)
    assert words in str(err.value) and str(err.value).startswith(f"line {line}, col {col}:")
    assert not lang.is_valid(src)


def test_empty_program_is_not_valid():
    assert not lang.is_valid("") and not lang.is_valid("-- nothing")


@pytest.mark.parametrize(
    "a,b",
    [
        ("move F2041 x12 @FZ1 -> @D2;", "move  F2041\n x012 @FZ1->@D2 ; -- same"),
        (
            "pick #40213 @D1 { F2041 x3, C1107 x2 };",
            "pick #40213 @D1 { C1107 x2, F2041 x1, F2041 x2 };",
        ),
        (
            "when F2041 @FZ1 < 20 => count @FZ1 every 1d;",
            "when F2041 @FZ1 <= 19 => count @FZ1 every 24h;",
        ),
        (
            "when F2041 @FZ1 > 300 => count @FZ1 every 7d;",
            "when F2041 @FZ1 >= 301 => count @FZ1 every 168h;",
        ),
    ],
)
def test_equivalent_programs(a, b):
    assert lang.equivalent(a, b)


@pytest.mark.parametrize(
    "a,b",
    [
        ("move F2041 x12 @FZ1 -> @D2;", "move F2041 x12 @D2 -> @FZ1;"),
        ("move F2041 x12 @FZ1 -> @D2;", "move F2041 x13 @FZ1 -> @D2;"),
        ("hold C1107 @CH1 !TMP; release C1107 @CH1;", "release C1107 @CH1; hold C1107 @CH1 !TMP;"),
        ("hold C1107 @CH1 !TMP;", "hold C1107 @CH1 !TMP; hold C1107 @CH1 !TMP;"),
        (
            "when F2041 @FZ1 < 20 => count @FZ1 every 1d;",
            "when F2041 @FZ1 <= 20 => count @FZ1 every 1d;",
        ),
        ("move F2041 x12 @FZ1 -> @D2;", "move F2041 x12 @FZ1 -> @D2"),
    ],
)
def test_different_or_broken_programs_are_not_equivalent(a, b):
    assert not lang.equivalent(a, b)


def test_interpreter_runs_rules_against_stock():
    src = "when F2041 @FZ1 < 20 => move F2041 x40 @RF1 -> @FZ1;\nhold F2041 @FZ1 !DMG;"
    low = lang.run(src, {("F2041", "RF1"): 100, ("F2041", "FZ1"): 5})
    assert low["stock"][("F2041", "FZ1")] == 45 and ("F2041", "FZ1") in low["held"]
    high = lang.run(src, {("F2041", "RF1"): 100, ("F2041", "FZ1"): 25})
    assert high["stock"][("F2041", "RF1")] == 100
    with pytest.raises(RuntimeError, match="held"):
        lang.run("hold F2041 @FZ1 !DMG; move F2041 x1 @FZ1 -> @D1;", {("F2041", "FZ1"): 5})


def test_check_enforces_site_rules():
    problems = lang.check(
        lang.parse(
            "move F2041 x1 @FZ1 -> @AM1; pick #40213 @FZ1 { F2041 x1 };hold C1107 @XX9 !ABC;"
        )
    )
    assert len(problems) == 4


def test_manual_examples_parse():
    for page in sorted((DSL / "manual").glob("*.md")):
        for line in page.read_text().splitlines():
            code = line.strip()
            placeholder = re.search(r"[A-Z]{4,}", code)  # `move SKU xQTY @FROM -> @TO;`
            if (
                line.startswith("    ")
                and re.match(r"(move|pick|hold|release|when|count) ", code)
                and not placeholder
            ):
                assert lang.is_valid(code), f"{page.name}: {code}"


def test_generator_reads_every_fact_from_the_manual():
    assert len(generate.PRODUCTS) == 18 and generate.HELD_OUT <= set(generate.PRODUCTS)
    assert generate.PRODUCTS["salted butter"] == ("C1203", "CH1")
    assert set(generate.ZONE_NAMES) == set(lang.ZONES)
    assert generate.ZONE_NAMES["FZ2"] == "the deep-freeze room"
    for sku, zone in generate.PRODUCTS.values():
        assert lang.check(lang.parse(f"move {sku} x1 @D4 -> @{zone};")) == []


@pytest.fixture(scope="module")
def data():
    return generate.generate(120, 30, seed=7)


def test_generator_is_deterministic(data):
    assert generate.generate(120, 30, seed=7) == data
    assert generate.generate(120, 30, seed=8)[0] != data[0]


def test_generated_programs_parse_keep_the_site_rules_and_stay_short(data):
    train, rag, test = data
    for row in train + rag + test:
        program = row["messages"][-1]["content"]
        assert lang.check(lang.parse(program)) == [], program
        assert len(program) <= generate.MAX_PROGRAM_CHARS
    assert [r["messages"][-2:] for r in rag] == [r["messages"] for r in train]
    assert any(r["messages"][0]["role"] == "system" for r in rag)


def test_test_rows_are_held_out(data):
    train, _, test = data
    instructions = {r["messages"][0]["content"] for r in train}
    statements = {
        s for r in train for s in lang.canonical(lang.parse(r["messages"][-1]["content"]))
    }
    train_text = " ".join(r["messages"][0]["content"] for r in train)
    for row in test:
        assert row["messages"][0]["content"] not in instructions
        assert not statements & set(lang.canonical(lang.parse(row["messages"][-1]["content"])))
    for name in generate.HELD_OUT:
        assert name not in train_text
        assert generate.PRODUCTS[name][0] not in " ".join(
            r["messages"][1]["content"] for r in train
        )
    manual_rows = [r for r in test if r["needs_manual"]]
    assert manual_rows and all(set(r["facts"]) & generate.HELD_OUT for r in manual_rows)
    assert all(
        generate.PRODUCTS[r["facts"][0]][0] in r["messages"][1]["content"] for r in manual_rows
    )


def test_committed_data_matches_the_generator():
    rows = [json.loads(x) for x in (DSL / "data" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and rows[0]["id"] == "t000"
    assert len((DSL / "data" / "train.jsonl").read_text().splitlines()) == 400


REF = [
    {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "move F2041 x12 @FZ1 -> @D2;"},
        ]
    }
]


@pytest.mark.parametrize(
    "reply,valid,correct",
    [
        ("move F2041 x12 @FZ1 -> @D2;", 1, 1),
        ("```skerry\nmove F2041 x12 @FZ1 -> @D2;\n```\nThis moves the peas.", 1, 1),
        ("Here is the program:\n```\nmove F2041 x12 @FZ1->@D2;\n```", 1, 1),
        ("Sure! Here you go: move F2041 x12 @FZ1 -> @D2;\nIt moves 12 units.", 1, 1),
        ("Use `move F2041 x12 @FZ1 -> @D2;` for that.", 1, 1),
        ("move F2041 x21 @FZ1 -> @D2;", 1, 0),
        ("```\nmove F2041 x12 from FZ1 to D2\n```", 0, 0),
        ("I don't know Skerry.", 0, 0),
        ("", 0, 0),
    ],
)
def test_score(reply, valid, correct):
    assert score.score([reply], REF) == {"syntax_valid": valid, "task_correct": correct, "n": 1}


def test_score_reference_programs_are_all_correct_and_cli_works(tmp_path, capsys):
    tests = score.read_jsonl(DSL / "data" / "test.jsonl")
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        "".join(
            json.dumps({"id": t["id"], "prediction": t["messages"][-1]["content"]}) + "\n"
            for t in reversed(tests)
        )
    )
    score.main([str(preds)])
    report = json.loads(capsys.readouterr().out)
    assert report["all"] == {"syntax_valid": 1.0, "task_correct": 1.0, "n": 60}
    assert report["needs_manual"]["n"] == 20
