"""Seeded generator of (instruction, Brisling program) pairs.

    python examples/brisling/generate.py --out examples/brisling/data --train 400 --test 60 --seed 0

Writes train.jsonl (instruction -> program, chat format) and test.jsonl (held out, with `id`,
`kinds`, `needs_manual` and `facts`). The test is drawn first; then train, rejecting any pair that
shares something with the test:
- no test instruction occurs in train;
- no test `when` statement and no test rule body (both in normal form) occurs in a train program;
- no test value occurs in train: the thresholds (numbers), the customer account numbers stated
  as codes and the rule names of the test are used by no train pair;
- every third test row (20 of 60, `needs_manual`) names a held-out hub, region, customer or
  surcharge by name. The eight held-out entities are never named in train instructions and their
  codes never occur in train programs (nor in the other test rows): only the manual has them.
  `facts` lists the codes such a row's answer must use.
Names and codes are read from the manual (manual/07-10), their one source.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from lang import (
    FLAGS,
    SERVICES,
    TEAMS,
    And,
    Compare,
    Flag,
    Member,
    Not,
    Notify,
    Or,
    Priority,
    Route,
    Rule,
    Surcharge,
    When,
    canonical,
    fmt,
    normal_block,
    normal_when,
    parse,
)

MANUAL = Path(__file__).resolve().parent / "manual"
# A catalogue line: "- the Bergen sorting hub: `H21`" or "- Fjellmat (mountain food ...): `K4471`"
_ENTRY = re.compile(r"^- (.+?)(?: \([^)]*\))?: `(\w+)`$", re.M)
PAGES = {"hub": "07-hubs", "region": "08-regions", "customer": "09-customers",
         "surcharge": "10-surcharges"}  # fmt: skip


def _manual_facts() -> dict[str, dict[str, str]]:
    """kind -> {name: code}, read from the manual's catalogue pages."""
    return {
        kind: {m[1]: m[2] for m in _ENTRY.finditer((MANUAL / f"{page}.md").read_text())}
        for kind, page in PAGES.items()
    }


CATALOGUE = _manual_facts()
# Named only in test rows: an adapter cannot have learned their codes, the manual has them.
HELD_OUT = {
    "hub": {"the Stavanger depot", "the Tromso depot"},
    "region": {"the fjord interior", "the Arctic islands"},
    "customer": {"Havbris Seafood", "Granlund Furniture"},
    "surcharge": {"the island ferry surcharge", "the manual handling surcharge"},
}
HELD_OUT_CODES = {CATALOGUE[k][n] for k, names in HELD_OUT.items() for n in names}
MAX_PROGRAM_CHARS = 260  # ~120 SmolLM2 tokens: every digit is a token of its own

# fmt: off
ADJECTIVES = ["heavy", "light", "late", "early", "north", "south", "coastal", "island", "urgent",
              "bulky", "valuable", "cheap", "fragile", "remote", "weekend", "night", "express",
              "key", "cold", "small", "large", "special", "priority", "slow"]
NOUNS = ["freight", "parcels", "route", "cargo", "orders", "returns", "goods", "lane", "pallets",
         "boxes", "accounts", "mail", "shipments", "loads", "traffic", "flow"]
