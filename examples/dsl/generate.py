"""Seeded generator of (instruction, Skerry program) pairs.

    python examples/dsl/generate.py --out examples/dsl/data --train 400 --test 60 --seed 0

Writes train.jsonl (instruction -> program), train_rag.jsonl (the same pairs, a share of them with
manual sections as retrieved context, RAFT-style) and test.jsonl (held out: no instruction and no
statement of a test program occurs in train; rows with "needs_manual" name products whose SKU
appears only in the manual, never in train).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from lang import Count, Hold, Move, Pick, Release, When, canonical, fmt, parse

MANUAL = Path(__file__).resolve().parent / "manual"
_PRODUCT_LINE = re.compile(r"^- (.+?), .+?: `(\w+)`, home zone `@(\w+)`", re.M)  # catalogue pages
_ZONE_LINE = re.compile(r"^- `@(\w+)`: (the [\w -]+?)(?:,| \(|$)", re.M)  # 07-zones.md


def _manual_facts() -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Products (name -> SKU, home zone) and zone names, read from the manual, their one source."""
    text = "\n".join(p.read_text() for p in sorted(MANUAL.glob("*.md")))
    products = {m[1]: (m[2], m[3]) for m in _PRODUCT_LINE.finditer(text)}
    return products, {m[1]: m[2] for m in _ZONE_LINE.finditer(text)}


PRODUCTS, ZONE_NAMES = _manual_facts()
# fmt: off
# Named only in test rows: the adapter cannot have memorised their SKUs, the manual has them.
HELD_OUT = {"frozen spinach", "strawberry sorbet", "salted butter", "chicken thighs", "apple juice",
            "tomato passata"}
REASON_NAMES = {"TMP": "a temperature excursion", "DMG": "damaged packaging",
                "RCL": "a supplier recall", "EXP": "expiry", "CNT": "a count mismatch"}
RESERVE = {"F": "RF1", "C": "RC1", "A": "RA1"}
FAMILIES = {"F": "23", "C": "156", "A": "479"}
HOME_OF_FAMILY = {"F2": "FZ1", "F3": "FZ2", "C1": "CH1", "C5": "CH2", "C6": "CH2", "A4": "AM2",
                  "A7": "AM1", "A9": "AM1"}
INTERVALS = {4: "4 hours", 6: "6 hours", 8: "8 hours", 12: "12 hours", 24: "day",
             48: "48 hours", 72: "3 days", 168: "week", 336: "14 days"}
CMP_WORDS = {"<": ["drops below {n}", "falls under {n}"],
             "<=": ["is {n} or less", "is at most {n}"],
             ">": ["goes above {n}", "exceeds {n}"],
             ">=": ["reaches {n} or more", "is at least {n}"],
             "==": ["is exactly {n}", "hits {n}"]}
TEMPLATES = {
    Move: [
        "move {q} units of {sku} from {src} to {dst}",
        "transfer {q} x {sku} from {src} to {dst}",
        "shift {q} of {sku} out of {src} into {dst}",
        "relocate {q} units of {sku} ({src} to {dst})",
        "take {q} units of {sku} from {src} and put them in {dst}",
    ],
    Pick: [
        "pick order {o} for {dock}: {items}",
        "pick order {o} to {dock} with {items}",
        "prepare order {o} at {dock} containing {items}",
        "stage order {o} ({items}) at {dock}",
    ],
    Hold: [
        "put {sku} in {zone} on hold because of {why}",
        "hold {sku} in {zone}, reason: {why}",
        "block {sku} stored in {zone} due to {why}",
        "place a hold on {sku} at {zone} for {why}",
    ],
    Release: [
        "release the hold on {sku} in {zone}",
        "lift the hold on {sku} at {zone}",
        "unblock {sku} in {zone}",
        "clear the hold for {sku} stored in {zone}",
    ],
    Count: [
        "schedule a cycle count of {zone} every {every}",
        "count {zone} every {every}",
        "set up a stock count for {zone} once every {every}",
    ],
    When: [
        "when stock of {sku} in {zone} {test}, {act}",
        "if {sku} at {zone} {test}, {act}",
        "whenever the stock of {sku} in {zone} {test}: {act}",
    ],
}
PREFIXES = [
    "Write a Skerry program: {c}.",
    "Skerry: {c}.",
    "In Skerry, {c}.",
    "Using Skerry, {c}.",
    "{C}. Answer in Skerry.",
    "Give me the Skerry code to do this: {c}.",
    "Task for Skerry: {c}.",
]
MAX_PROGRAM_CHARS = 85  # ~60 SmolLM2 tokens: every digit is a token of its own
JOINERS = [", then ", "; after that, ", " and then ", ". Next, "]
# fmt: on


