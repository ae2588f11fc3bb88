"""Skerry, Halvard Cold Chain's warehouse-order language: tokenizer, parser, canonical form, run.

    program = { stmt } ;
    stmt    = action ";" | "when" SKU ZONE CMP INT "=>" action ";" ;
    action  = "move" SKU QTY ZONE "->" ZONE
            | "pick" ORDER ZONE "{" SKU QTY { "," SKU QTY } "}"
            | "hold" SKU ZONE REASON | "release" SKU ZONE | "count" ZONE "every" DURATION ;

SKU F2041 (class letter F/C/A + 4 digits), QTY x12, ZONE @FZ1, ORDER #40213 (5 digits),
REASON !TMP, DURATION 7d or 12h, CMP < <= > >= ==. Comments run from "--" to the end of the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Zone -> the SKU class it may store (None: any class, e.g. quarantine and the dispatch docks).
ZONES = {
    "FZ1": "F",
    "FZ2": "F",
    "RF1": "F",
    "CH1": "C",
    "CH2": "C",
    "RC1": "C",
    "AM1": "A",
    "AM2": "A",
    "RA1": "A",
    "QA": None,
    "D1": None,
    "D2": None,
    "D3": None,
    "D4": None,
}
REASONS = {"TMP", "DMG", "RCL", "EXP", "CNT"}
CMPS = ("<=", ">=", "==", "<", ">")
ACTIONS = ("move", "pick", "hold", "release", "count")

_TOKEN = re.compile(
    r"(?P<skip>[ \t\r\n]+|--[^\n]*)|(?P<zone>@[A-Za-z0-9]+)|(?P<order>#[0-9]+)"
    r"|(?P<reason>![A-Za-z]+)|(?P<duration>[0-9]+[hd]\b)|(?P<qty>x[0-9]+\b)|(?P<int>[0-9]+\b)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<sym>->|=>|<=|>=|==|[<>{},;])"
)


class SkerryError(ValueError):
    """A syntax error, with 1-based line and column of the offending token."""

    def __init__(self, message: str, line: int, col: int):
        super().__init__(f"line {line}, col {col}: {message}")
        self.message, self.line, self.col = message, line, col


@dataclass(frozen=True)
class Tok:
    kind: str  # zone | order | reason | duration | qty | int | word | sym | end
    text: str
    line: int
    col: int


@dataclass(frozen=True)
class Move:
    sku: str
    qty: int
    src: str
    dst: str


@dataclass(frozen=True)
class Pick:
    order: str
    dock: str
    items: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Hold:
    sku: str
    zone: str
    reason: str


@dataclass(frozen=True)
class Release:
    sku: str
    zone: str


@dataclass(frozen=True)
class Count:
    zone: str
    hours: int


@dataclass(frozen=True)
class When:
    sku: str
    zone: str
    op: str
    value: int
    action: Move | Pick | Hold | Release | Count


def tokenize(src: str) -> list[Tok]:
    toks, pos, line, line_start = [], 0, 1, 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None:
            raise SkerryError(f"unexpected character {src[pos]!r}", line, pos - line_start + 1)
        if m.lastgroup != "skip":
            toks.append(Tok(m.lastgroup, m.group(), line, pos - line_start + 1))
        for i, ch in enumerate(m.group()):
            if ch == "\n":
                line, line_start = line + 1, pos + i + 1
        pos = m.end()
    toks.append(Tok("end", "end of input", line, pos - line_start + 1))
    return toks


class _Parser:
    def __init__(self, src: str):
        self.toks, self.i = tokenize(src), 0

    def peek(self) -> Tok:
        return self.toks[self.i]

    def fail(self, expected: str) -> SkerryError:
        t = self.peek()
        found = t.text if t.kind == "end" else repr(t.text)
        return SkerryError(f"expected {expected}, found {found}", t.line, t.col)

    def take(
        self, kind: str, expected: str, pattern: str | None = None, text: str | None = None
    ) -> str:
        t = self.peek()
        if (
            t.kind != kind
            or (text and t.text != text)
            or (pattern and not re.fullmatch(pattern, t.text))
        ):
            raise self.fail(expected)
        self.i += 1
        return t.text

    def sym(self, s: str) -> None:
        self.take("sym", repr(s), text=s)

    def sku(self) -> str:
        return self.take("word", "a SKU like F2041 (F, C or A and 4 digits)", r"[FCA][0-9]{4}")

    def qty(self) -> int:
        return int(self.take("qty", "a quantity like x12", r"x0*[1-9][0-9]*")[1:])

    def zone(self) -> str:
        return self.take("zone", "a zone like @FZ1", r"@[A-Z][A-Z0-9]*")[1:]

    def program(self) -> list:
        stmts = []
        while self.peek().kind != "end":
            stmts.append(self.statement())
        return stmts

    def statement(self):
        if self.peek().text == "when" and self.peek().kind == "word":
            self.i += 1
            sku, zone = self.sku(), self.zone()
            if self.peek().text not in CMPS:
                raise self.fail("a comparison (< <= > >= ==)")
            op = self.take("sym", "a comparison")
            value = int(self.take("int", "a whole number"))
            self.sym("=>")
            stmt = When(
                sku, zone, op, value, self.action("an action (move, pick, hold, release, count)")
            )
        else:
            stmt = self.action("a statement (move, pick, hold, release, count, when)")
        self.sym(";")
        return stmt

    def action(self, expected: str):
        t = self.peek()
        if t.kind != "word" or t.text not in ACTIONS:
            raise self.fail(expected)
        self.i += 1
        if t.text == "move":
            sku, qty, src = self.sku(), self.qty(), self.zone()
            self.sym("->")
            return Move(sku, qty, src, self.zone())
        if t.text == "pick":
            order = self.take("order", "an order number like #40213", r"#[0-9]{5}")[1:]
            dock = self.zone()
            self.sym("{")
            items = [(self.sku(), self.qty())]
            while self.peek().text == ",":
                self.i += 1
                items.append((self.sku(), self.qty()))
            self.sym("}")
            return Pick(order, dock, tuple(items))
        if t.text == "hold":
            sku, zone = self.sku(), self.zone()
            return Hold(sku, zone, self.take("reason", "a reason code like !TMP", r"![A-Z]{3}")[1:])
        if t.text == "release":
            return Release(self.sku(), self.zone())
        zone = self.zone()
        self.take("word", "'every'", text="every")
        n = self.take("duration", "an interval like 7d or 12h", r"0*[1-9][0-9]*[hd]")
        return Count(zone, int(n[:-1]) * (24 if n.endswith("d") else 1))


def parse(src: str) -> list:
    """Parse a Skerry program into a list of statements; raise SkerryError on bad syntax."""
    return _Parser(src).program()


def is_valid(src: str) -> bool:
    """True when src parses and holds at least one statement."""
    try:
        return len(parse(src)) > 0
    except SkerryError:
        return False


def _canon_action(a):
    if isinstance(a, Pick):  # item order is free and a SKU listed twice adds up
        totals: dict[str, int] = {}
        for sku, qty in a.items:
            totals[sku] = totals.get(sku, 0) + qty
        return Pick(a.order, a.dock, tuple(sorted(totals.items())))
    return a


def canonical(stmts: list) -> tuple:
    """Meaning-preserving normal form: picks' items merged and sorted, strict comparisons made
    inclusive (stock is whole units, so `< 20` is `<= 19`), intervals already in hours."""
    out = []
    for s in stmts:
        if isinstance(s, When):
            op, v = {"<": ("<=", s.value - 1), ">": (">=", s.value + 1)}.get(s.op, (s.op, s.value))
            s = When(s.sku, s.zone, op, v, _canon_action(s.action))
        out.append(_canon_action(s))
    return tuple(out)


def equivalent(a_src: str, b_src: str) -> bool:
    """True when both programs parse and do the same thing (statement order matters)."""
    try:
        return canonical(parse(a_src)) == canonical(parse(b_src))
    except SkerryError:
        return False


def fmt(s) -> str:
    """Source text of one statement, in the house style."""
    if isinstance(s, Move):
        return f"move {s.sku} x{s.qty} @{s.src} -> @{s.dst};"
    if isinstance(s, Pick):
        items = ", ".join(f"{sku} x{qty}" for sku, qty in s.items)
        return f"pick #{s.order} @{s.dock} {{ {items} }};"
    if isinstance(s, Hold):
        return f"hold {s.sku} @{s.zone} !{s.reason};"
    if isinstance(s, Release):
        return f"release {s.sku} @{s.zone};"
    if isinstance(s, Count):
        every = f"{s.hours // 24}d" if s.hours % 24 == 0 else f"{s.hours}h"
        return f"count @{s.zone} every {every};"
    return f"when {s.sku} @{s.zone} {s.op} {s.value} => {fmt(s.action)}"


def check(stmts: list) -> list[str]:
    """Site rules from the manual: known zones and reasons, the cold chain, picks go to docks."""
    problems = []
    for s in stmts:
        a = s.action if isinstance(s, When) else s
        parts = (s, a) if s is not a else (s,)
        zones = [
            getattr(x, f) for x in parts for f in ("zone", "src", "dst", "dock") if hasattr(x, f)
        ]
        problems += [f"unknown zone @{z}" for z in zones if z not in ZONES]
        if isinstance(a, Hold) and a.reason not in REASONS:
            problems.append(f"unknown reason !{a.reason}")
        if isinstance(a, Pick) and not re.fullmatch(r"D[1-4]", a.dock):
            problems.append(f"pick to @{a.dock}, which is not a dock")
        if isinstance(a, Move) and ZONES.get(a.dst) not in (None, a.sku[0]):
            problems.append(f"cold chain: {a.sku} may not be stored in @{a.dst}")
    return problems


def run(src: str, stock: dict[tuple[str, str], int]) -> dict:
    """Execute on a simulated warehouse; stock maps (sku, zone) to units. Returns the end state."""
    state = {"stock": dict(stock), "held": set(), "counts": {}, "picked": {}}

    def do(a):
        if isinstance(a, Move):
            if (a.sku, a.src) in state["held"]:
                raise RuntimeError(f"{a.sku} is held in @{a.src}")
            have = state["stock"].get((a.sku, a.src), 0)
            if have < a.qty:
                raise RuntimeError(f"only {have} of {a.sku} in @{a.src}")
            state["stock"][(a.sku, a.src)] = have - a.qty
            state["stock"][(a.sku, a.dst)] = state["stock"].get((a.sku, a.dst), 0) + a.qty
        elif isinstance(a, Pick):
            state["picked"][a.order] = (a.dock, _canon_action(a).items)
        elif isinstance(a, Hold):
            state["held"].add((a.sku, a.zone))
        elif isinstance(a, Release):
            state["held"].discard((a.sku, a.zone))
        else:
            state["counts"][a.zone] = a.hours

    tests = {"<": int.__lt__, "<=": int.__le__, ">": int.__gt__, ">=": int.__ge__, "==": int.__eq__}
    for s in parse(src):
        if not isinstance(s, When):
            do(s)
        elif tests[s.op](state["stock"].get((s.sku, s.zone), 0), s.value):
            do(s.action)
    return state