PREFIXES = [
    'Write a Brisling rule named "{n}": {c}.',
    'Brisling, rule "{n}": {c}.',
    'In Brisling, write rule "{n}" that does this: {c}.',
    '{C}. Call the rule "{n}" and answer in Brisling.',
    'Give me a Brisling rule "{n}": {c}.',
    'Rule "{n}" in Brisling: {c}.',
    'Using Brisling, make a rule called "{n}": {c}.',
]
TWO_RULES = [
    'Write two Brisling rules. First, "{n1}": {c1}. Second, "{n2}": {c2}.',
    'Brisling, two rules in this order. Rule "{n1}": {c1}. Rule "{n2}": {c2}.',
    'In Brisling: a rule "{n1}" ({c1}), then a rule "{n2}" ({c2}).',
]
NUM_WORDS = {
    "weight": {">": ["the weight is over {n} kg", "it weighs more than {n} kg"],
               ">=": ["it weighs {n} kg or more", "the weight is at least {n} kg"],
               "<": ["it weighs under {n} kg", "the weight is below {n} kg"],
               "<=": ["the weight is at most {n} kg", "it weighs {n} kg or less"]},
    "value": {">": ["the declared value is over {n} NOK", "it is worth more than {n} NOK"],
              ">=": ["the declared value is {n} NOK or more", "it is worth at least {n} NOK"],
              "<": ["the declared value is under {n} NOK", "it is worth less than {n} NOK"],
              "<=": ["the declared value is at most {n} NOK", "it is worth {n} NOK or less"]},
    "parcels": {">": ["it has more than {n} parcels"],
                ">=": ["it has at least {n} parcels", "it has {n} parcels or more"],
                "<": ["it has fewer than {n} parcels"],
                "<=": ["it has at most {n} parcels"],
                "==": ["it is exactly {n} parcels", "the shipment has exactly {n} parcels"],
                "!=": ["the parcel count is not {n}"]},
}
NUM_POOL = {"weight": range(2, 160), "value": range(500, 60000, 250), "parcels": range(2, 16)}
FLAG_WORDS = {"fragile": (["it is fragile", "the shipment is fragile"], "it is not fragile"),
              "dangerous": (["it is dangerous goods", "it carries dangerous goods"],
                            "it is not dangerous goods"),
              "cod": (["it is cash on delivery", "it is a COD shipment"],
                      "it is not cash on delivery")}
NEITHER = {("dangerous", "fragile"): "it is neither fragile nor dangerous goods",
           ("cod", "fragile"): "it is neither fragile nor cash on delivery",
           ("cod", "dangerous"): "it is neither dangerous goods nor cash on delivery"}
TEAM_WORDS = {"ops": "ops", "customs": "customs", "claims": "claims", "sales": "sales",
              "hazmat": "hazmat"}
# fmt: on


def _join(words: list[str], last: str = "and") -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" {last} " + words[-1]


