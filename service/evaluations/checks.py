"""Eval set items and their checks: parsing a set (JSONL or a JSON list) into items, each row's
errors naming the row, and judging one answer against one item's checks.

Check kinds: `contains` (every string appears, case-insensitive), `not_contains` (none does),
`regex` (Python `re.search`, DOTALL), `exact` (the stripped answer equals the string), `grammar`
(the answer's first fenced code block, or the whole answer when it has none, parses with the set's
Lark grammar: how a tenant checks its own language). `documents` is not a check: it names the
document ids expected among the citations, the retrieval hit rate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from lark import Lark
from lark.exceptions import LarkError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import EvalError

CHECK_KINDS = ("contains", "not_contains", "regex", "exact", "grammar")
MAX_ITEMS = 2000
FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


class Checks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contains: list[str] | None = None
    not_contains: list[str] | None = None
    regex: str | None = None
    exact: str | None = None
    grammar: bool | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"regex does not compile: {e}") from None
        return v

    def kinds(self) -> list[str]:
        return [k for k in CHECK_KINDS if getattr(self, k) not in (None, False)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(pattern="^(system|user|assistant)$")
    content: str


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=200)
    query: str | None = Field(default=None, min_length=1)
    messages: list[Message] | None = Field(default=None, min_length=1)
    checks: Checks
    documents: list[str] | None = None

    @field_validator("id")
    @classmethod
    def _storable_id(cls, v: str | None) -> str | None:
        if v is not None and ("\x00" in v or not v.strip()):
            raise ValueError("an item id is a non-blank string without NUL characters")
        return v

    @model_validator(mode="after")
    def _one_input(self) -> Item:
        if (self.query is None) == (self.messages is None):
            raise ValueError("give exactly one of query and messages")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("messages must end with a user message")
        if not self.checks.kinds():
            raise ValueError(f"an item needs at least one check ({', '.join(CHECK_KINDS)})")
        return self

    def question(self) -> str:
        """The last user message: what the item asks."""
        return self.query if self.query is not None else self.messages[-1].content

    def chat_messages(self) -> list[dict]:
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.query}]


def compile_grammar(text: str) -> Lark:
    try:
        return Lark(text, parser="earley", start="start")
    except Exception as e:  # noqa: BLE001 - lark raises GrammarError, KeyError, …
        first = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(
            f"the grammar does not compile: {first}",
            code="invalid_grammar",
            param="grammar",
        ) from None


def _row_error(row: int, e: ValidationError) -> EvalError:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden" and first["loc"][:1] == ("checks",):
        return EvalError(
            f"row {row}: unknown check kind {first['loc'][-1]!r} (known: {', '.join(CHECK_KINDS)})",
            code="unknown_check_kind",
            param=f"items[{row - 1}].checks",
        )
    msg = first["msg"].removeprefix("Value error, ")
    return EvalError(
        f"row {row}: {where + ': ' if where else ''}{msg}",
        code="invalid_eval_set",
        param=f"items[{row - 1}]",
    )


def parse_items(
    rows: Iterable[object], *, has_grammar: bool, max_items: int = MAX_ITEMS
) -> list[Item]:
    """Items from decoded rows (1-based row numbers in errors), at most `max_items`. The whole
    set is refused on the first bad row: a set is either all usable or not stored at all."""
    items: list[Item] = []
    seen: set[str] = set()
    for n, raw in enumerate(rows, start=1):
        if n > max_items:
            raise EvalError(
                f"at most {max_items} items in a set", code="invalid_eval_set", param="items"
            )
        if not isinstance(raw, dict):
            raise EvalError(
                f"row {n}: an item is a JSON object",
                code="invalid_eval_set",
                param=f"items[{n - 1}]",
            )
        try:
            item = Item.model_validate(raw)
        except ValidationError as e:
            raise _row_error(n, e) from None
        if item.checks.grammar and not has_grammar:
            raise EvalError(
                f"row {n}: a grammar check needs the set's grammar",
                code="invalid_eval_set",
                param=f"items[{n - 1}]",
            )
        if item.id is None:
            item.id = str(n)
        if item.id in seen:
            raise EvalError(
                f"row {n}: item id {item.id!r} is used twice",
                code="invalid_eval_set",
                param=f"items[{n - 1}]",
            )
        seen.add(item.id)
        items.append(item)
    if not items:
        raise EvalError("the eval set has no items", code="empty_eval_set", param="items")
    return items


def decode_jsonl(data: bytes) -> list[object]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EvalError("the file is not UTF-8", code="invalid_eval_set", param="file") from None
    rows: list[object] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise EvalError(
                f"line {n}: not JSON ({e.msg})", code="invalid_eval_set", param="file"
            ) from None
    return rows


def code_block(answer: str) -> str:
    """The first fenced code block's body, or the whole answer when it has none."""
    m = FENCE.search(answer)
    return (m.group(1) if m else answer).strip()


@dataclass
class Verdict:
    passed: bool
    failed: list[str] = field(default_factory=list)  # the kinds that failed
    checks: dict[str, bool] = field(default_factory=dict)
    documents_hit: bool | None = None  # None: the item names no documents


@dataclass
class Judge:
    """Judges answers for one set (its grammar compiled once)."""

    grammar: str | None = None

    @cached_property
    def parser(self) -> Lark | None:
        return compile_grammar(self.grammar) if self.grammar else None

    def parses(self, answer: str) -> bool:
        if self.parser is None:
            return False
        try:
            self.parser.parse(code_block(answer))
        except LarkError:
            return False
        return True

    def judge(self, item: Item, answer: str, cited: Sequence[str] = ()) -> Verdict:
        c = item.checks
        low = answer.casefold()
        results: dict[str, bool] = {}
        if c.contains is not None:
            results["contains"] = all(s.casefold() in low for s in c.contains)
        if c.not_contains is not None:
            results["not_contains"] = not any(s.casefold() in low for s in c.not_contains)
        if c.regex is not None:
            results["regex"] = re.search(c.regex, answer, re.DOTALL) is not None
        if c.exact is not None:
            results["exact"] = answer.strip() == c.exact.strip()
        if c.grammar:
            results["grammar"] = self.parses(answer)
        hit = None if not item.documents else set(item.documents) <= set(cited)
        failed = [k for k, ok in results.items() if not ok]
        return Verdict(passed=not failed, failed=failed, checks=results, documents_hit=hit)