class Writer:
    """Draws one statement and the words for it; names products and zones when `named`."""

    def __init__(self, rng: random.Random, products: list[str], named: bool):
        self.rng, self.products, self.named, self.facts = rng, products, named, []

    def sku(self, cls: str | None = None) -> tuple[str, str, str]:
        """(sku, home zone, words) for a catalogue product or a made-up code."""
        r = self.rng
        choices = [p for p in self.products if cls in (None, PRODUCTS[p][0][0])]
        if self.named or r.random() < 0.3:
            name = r.choice(choices)
            sku, home = PRODUCTS[name]
            if self.named:
                self.facts.append(name)
                return sku, home, name
        else:
            c = cls or r.choice("FCA")
            sku = c + r.choice(FAMILIES[c]) + f"{r.randrange(1000):03d}"
            home = HOME_OF_FAMILY[sku[:2]]
        return sku, home, r.choice(["{s}", "SKU {s}", "item {s}"]).format(s=sku)

    def zone(self, z: str) -> str:
        if self.named and self.rng.random() < 0.6:
            self.facts.append(ZONE_NAMES[z])
            return ZONE_NAMES[z]
        if z.startswith("D"):
            return self.rng.choice(["dock {z}", "{z}"]).format(z=z)
        return self.rng.choice(["zone {z}", "{z}", "@{z}"]).format(z=z)

    def statement(self, sku=None) -> tuple[object, str]:
        r = self.rng
        weights = [5, 3, 3, 2, 0 if sku else 2, 3]  # a given SKU must appear: no count
        kind = r.choices([Move, Pick, Hold, Release, Count, When], weights)[0]
        sku, home, sw = sku or self.sku()
        t = r.choice(TEMPLATES[kind])
        if kind is Move:
            src, dst = r.choice(
                [
                    (RESERVE[sku[0]], home),
                    (home, r.choice(["D1", "D2", "D3"])),
                    (home, "QA"),
                    ("D4", home),
                    (home, RESERVE[sku[0]]),
                ]
            )
            s = Move(sku, r.randint(1, 240), src, dst)
            return s, t.format(q=s.qty, sku=sw, src=self.zone(src), dst=self.zone(dst))
        if kind is Pick:
            lines = [(sku, sw)] + [self.sku()[::2] for _ in range(r.choice([0, 0, 1, 1, 2]))]
            lines = list({s: w for s, w in lines}.items())
            s = Pick(
                str(r.randint(10000, 99999)),
                r.choice(["D1", "D2", "D3"]),
                tuple((sk, r.randint(1, 24)) for sk, _ in lines),
            )
            items = " and ".join(
                r.choice(["{q} x {w}", "{q} units of {w}", "{q} of {w}"]).format(q=q, w=w)
                for (_, q), (_, w) in zip(s.items, lines, strict=True)
            )
            o = r.choice(["{o}", "#{o}", "number {o}"]).format(o=s.order)
            return s, t.format(o=o, dock=self.zone(s.dock), items=items)
        if kind is Hold:
            s = Hold(sku, r.choice([home, home, "QA"]), r.choice(sorted(REASON_NAMES)))
            why = (
                REASON_NAMES[s.reason]
                if self.named or r.random() < 0.5
                else r.choice(["reason code {c}", "code {c}", "!{c}"]).format(c=s.reason)
            )
            return s, t.format(sku=sw, zone=self.zone(s.zone), why=why)
        if kind is Release:
            s = Release(sku, r.choice([home, home, "QA"]))
            return s, t.format(sku=sw, zone=self.zone(s.zone))
        if kind is Count:
            s = Count(r.choice(list(ZONE_NAMES)[:10]), r.choice(list(INTERVALS)))
            return s, t.format(zone=self.zone(s.zone), every=INTERVALS[s.hours])
        op = r.choice(list(CMP_WORDS))
        n = r.randint(5, 60) if op in ("<", "<=", "==") else r.randint(100, 500)
        if op == ">" or op == ">=":
            act = Move(sku, r.randint(20, 150), home, RESERVE[sku[0]])
        elif op == "==" and r.random() < 0.5:
            act = Count(home, r.choice([4, 6, 12]))
        else:
            act = Move(sku, r.randint(20, 150), RESERVE[sku[0]], home)
        words = TEMPLATES[type(act)][0]
        if isinstance(act, Move):
            aw = words.format(q=act.qty, sku="it", src=self.zone(act.src), dst=self.zone(act.dst))
        else:
            aw = words.format(zone=self.zone(act.zone), every=INTERVALS[act.hours])
        test = r.choice(CMP_WORDS[op]).format(n=n)
        return When(sku, home, op, n, act), t.format(
            sku=sw, zone=self.zone(home), test=test, act=aw
        )


def make_pair(rng: random.Random, products: list[str], named: bool, first_sku=None) -> dict:
    w = Writer(rng, products, named)
    size = rng.choices([1, 2, 3], [55, 33, 12])[0]
    stmts, clauses = [], []
    for i in range(size):
        s, c = w.statement(sku=first_sku if i == 0 else None)
        stmts.append(s)
        clauses.append(c)
    text = clauses[0]
    for c in clauses[1:]:
        text += rng.choice(JOINERS) + c
    instruction = rng.choice(PREFIXES).format(c=text, C=text[0].upper() + text[1:])
    return {
        "instruction": instruction,
        "program": "\n".join(fmt(s) for s in stmts),
        "stmts": stmts,
        "facts": w.facts,
    }