class Writer:
    """Draws the parts of one program and the words for them. In `named` mode catalogue entities
    are referred to by name (and recorded in `facts`); otherwise by code."""

    def __init__(self, rng: random.Random, named: bool, held_out: tuple[str, str] | None):
        self.rng, self.named, self.held_out, self.facts = rng, named, bool(held_out), []
        # the held-out entity (kind, name) this program must name, used once
        self.force, self.force_name = held_out or (None, None)
        self.values: set[str] = set()  # test-only values used: numbers, accounts, rule names

    def entity(self, kind: str, exclude=()) -> tuple[str, str]:
        """(code, words) of a hub, region, customer or surcharge."""
        r = self.rng
        pool = CATALOGUE[kind]
        if self.force == kind:
            names = [self.force_name]
            self.force = None
        elif self.named:  # a named test row may name any entity, a train row no held-out one
            names = sorted(n for n in pool if self.held_out or n not in HELD_OUT[kind])
        elif kind == "customer":  # another account, by number
            code = f"K{r.randrange(1000, 10000)}"
            while code in exclude or code in pool.values():
                code = f"K{r.randrange(1000, 10000)}"
            self.values.add(code)
            return code, r.choice(["account {c}", "customer {c}", "account number {c}"]).format(
                c=code
            )
        else:  # by code
            code = pool[r.choice(sorted(n for n in pool if n not in HELD_OUT[kind]))]
            while code in exclude:
                code = pool[r.choice(sorted(n for n in pool if n not in HELD_OUT[kind]))]
            words = {"hub": ["{c}", "hub {c}"], "region": ["{c}", "region {c}"]}.get(
                kind, ["surcharge {c}"]
            )
            return code, r.choice(words).format(c=code)
        names = [n for n in names if pool[n] not in exclude]
        name = r.choice(names)
        if pool[name] not in self.facts:
            self.facts.append(pool[name])
        return pool[name], name

    def number(self, field: str, pool: set[int]) -> int:
        n = self.rng.choice(sorted(pool))
        self.values.add(str(n))
        return n

    # -- conditions -------------------------------------------------------------------------

    def atom(self, field: str, pools: dict) -> tuple[object, str]:
        r = self.rng
        if field in NUM_WORDS:
            op = r.choice(list(NUM_WORDS[field]))
            n = self.number(field, pools[field])
            return Compare(field, op, n), r.choice(NUM_WORDS[field][op]).format(n=n)
        if field in FLAGS:
            if r.random() < 0.3:
                return Not(Flag(field)), FLAG_WORDS[field][1]
            return Flag(field), r.choice(FLAG_WORDS[field][0])
        if field == "service":
            choice = r.random()
            if choice < 0.55:
                s = r.choice(SERVICES)
                return Compare("service", "==", s), r.choice(
                    ["the service is {s}", "it is an {s} shipment" if s[0] in "e" else
                     "it is a {s} shipment"]
                ).format(s=s)  # fmt: skip
            if choice < 0.75:
                s = r.choice(SERVICES)
                return Compare("service", "!=", s), f"the service is not {s}"
            ss = r.sample(SERVICES, 2)
            return Member("service", tuple(ss)), f"the service is {ss[0]} or {ss[1]}"
        kind = "region" if field == "dest" else "customer"
        what = "the destination" if field == "dest" else "the customer"
        choice = r.random()
        if choice < 0.5:
            code, w = self.entity(kind)
            return Compare(field, "==", code), f"{what} is {w}"
        if choice < 0.65:
            code, w = self.entity(kind)
            return Compare(field, "!=", code), f"{what} is not {w}"
        codes, words = [], []
        for _ in range(r.choice([2, 2, 3])):
            code, w = self.entity(kind, exclude=codes)
            codes.append(code)
            words.append(w)
        if choice < 0.9:
            return Member(field, tuple(codes)), r.choice(
                [f"{what} is {_join(words, 'or')}", f"{what} is one of {_join(words, 'or')}"]
            )
        if len(words) == 2 and r.random() < 0.5:
            return Member(field, tuple(codes), True), f"{what} is neither {words[0]} nor {words[1]}"
        return Member(field, tuple(codes), True), f"{what} is none of {_join(words, 'or')}"

    def cond(self, pools: dict) -> tuple[object, str]:
        r = self.rng
        fields = ["weight", "value", "parcels", "dest", "service", "customer", *FLAGS]
        weights = [5, 3, 2, 5, 3, 3, 2, 2, 2]
        first = {"region": "dest", "customer": "customer"}.get(self.force or "")
        if first:  # a held-out region or customer must appear: its field goes first
            weights.pop(fields.index(first))
            fields.remove(first)
        shape = r.choices(["one", "and", "or", "and-or", "or-and", "neither", "and3"],
                          [40, 25, 12, 9, 4, 4, 6])[0]  # fmt: skip
        if shape == "neither" and first is None:
            a, b = sorted(r.sample(FLAGS, 2))
            return Not(Or((Flag(a), Flag(b)))), NEITHER[(a, b)]
        n = {"one": 1, "and": 2, "or": 2, "neither": 1, "and-or": 3, "or-and": 3, "and3": 3}[shape]
        picked = [first] if first else []
        while len(picked) < n:
            f = r.choices(fields, weights)[0]
            if f not in picked:
                picked.append(f)
        if first is None:
            r.shuffle(picked)
        parts = [self.atom(f, pools) for f in picked]
        (c, w) = parts[0]
        if n == 1:
            return c, w
        if shape == "and":
            return And((c, parts[1][0])), f"{w} and {parts[1][1]}"
        if shape == "or":
            return Or((c, parts[1][0])), f"either {w} or {parts[1][1]}"
        if shape == "and3":
            return And(tuple(p[0] for p in parts)), _join([p[1] for p in parts])
        (b, bw), (d, dw) = parts[1], parts[2]
        if shape == "and-or":
            return And((c, Or((b, d)))), f"{w} and either {bw} or {dw}"
        return Or((c, And((b, d)))), f"either {w} or both {bw} and {dw}"

    # -- actions ----------------------------------------------------------------------------

    def actions(self, n: int, kinds: list[str] | None = None) -> tuple[list, str]:
        r = self.rng
        kinds = kinds or []
        while len(kinds) < n:
            k = r.choices(["route", "surcharge", "priority", "notify"], [5, 4, 2, 2])[0]
            if k not in kinds:
                kinds.append(k)
        out, words = [], []
        for k in kinds:
            if k == "route":
                code, w = self.entity("hub")
                out.append(Route(code))
                words.append(r.choice(["route it to {w}", "send it to {w}", "route to {w}"]))
            elif k == "surcharge":
                code, w = self.entity("surcharge")
                out.append(Surcharge(code))
                words.append(r.choice(["add {w}", "charge {w}"]))
            elif k == "priority":
                n_ = r.randint(1, 5)
                out.append(Priority(n_))
                w = str(n_)
                words.append(r.choice(["set priority {w}", "give it priority {w}"]))
            else:
                teams = r.sample(TEAMS, r.choice([1, 1, 2]))
                out.append(Notify(tuple(teams)))
                w = _join([TEAM_WORDS[t] for t in teams])
                words.append(r.choice(["notify {w}", "alert {w}"]))
            words[-1] = words[-1].format(w=w)
        return out, _join(words)

    def when(self, pools: dict, nest: bool) -> tuple[When, str]:
        r = self.rng
        cond, cw = self.cond(pools)
        forced = {"hub": ["route"], "surcharge": ["surcharge"]}.get(self.force or "", [])
        then, tw = self.actions(r.choice([1, 1, 2]), forced)
        text = r.choice(["when {c}, {a}", "if {c}, {a}"]).format(c=cw, a=tw)
        if nest:
            inner_cond, icw = self.cond(pools)
            inner, iw = self.actions(1, [r.choice(["route", "surcharge", "priority"])])
            then = [*then, When(inner_cond, tuple(inner))]
            text += f"; among those, when {icw}, also {iw}"
        otherwise = None
        if r.random() < 0.35:
            otherwise, ow = self.actions(1, ["route" if r.random() < 0.6 else "priority"])
            text += r.choice([", otherwise {o}", "; otherwise {o}", "; else {o}"]).format(o=ow)
        return When(cond, tuple(then), tuple(otherwise) if otherwise else None), text

    def body(self, pools: dict) -> tuple[tuple, str]:
        r = self.rng
        shape = r.choices(["when", "actions+when", "actions"], [75, 15, 10])[0]
        if self.force:  # the held-out entity goes into the first when
            shape = "when"
        if shape == "actions":
            acts, aw = self.actions(r.choice([1, 2]))
            return tuple(acts), r.choice(
                ["for every shipment, {a}", "{a} for all shipments"]
            ).format(a=aw)
        stmts, words = [], []
        if shape == "actions+when":
            acts, aw = self.actions(1, [r.choice(["priority", "surcharge", "notify"])])
            stmts += acts
            words.append(f"for every shipment {aw}")
        w, ww = self.when(pools, nest=r.random() < 0.15)
        stmts.append(w)
        words.append(ww if not words else "and " + ww)
        return tuple(stmts), ", ".join(words)


