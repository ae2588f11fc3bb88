"""Brisling, Tollhaven Parcel's routing-rules language: parser (from brisling.lark), normal form,
equivalence, house-style formatter and a small evaluator.

    rule "heavy-north" {
      when weight > 30 and dest in ["R18", "R22"] and not fragile {
        route to H32;
        surcharge S315;
      } else {
        route to H10;
      }
    }

The grammar in brisling.lark is the one source of truth for syntax. `parse` returns a tuple of
`Rule`s; `canonical` maps a program to a normal form in which formatting and every order that
does not change what the program does are gone; `equivalent` compares normal forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

GRAMMAR = Path(__file__).resolve().parent / "brisling.lark"
NUM_FIELDS = ("weight", "value", "parcels")
TEXT_FIELDS = ("dest", "service", "customer")
FLAGS = ("fragile", "dangerous", "cod")
SERVICES = ("express", "standard", "economy", "freight")
TEAMS = ("ops", "customs", "claims", "sales", "hazmat")

# What the parser expected, in words (terminal name -> phrase), for error messages.
_EXPECTED = {
    "RULE": "'rule'",
    "STRING": 'a string literal like "express"',
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "SEMICOLON": "';'",
    "WHEN": "'when'",
    "ELSE": "'else'",
    "ROUTE": "'route'",
    "TO": "'to'",
    "SURCHARGE": "'surcharge'",
    "PRIORITY": "'priority'",
    "NOTIFY": "'notify'",
    "AND": "'and'",
    "OR": "'or'",
    "NOT": "'not'",
    "IN": "'in'",
    "NUM_FIELD": "a field (weight, value, parcels, dest, service, customer)",
    "TEXT_FIELD": "a field (weight, value, parcels, dest, service, customer)",
    "FLAG": "a flag (fragile, dangerous, cod)",
    "CMP": "a comparison (< <= > >= == !=)",
    "EQ": "== or !=",
    "HUB_CODE": "a hub code like H21",
    "SURCHARGE_CODE": "a surcharge code like S315",
    "INT": "a whole number",
    "$END": "end of input",
}


class BrislingError(ValueError):
    """A syntax error, with the 1-based line and column of the offending text."""

    def __init__(self, message: str, line: int, col: int):
        super().__init__(f"line {line}, col {col}: {message}")
        self.message, self.line, self.col = message, line, col


# ------------------------------------------------------------------------------------------------
# The AST


@dataclass(frozen=True)
class Route:
    hub: str


@dataclass(frozen=True)
class Surcharge:
    code: str


@dataclass(frozen=True)
class Priority:
    level: int


@dataclass(frozen=True)
class Notify:
    teams: tuple[str, ...]


@dataclass(frozen=True)
class Compare:  # weight > 30, dest == "R18"
    field: str
    op: str
    value: int | str


@dataclass(frozen=True)
class Member:  # dest in ["R18", "R22"] (negated: dest not in [...])
    field: str
    values: tuple[str, ...]
    negated: bool = False


@dataclass(frozen=True)
class Flag:  # fragile (negated: not fragile)
    name: str
    negated: bool = False


@dataclass(frozen=True)
class Not:
    arg: object


@dataclass(frozen=True)
class And:
    args: tuple


@dataclass(frozen=True)
class Or:
    args: tuple


@dataclass(frozen=True)
class When:
    cond: object
    then: tuple
    otherwise: tuple | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    body: tuple


ACTIONS = (Route, Surcharge, Priority, Notify)


def _string(tok: Token) -> str:
    return str(tok)[1:-1]


@v_args(inline=True)
class _ToAst(Transformer):
    def start(self, *rules):
        return tuple(rules)

    def rule(self, name, body):
        return Rule(_string(name), body)

    def block(self, *stmts):
        return tuple(stmts)

    def when_stmt(self, cond, then, otherwise=None):
        return When(cond, then, otherwise)

    def else_clause(self, block):
        return block

    def or_expr(self, *args):
        return Or(tuple(args))

    def and_expr(self, *args):
        return And(tuple(args))

    def negation(self, arg):
        return Not(arg)

    def flag(self, tok):
        return Flag(str(tok))

    def num_test(self, field, op, n):
        return Compare(str(field), str(op), int(n))

    def text_test(self, field, op, s):
        return Compare(str(field), str(op), _string(s))

    def member_test(self, field, values):
        return Member(str(field), values)

    def not_member_test(self, field, values):
        return Member(str(field), values, negated=True)

    def list(self, *items):
        return tuple(_string(s) for s in items)

    def route(self, hub):
        return Route(str(hub))

    def surcharge(self, code):
        return Surcharge(str(code))

    def priority(self, n):
        if not 1 <= int(n) <= 5:
            raise BrislingError(f"priority must be 1 to 5, found {n}", n.line, n.column)
        return Priority(int(n))

    def notify(self, teams):
        return Notify(teams)


@cache
def parser() -> Lark:
    return Lark(
        GRAMMAR.read_text(), parser="lalr", propagate_positions=False, maybe_placeholders=False
    )


def _expected(names) -> str:
    names = set(names)
    if "FLAG" in names:
        return "a condition (a field, a flag, 'not' or '(')"
    if "ROUTE" in names:
        return "a statement (when, route, surcharge, priority, notify)" + (
            " or '}'" if "RBRACE" in names else ""
        )
    if "CMP" in names:
        names.discard("EQ")
    return " or ".join(sorted({_EXPECTED.get(n, n) for n in names}))


def _error(e: UnexpectedInput, src: str) -> BrislingError:
    if isinstance(e, UnexpectedCharacters):
        end = e.pos_in_stream
        while end < len(src) and (src[end].isalnum() or src[end] in "_-"):
            end += 1
        found = src[e.pos_in_stream : max(end, e.pos_in_stream + 1)]
        return BrislingError(
            f"expected {_expected(e.allowed or ())}, found {found!r}", e.line, e.column
        )
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        lines = src.split("\n")
        line, col = len(lines), len(lines[-1]) + 1
        return BrislingError(f"expected {_expected(e.expected)}, found end of input", line, col)
    assert isinstance(e, UnexpectedToken)
    return BrislingError(
        f"expected {_expected(e.expected)}, found {str(e.token)!r}", e.line, e.column
    )


def parse(src: str) -> tuple[Rule, ...]:
    """Parse a Brisling program into a tuple of rules; raise BrislingError on bad syntax."""
    try:
        tree = parser().parse(src)
    except UnexpectedInput as e:
        raise _error(e, src) from None
    try:
        return _ToAst().transform(tree)
    except Exception as e:  # lark wraps errors raised in callbacks
        inner = getattr(e, "orig_exc", e)
        if isinstance(inner, BrislingError):
            raise inner from None
        raise


def is_valid(src: str) -> bool:
    """True when src parses (a program holds at least one rule, the grammar says so)."""
    try:
        parse(src)
        return True
    except BrislingError:
        return False


# ------------------------------------------------------------------------------------------------
# Normal form

_FLIP = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


def _key(x) -> str:
    return repr(x)


def _atom(c, negate: bool):
    """A leaf condition in normal form, negated when asked: strict comparisons of whole numbers
    made inclusive, one-value lists made comparisons."""
    if isinstance(c, Flag):
        return Flag(c.name, c.negated != negate)
    if isinstance(c, Member):
        values = tuple(sorted(set(c.values)))
        neg = c.negated != negate
        if len(values) == 1:
            return Compare(c.field, "!=" if neg else "==", values[0])
        return Member(c.field, values, neg)
    op = _FLIP[c.op] if negate else c.op
    if isinstance(c.value, int):
        if op == "<":
            return Compare(c.field, "<=", c.value - 1)
        if op == ">":
            return Compare(c.field, ">=", c.value + 1)
    return Compare(c.field, op, c.value)


def normal_cond(c, negate: bool = False):
    """Negation normal form (De Morgan, double negation), and/or flattened, deduplicated and
    sorted: `a and (b and c)` = `c and b and a`, `not (a or b)` = `not a and not b`."""
    if isinstance(c, Not):
        return normal_cond(c.arg, not negate)
    if isinstance(c, And | Or):
        kind = And if isinstance(c, And) != negate else Or
        args = []
        for a in c.args:
            n = normal_cond(a, negate)
            args.extend(n.args if isinstance(n, kind) else (n,))
        unique = sorted({_key(a): a for a in args}.values(), key=_key)
        return unique[0] if len(unique) == 1 else kind(tuple(unique))
    return _atom(c, negate)


def normal_block(stmts) -> tuple:
    """A block's own actions apply together, wherever they are written: they form a set (notify
    lists merged into one); its when statements run after them, in order."""
    actions, whens, teams = set(), [], set()
    for s in stmts:
        if isinstance(s, When):
            whens.append(normal_when(s))
        elif isinstance(s, Notify):
            teams |= set(s.teams)
        else:
            actions.add(s)
    if teams:
        actions.add(Notify(tuple(sorted(teams))))
    return (tuple(sorted(actions, key=_key)), tuple(whens))


def normal_when(w: When) -> When:
    """`when c {A} else {B}` is `when not c {B} else {A}`: keep the form whose condition sorts
    first."""
    then = normal_block(w.then)
    if w.otherwise is None:
        return When(normal_cond(w.cond), then, None)
    other = normal_block(w.otherwise)
    a = When(normal_cond(w.cond), then, other)
    b = When(normal_cond(w.cond, negate=True), other, then)
    return min(a, b, key=_key)


def canonical(rules) -> tuple:
    """Meaning-preserving normal form of a parsed program; rule order and names matter."""
    return tuple((r.name, normal_block(r.body)) for r in rules)


def equivalent(a_src: str, b_src: str) -> bool:
    """True when both programs parse and do the same thing."""
    try:
        return canonical(parse(a_src)) == canonical(parse(b_src))
    except BrislingError:
        return False


# ------------------------------------------------------------------------------------------------
# House style


def _quote(s: str) -> str:
    return f'"{s}"'


def fmt_cond(c, top: bool = True) -> str:
    if isinstance(c, Flag):
        return ("not " if c.negated else "") + c.name
    if isinstance(c, Member):
        items = ", ".join(map(_quote, c.values))
        return f"{c.field} {'not in' if c.negated else 'in'} [{items}]"
    if isinstance(c, Compare):
        v = c.value if isinstance(c.value, int) else _quote(c.value)
        return f"{c.field} {c.op} {v}"
    if isinstance(c, Not):
        inner = fmt_cond(c.arg, top=False)
        return f"not {inner}"
    word = " and " if isinstance(c, And) else " or "
    text = word.join(fmt_cond(a, top=False) for a in c.args)
    return text if top else f"({text})"


def fmt_action(a) -> str:
    if isinstance(a, Route):
        return f"route to {a.hub};"
    if isinstance(a, Surcharge):
        return f"surcharge {a.code};"
    if isinstance(a, Priority):
        return f"priority {a.level};"
    return f"notify [{', '.join(map(_quote, a.teams))}];"


def _fmt_block(stmts, indent: str) -> list[str]:
    lines = []
    for s in stmts:
        if isinstance(s, When):
            lines.append(f"{indent}when {fmt_cond(s.cond)} {{")
            lines += _fmt_block(s.then, indent + "  ")
            if s.otherwise:
                lines.append(f"{indent}}} else {{")
                lines += _fmt_block(s.otherwise, indent + "  ")
            lines.append(f"{indent}}}")
        else:
            lines.append(indent + fmt_action(s))
    return lines


def fmt(rules) -> str:
    """Source text of a program (a tuple of rules), in the house style."""
    out = []
    for r in rules:
        out += [f"rule {_quote(r.name)} {{", *_fmt_block(r.body, "  "), "}"]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Evaluation


def holds(c, parcel: dict) -> bool:
    """Whether a condition holds for a parcel (a dict of field and flag values)."""
    if isinstance(c, Flag):
        return bool(parcel.get(c.name)) != c.negated
    if isinstance(c, Member):
        return (parcel.get(c.field) in c.values) != c.negated
    if isinstance(c, Compare):
        v = parcel.get(c.field)
        return {
            "<": lambda: v < c.value,
            "<=": lambda: v <= c.value,
            ">": lambda: v > c.value,
            ">=": lambda: v >= c.value,
            "==": lambda: v == c.value,
            "!=": lambda: v != c.value,
        }[c.op]()
    if isinstance(c, Not):
        return not holds(c.arg, parcel)
    if isinstance(c, And):
        return all(holds(a, parcel) for a in c.args)
    return any(holds(a, parcel) for a in c.args)


def run(src: str, parcel: dict) -> dict:
    """What the rules do to one parcel: every rule runs in order, a block's actions first, then
    its when statements; a later route or priority replaces an earlier one."""
    out = {"route": None, "priority": None, "surcharges": set(), "notify": set()}

    def block(stmts):
        for s in stmts:
            if isinstance(s, Route):
                out["route"] = s.hub
            elif isinstance(s, Priority):
                out["priority"] = s.level
            elif isinstance(s, Surcharge):
                out["surcharges"].add(s.code)
            elif isinstance(s, Notify):
                out["notify"] |= set(s.teams)
        for s in stmts:
            if isinstance(s, When):
                if holds(s.cond, parcel):
                    block(s.then)
                elif s.otherwise:
                    block(s.otherwise)

    for r in parse(src):
        block(r.body)
    return out