def chat(instruction: str, program: str, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": instruction}, {"role": "assistant", "content": program}]
    return {"messages": msgs}


def manual_sections() -> dict[str, str]:
    return {p.stem: p.read_text().strip() for p in sorted(MANUAL.glob("*.md"))}


def context_message(sections: list[str]) -> str:
    """The retrieved-context system message, numbered as the service numbers its context."""
    body = "\n\n".join(f"[{i}] {text}" for i, text in enumerate(sections, 1))
    return "Answer with a Skerry program only. Reference:\n\n" + body


def relevant_sections(pair: dict) -> list[str]:
    """What a good retriever returns for this pair (at most two pages): the catalogue pages of
    named products and the zone page for named zones, else the page of the first statement."""
    pages = {
        Move: "02-move",
        Pick: "03-pick",
        Hold: "04-hold-release",
        Release: "04-hold-release",
        Count: "05-count",
        When: "06-when",
    }
    catalogue = {
        "F": "09-catalogue-frozen",
        "C": "10-catalogue-chilled",
        "A": "11-catalogue-ambient",
    }
    ctx = []
    for f in pair["facts"]:
        page = catalogue[PRODUCTS[f][0][0]] if f in PRODUCTS else "07-zones"
        if page not in ctx:
            ctx.append(page)
    return ctx[:2] or [pages[type(pair["stmts"][0])]]


def _draw(rng, n: int, products: list[str], named, taken_stmts: set, taken_text: set) -> list:
    """n pairs whose instructions and statements are not yet taken (and then are)."""
    pairs = []
    while len(pairs) < n:
        mode, first = named(len(pairs)), None
        if mode == "held_out":  # its first statement names a held-out product
            name = rng.choice(sorted(HELD_OUT))
            first = (*PRODUCTS[name], name)
        p = make_pair(rng, products, bool(mode), first)
        if first:
            p["facts"].insert(0, first[2])
        keys = set(canonical(p["stmts"]))
        too_long = len(p["program"]) > MAX_PROGRAM_CHARS
        if too_long or p["instruction"] in taken_text or keys & taken_stmts:
            continue
        taken_stmts |= keys
        taken_text.add(p["instruction"])
        pairs.append(p)
    return pairs


def _with_context(rng, pair: dict, sections: dict[str, str], rag_fraction: float) -> dict:
    if not pair["facts"] and rng.random() >= rag_fraction:
        return chat(pair["instruction"], pair["program"])
    ctx = relevant_sections(pair)
    if len(ctx) < 2 and rng.random() < 0.5:  # a distractor: learn to ignore off-topic context
        ctx.append(rng.choice([k for k in sections if k not in ctx]))
        rng.shuffle(ctx)
    return chat(pair["instruction"], pair["program"], context_message([sections[k] for k in ctx]))


def generate(n_train: int, n_test: int, seed: int, rag_fraction: float = 0.25):
    """(train rows, the same with RAFT context, test rows); a third of the test needs the manual."""
    rng = random.Random(seed)
    stmts, text = set(), set()
    test = _draw(
        rng, n_test, list(PRODUCTS), lambda i: "held_out" if i % 3 == 2 else "", stmts, text
    )
    seen = [p for p in PRODUCTS if p not in HELD_OUT]
    train = _draw(rng, n_train, seen, lambda i: rng.random() < 0.25, set(stmts), text)
    sections = manual_sections()
    train_rows = [chat(p["instruction"], p["program"]) for p in train]
    rag_rows = [_with_context(rng, p, sections, rag_fraction) for p in train]
    test_rows = [
        {
            **chat(p["instruction"], p["program"]),
            "id": f"t{i:03d}",
            "kinds": [type(s).__name__.lower() for s in p["stmts"]],
            "needs_manual": i % 3 == 2,
            "facts": p["facts"],
        }
        for i, p in enumerate(test)
    ]
    return train_rows, rag_rows, test_rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--rag-fraction",
        type=float,
        default=0.25,
        help="share of unnamed train rows given context in train_rag.jsonl",
    )
    a = ap.parse_args(argv)
    train, rag, test = generate(a.train, a.test, a.seed, a.rag_fraction)
    for row in train + test:  # every reference program must parse
        parse(row["messages"][-1]["content"])
    a.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(a.out / "train.jsonl", train)
    write_jsonl(a.out / "train_rag.jsonl", rag)
    write_jsonl(a.out / "test.jsonl", test)
    print(f"wrote {len(train)} train, {len(rag)} train_rag, {len(test)} test rows to {a.out}")


if __name__ == "__main__":
    main()