def _rule_name(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def make_pair(
    rng: random.Random, pools: dict, named: bool, held_out: tuple[str, str] | None
) -> dict:
    w = Writer(rng, named, held_out)
    rules, texts = [], []
    for _ in range(rng.choices([1, 2], [85, 15])[0]):
        name = _rule_name(rng)
        body, text = w.body(pools)
        rules.append(Rule(name, body))
        texts.append((name, text))
        w.values.add(name)
    if len(rules) == 2:
        (n1, c1), (n2, c2) = texts
        instruction = rng.choice(TWO_RULES).format(n1=n1, c1=c1, n2=n2, c2=c2)
    else:
        (n, c) = texts[0]
        instruction = rng.choice(PREFIXES).format(n=n, c=c, C=c[0].upper() + c[1:])
    program = fmt(rules)
    return {
        "instruction": instruction,
        "program": program,
        "rules": rules,
        "facts": w.facts,
        "values": w.values,
    }


def units(rules) -> set:
    """What a test program must not share with any train program: its when statements and its
    rule bodies, in normal form (names aside)."""
    out = set()

    def walk(stmts):
        for s in stmts:
            if isinstance(s, When):
                out.add(("when", normal_when(s)))
                walk(s.then)
                walk(s.otherwise or ())

    for r in rules:
        out.add(("body", normal_block(r.body)))
        walk(r.body)
    return out


def kinds(rules) -> list[str]:
    """The constructs a program uses, for reading scores by kind."""
    found: set[str] = set()

    def cond(c):
        found.add(type(c).__name__.lower())
        for a in getattr(c, "args", ()):
            cond(a)
        if isinstance(c, Not):
            cond(c.arg)
        if getattr(c, "negated", False):
            found.add("not")

    def walk(stmts):
        for s in stmts:
            if isinstance(s, When):
                found.add("when")
                if s.otherwise:
                    found.add("else")
                if any(isinstance(x, When) for x in s.then):
                    found.add("nested")
                cond(s.cond)
                walk(s.then)
                walk(s.otherwise or ())
            else:
                found.add(type(s).__name__.lower())

    for r in rules:
        walk(r.body)
    if len(rules) > 1:
        found.add("rules")
    return sorted(found)


def _pools(seed: int) -> tuple[dict, dict]:
    """Threshold pools, split once per seed into test-only and train-only numbers."""
    rng = random.Random(f"pools-{seed}")
    test, train = {}, {}
    for field, values in NUM_POOL.items():
        vs = list(values)
        rng.shuffle(vs)
        cut = max(3, len(vs) * 3 // 10)
        test[field], train[field] = set(vs[:cut]), set(vs[cut:])
    return test, train


def _draw(rng, n: int, pools: dict, mode, taken_units: set, taken_text: set, taken_values: set):
    pairs = []
    while len(pairs) < n:
        m = mode(len(pairs))
        p = make_pair(rng, pools, named=bool(m), held_out=m if isinstance(m, tuple) else None)
        us = units(p["rules"])
        if (
            len(p["program"]) > MAX_PROGRAM_CHARS
            or p["instruction"] in taken_text
            or us & taken_units
            or p["values"] & taken_values
        ):
            continue
        if isinstance(m, tuple) and not set(p["facts"]) & HELD_OUT_CODES:
            continue
        if not isinstance(m, tuple) and any(c in p["program"] for c in HELD_OUT_CODES):
            continue
        taken_units |= us
        taken_text.add(p["instruction"])
        pairs.append(p)
    return pairs


def _held_out_mode(i: int) -> tuple[str, str] | str:
    """Every third test row names a held-out entity: the kinds and names in turn."""
    if i % 3 != 2:
        return ""
    k = i // 3
    kind = sorted(HELD_OUT)[k % len(HELD_OUT)]
    return kind, sorted(HELD_OUT[kind])[(k // len(HELD_OUT)) % 2]


def chat(instruction: str, program: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": instruction},
            {"role": "assistant", "content": program},
        ]
    }


def generate(n_train: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows); every third test row needs the manual."""
    rng = random.Random(seed)
    test_pools, train_pools = _pools(seed)
    units_, text = set(), set()
    test = _draw(rng, n_test, test_pools, _held_out_mode, units_, text, set())
    test_values = set().union(*(p["values"] for p in test)) if test else set()
    train = _draw(
        rng,
        n_train,
        train_pools,
        lambda i: "named" if rng.random() < 0.25 else "",
        set(units_),
        text,
        test_values,
    )
    train_rows = [chat(p["instruction"], p["program"]) for p in train]
    test_rows = [
        {
            **chat(p["instruction"], p["program"]),
            "id": f"t{i:03d}",
            "kinds": kinds(p["rules"]),
            "needs_manual": i % 3 == 2,
            "facts": p["facts"] if i % 3 == 2 else [],
        }
        for i, p in enumerate(test)
    ]
    return train_rows, test_rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    train, test = generate(a.train, a.test, a.seed)
    for row in train + test:  # every reference program must parse back to itself
        program = row["messages"][-1]["content"]
        assert fmt(parse(program)) == program and canonical(parse(program)), program
    a.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(a.out / "train.jsonl", train)
    write_jsonl(a.out / "test.jsonl", test)
    print(f"wrote {len(train)} train, {len(test)} test rows to {a.out}")


if __name__ == "__main__":
    main()
