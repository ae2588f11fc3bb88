"""Brisling (examples/brisling): grammar, parser, equivalence, generator, hold-out and scorer.

The example's modules are named like Skerry's (lang, generate, score), so they are loaded here
under their own names without leaving `lang` in sys.modules for test_dsl.py to trip over.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

BRISLING = Path(__file__).resolve().parents[2] / "examples" / "brisling"


def _load(folder: Path, names: tuple[str, ...]) -> dict:
    saved = {n: sys.modules.pop(n, None) for n in names}
    sys.path.insert(0, str(folder))
    try:
        return {n: importlib.import_module(n) for n in names}
    finally:
        sys.path.remove(str(folder))
        for n in names:
            sys.modules.pop(n, None)
            if saved[n] is not None:
                sys.modules[n] = saved[n]


_mods = _load(BRISLING, ("lang", "generate", "score"))
lang, generate, score = _mods["lang"], _mods["generate"], _mods["score"]


def _rows(name: str) -> list[dict]:
    return [json.loads(x) for x in (BRISLING / "data" / name).read_text().splitlines()]


def _program(row: dict) -> str:
    return row["messages"][-1]["content"]


VALID = [
    'rule "a" { route to H21; }',
    'rule "heavy-north" {\n  when weight > 30 and dest in ["R18", "R22"] and not fragile {\n'
    "    route to H32;\n    surcharge S315;\n  } else {\n    route to H10;\n  }\n}",
    'rule "x" { when not (fragile or dangerous) { priority 1; } }',
    'rule "x" { when customer not in ["K4471", "K2093",] { notify ["ops", "sales"]; } }',
    'rule "x" { priority 2; when cod { surcharge S612; when value >= 5000 { notify ["claims"]; }'
    " } }",
    'rule "x" { when service != "economy" or parcels == 1 and weight <= 3 { route to H50; } }\n'
    'rule "y" { surcharge S110; } # fuel for everyone',
]

INVALID = [  # (source, line, col, words in the message)
    ("", 1, 1, "'rule'"),
    ("rule x { route to H21; }", 1, 6, "string literal"),
    ('rule "x" { route to h21; }', 1, 21, "hub code"),
    ('rule "x" { route H21; }', 1, 18, "'to'"),
    ('rule "x" { route to H21 }', 1, 25, "';'"),
    ('rule "x" { }', 1, 12, "statement"),
    ('rule "x" { move H21; }', 1, 12, "statement"),
    ('rule "x" {\n  when wieght > 3 { route to H21; }\n}', 2, 8, "condition"),
    ('rule "x" { when weight = 3 { route to H21; } }', 1, 24, "comparison"),
    ('rule "x" { when dest > "R01" { route to H21; } }', 1, 22, "'in'"),
    ('rule "x" { when 30 < weight { route to H21; } }', 1, 17, "condition"),
    ('rule "x" { when weight > 3 and { route to H21; } }', 1, 32, "condition"),
    ('rule "x" { when weight > 3 route to H21; }', 1, 28, "'{'"),
    ('rule "x" {\n  when fragile {\n    priority 9;\n  }\n}', 3, 14, "priority must be 1 to 5"),
    ('rule "x" { surcharge S31; }', 1, 22, "surcharge code"),
    ('rule "x" { notify "ops"; }', 1, 19, "'['"),
    ('rule "x" { when fragile { route to H21; }', 1, 42, "end of input"),
    ('rule "x" { when weight > 3 { route to H21; } } else { route to H10; }', 1, 48, "'rule'"),
]


@pytest.mark.parametrize("src", VALID)
def test_valid_programs_parse_and_round_trip(src):
    rules = lang.parse(src)
    assert lang.is_valid(src)
    assert lang.parse(lang.fmt(rules)) == rules


@pytest.mark.parametrize("src,line,col,words", INVALID)
def test_invalid_programs_name_the_position(src, line, col, words):
    with pytest.raises(lang.BrislingError) as err:
        lang.parse(src)
    assert (err.value.line, err.value.col) == (line, col), str(err.value)
    assert words in str(err.value) and str(err.value).startswith(f"line {line}, col {col}:")
    assert not lang.is_valid(src)


def test_grammar_is_a_real_lark_grammar_of_the_stated_size():
    text = lang.GRAMMAR.read_text()
    assert 100 <= len(text.splitlines()) <= 160
    assert lang.parser().options.parser == "lalr"


def test_grammar_page_of_the_manual_quotes_the_lark_file():
    """Every rule on manual/11-grammar.md is the rule of brisling.lark (aliases, comments and
    line breaks aside), so the page cannot drift from the parser."""

    def rules(text: str) -> dict[str, str]:
        text = re.sub(r"//[^\n]*", "", text)
        out, name = {}, None
        for line in text.splitlines():
            m = re.match(r"^\s*(\??[a-z_]+):(.*)$", line)
            if m:
                name = m[1]
                out[name] = m[2]
            elif name and line.strip().startswith("|"):
                out[name] += " " + line.strip()
            else:
                name = None
        return {k: " ".join(re.sub(r"->\s*\w+", "", v).split()) for k, v in out.items()}

    lark_rules = rules(lang.GRAMMAR.read_text())
    page = (BRISLING / "manual" / "11-grammar.md").read_text()
    page_rules = rules("\n".join(x[4:] for x in page.splitlines() if x.startswith("    ")))
    assert len(page_rules) >= 15
    for name, body in page_rules.items():
        assert lark_rules.get(name) == body, name


@pytest.mark.parametrize(
    "a,b",
    [
        ('rule "a" { route to H21; }', 'rule  "a"{route   to H21 ;} # same'),
        (  # and/or order, list order, strict vs inclusive comparisons
            'rule "a" { when weight > 30 and dest in ["R18", "R22"] { route to H32; } }',
            'rule "a" { when dest in ["R22", "R18", "R22"] and weight >= 31 { route to H32; } }',
        ),
        (  # De Morgan, not in, one-value lists
            'rule "a" { when not (fragile or dest in ["R01", "R04"]) { priority 1; } }',
            'rule "a" { when not fragile and dest not in ["R04", "R01"] { priority 1; } }',
        ),
        (
            'rule "a" { when dest in ["R01"] { priority 1; } }',
            'rule "a" { when dest == "R01" { priority 1; } }',
        ),
        (
            'rule "a" { when not (weight <= 30) { priority 1; } }',
            'rule "a" { when weight > 30 { priority 1; } }',
        ),
        (  # a block's actions are a set, notify lists merge
            'rule "a" { surcharge S110; notify ["ops"]; route to H10; notify ["claims"]; }',
            'rule "a" { route to H10; notify ["claims", "ops"]; surcharge S110; }',
        ),
        (  # else with the negated condition
            'rule "a" { when fragile { route to H10; } else { route to H21; } }',
            'rule "a" { when not fragile { route to H21; } else { route to H10; } }',
        ),
        (  # associativity, parentheses, double negation
            'rule "a" { when (cod and fragile) and dangerous { priority 1; } }',
            'rule "a" { when dangerous and (fragile and not not cod) { priority 1; } }',
        ),
    ],
)
def test_equivalent_programs(a, b):
    assert lang.equivalent(a, b)


@pytest.mark.parametrize(
    "a,b",
    [
        ('rule "a" { route to H21; }', 'rule "b" { route to H21; }'),
        ('rule "a" { route to H21; }', 'rule "a" { route to H23; }'),
        (
            'rule "a" { when weight > 30 { priority 1; } }',
            'rule "a" { when weight >= 30 { priority 1; } }',
        ),
        (
            'rule "a" { when fragile or cod and dangerous { priority 1; } }',
            'rule "a" { when (fragile or cod) and dangerous { priority 1; } }',
        ),
        (
            'rule "a" { when fragile { route to H10; } else { route to H21; } }',
            'rule "a" { when fragile { route to H21; } else { route to H10; } }',
        ),
        (  # rule order matters
            'rule "a" { route to H10; }\nrule "b" { route to H21; }',
            'rule "b" { route to H21; }\nrule "a" { route to H10; }',
        ),
        (  # nesting matters
            'rule "a" { when cod { priority 1; when fragile { route to H10; } } }',
            'rule "a" { when cod { priority 1; } when fragile { route to H10; } }',
        ),
        ('rule "a" { when customer == "K4471" { priority 1; } }', 'rule "a" { priority 1; }'),
        ('rule "a" { route to H21; }', 'rule "a" { route to H21 }'),
    ],
)
def test_different_or_broken_programs_are_not_equivalent(a, b):
    assert not lang.equivalent(a, b)


def test_run_evaluates_rules_for_a_parcel():
    src = (
        'rule "a" { surcharge S110; when weight > 30 and not fragile { route to H32; }'
        ' else { route to H10; notify ["ops"]; } }\n'
        'rule "b" { when dest in ["R22", "R27"] { surcharge S240; route to H45; } }'
    )
    heavy = lang.run(src, {"weight": 40, "fragile": False, "dest": "R01"})
    assert heavy == {"route": "H32", "priority": None, "surcharges": {"S110"}, "notify": set()}
    north = lang.run(src, {"weight": 5, "fragile": True, "dest": "R27"})
    assert north["route"] == "H45" and north["surcharges"] == {"S110", "S240"}
    assert north["notify"] == {"ops"}


def test_manual_examples_parse():
    found = 0
    for page in sorted((BRISLING / "manual").glob("*.md")):
        blocks, block = [], []
        for line in [*page.read_text().splitlines(), ""]:
            if line.startswith("    "):
                block.append(line[4:])
            elif block and line.strip() == "":
                blocks.append("\n".join(block))
                block = []
        for code in blocks:
            if code.startswith('rule "') and "..." not in code and "STATEMENTS" not in code:
                assert lang.is_valid(code), f"{page.name}: {code}"
                found += 1
    assert found >= 3


def test_generator_reads_every_fact_from_the_manual():
    cat = generate.CATALOGUE
    assert {k: len(v) for k, v in cat.items()} == {k: 8 for k in generate.PAGES}
    assert cat["hub"]["the Bergen sorting hub"] == "H21"
    assert cat["customer"]["Fjellmat"] == "K4471"
    assert cat["region"]["the Arctic islands"] == "R27"
    assert cat["surcharge"]["the oversize surcharge"] == "S315"
    for kind, names in generate.HELD_OUT.items():
        assert len(names) == 2 and names <= set(cat[kind])
    for code in cat["hub"].values():
        assert lang.is_valid(f'rule "x" {{ route to {code}; }}')
    for code in cat["surcharge"].values():
        assert lang.is_valid(f'rule "x" {{ surcharge {code}; }}')


@pytest.fixture(scope="module")
def data():
    return generate.generate(150, 30, seed=7)


def test_generator_is_deterministic(data):
    assert generate.generate(150, 30, seed=7) == data
    assert generate.generate(150, 30, seed=8)[0] != data[0]


def test_committed_data_matches_the_generator():
    train, test = generate.generate(400, 60, seed=0)
    assert _rows("train.jsonl") == train and _rows("test.jsonl") == test
    assert len(train) == 400 and len(test) == 60 and test[0]["id"] == "t000"


def _values(program: str) -> set[str]:
    """Thresholds, customer accounts and rule names of a program (not codes from catalogues)."""
    out = set()

    def cond(c):
        if isinstance(c, lang.Compare) and (isinstance(c.value, int) or c.field == "customer"):
            out.add(str(c.value))
        if isinstance(c, lang.Member) and c.field == "customer":
            out.update(c.values)
        for a in getattr(c, "args", ()):
            cond(a)
        if isinstance(c, lang.Not):
            cond(c.arg)

    def walk(stmts):
        for s in stmts:
            if isinstance(s, lang.When):
                cond(s.cond)
                walk(s.then)
                walk(s.otherwise or ())

    for r in lang.parse(program):
        out.add(r.name)
        walk(r.body)
    return out - set(generate.CATALOGUE["customer"].values())


def _check_held_out(train: list[dict], test: list[dict]) -> None:
    instructions = {r["messages"][0]["content"] for r in train}
    train_units = set().union(*(generate.units(lang.parse(_program(r))) for r in train))
    train_values = set().union(*(_values(_program(r)) for r in train))
    train_text = " ".join(r["messages"][0]["content"] + " " + _program(r) for r in train)
    for row in test:
        assert row["messages"][0]["content"] not in instructions
        assert not generate.units(lang.parse(_program(row))) & train_units, row["id"]
        assert not _values(_program(row)) & train_values, row["id"]
    held_out_names = set().union(*generate.HELD_OUT.values())
    for name in held_out_names:
        assert name not in train_text
    for code in generate.HELD_OUT_CODES:
        assert code not in train_text
        for row in test:
            if not row["needs_manual"]:
                assert code not in _program(row) + row["messages"][0]["content"]
    manual_rows = [r for r in test if r["needs_manual"]]
    assert len(manual_rows) == len(test) // 3
    for row in manual_rows:
        instruction = row["messages"][0]["content"]
        assert set(row["facts"]) & generate.HELD_OUT_CODES
        assert any(name in instruction for name in held_out_names)
        for code in row["facts"]:
            assert code in _program(row) and code not in instruction
    assert all(r["facts"] == [] for r in test if not r["needs_manual"])


def test_test_rows_are_held_out(data):
    _check_held_out(*data)


def test_committed_test_rows_are_held_out_and_cover_every_held_out_entity():
    train, test = _rows("train.jsonl"), _rows("test.jsonl")
    _check_held_out(train, test)
    used = {c for r in test for c in r["facts"]} & generate.HELD_OUT_CODES
    assert used == generate.HELD_OUT_CODES
    for row in train + test:
        program = _program(row)
        assert lang.fmt(lang.parse(program)) == program
        assert len(program) <= generate.MAX_PROGRAM_CHARS


REF = [
    {
        "messages": [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": 'rule "a" {\n  when fragile {\n    priority 1;\n  }\n}',
            },
        ]
    }
]


@pytest.mark.parametrize(
    "reply,valid,correct",
    [
        ('rule "a" {\n  when fragile {\n    priority 1;\n  }\n}', 1, 1),
        ('```brisling\nrule "a" { when fragile { priority 1; } }\n```\nThis sets it.', 1, 1),
        ('Here is the rule:\n```\nrule "a" {when not not fragile {priority 1;}}\n```', 1, 1),
        ('Sure!\nrule "a" {\n  when fragile { priority 1; }\n}\nIt sets priority 1.', 1, 1),
        ('`rule "a" { when fragile { priority 1; } }`', 1, 1),
        ('Try: rule "a" { when fragile { priority 1; } } -- done', 1, 1),
        ("Use a rule: when fragile, priority 1.", 0, 0),
        ('rule "a" { when fragile { priority 1; } } sets priority 1 for fragile ones.', 1, 1),
        ('rule "a" { when fragile { priority 2; } }', 1, 0),
        ('rule "b" { when fragile { priority 1; } }', 1, 0),
        ('rule "a" { when fragile { priority 1; } }\nrule "b" { route to H10; }', 1, 0),
        ('```\nrule "a" { if fragile then priority 1 }\n```', 0, 0),
        ('rule "a" { when fragile { priority 1; }', 0, 0),
        ("I don't know Brisling.", 0, 0),
        ("", 0, 0),
    ],
)
def test_score(reply, valid, correct):
    assert score.score([reply], REF) == {"syntax_valid": valid, "task_correct": correct, "n": 1}


def test_score_counts_and_rejects_mismatched_lengths():
    rows = _rows("test.jsonl")[:4]
    preds = [_program(rows[0]), "nonsense", _program(rows[1]).replace("rule", "rul", 1), ""]
    assert score.score(preds, rows) == {"syntax_valid": 0.25, "task_correct": 0.25, "n": 4}
    with pytest.raises(ValueError):
        score.score(preds[:3], rows)


def test_score_reference_programs_are_all_correct_and_cli_works(tmp_path, capsys):
    tests = _rows("test.jsonl")
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        "".join(
            json.dumps({"id": t["id"], "prediction": _program(t)}) + "\n" for t in reversed(tests)
        )
    )
    score.main([str(preds)])
    report = json.loads(capsys.readouterr().out)
    assert report["all"] == {"syntax_valid": 1.0, "task_correct": 1.0, "n": 60}
    assert report["needs_manual"]["n"] == 20 and report["syntax_only"]["n"] == 40
    broken = tmp_path / "b.jsonl"
    broken.write_text("".join(json.dumps("no idea") + "\n" for _ in tests))
    score.main([str(broken)])
    report = json.loads(capsys.readouterr().out)
    assert report["all"] == {"syntax_valid": 0.0, "task_correct": 0.0, "n": 60}
