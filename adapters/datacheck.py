"""Garbage in, garbage out: is a training file fit to fine-tune on?

`check_training_data` is a pure function of the rows (and an optional tokenizer): the training
CLI runs it before training, the advisor reuses it. Rows are chat format
`{"messages": [{"role", "content"}, ...]}` ending in the assistant's answer, or
`{"prompt": ..., "completion": ...}` (strings, or TRL's conversational lists of messages); both are
normalised to a `Sample`: the prompt messages and the one answer the model learns.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import TrainingDataError

# Below ~50 distinct examples a LoRA memorises its rows instead of learning the behaviour behind
# them, and there is nothing left over to check it with; the rules-language adapter this project
# measured needed 400 to reach 75% valid programs.
MIN_SAMPLES = 50
DEFAULT_MAX_TOKENS = 512
# Failure thresholds, as fractions: a few repeats or over-long rows are noise, many are a
# broken export. Any empty answer or unreadable row fails outright: it teaches silence or nothing.
MAX_DUPLICATE_FRACTION = 0.10
MAX_CONFLICT_FRACTION = 0.05
MAX_OVERLONG_FRACTION = 0.10
MAX_NEAR_DUPLICATE_FRACTION = 0.30  # a warning only: same task reworded, not wrong
CHARS_PER_TOKEN = 4  # the estimate used when no tokenizer is given
EXAMPLES_PER_FINDING = 3
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Sample:
    row: int  # 1-based position in the file's rows
    messages: tuple[dict, ...]  # the prompt: system / user / earlier assistant turns
    completion: str  # the answer the model is trained to give

    @property
    def instruction(self) -> str:
        """The last user turn: what the sample asks."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def prompt_key(self) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages)

    def chat(self) -> list[dict]:
        return [*self.messages, {"role": "assistant", "content": self.completion}]


def _messages(value: Any, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"{what}[{i}] must be an object with role system, user or assistant")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"{what}[{i}].content must be a string")
        out.append({"role": m["role"], "content": content})
    return out


def normalise_row(row: Any, index: int) -> Sample:
    """One row as a Sample; ValueError says what is wrong with its shape."""
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    if "messages" in row:
        msgs = _messages(row["messages"], "messages")
        if msgs[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's answer")
        prompt, completion = msgs[:-1], msgs[-1]["content"]
    elif "prompt" in row and "completion" in row:
        p, c = row["prompt"], row["completion"]
        prompt = [{"role": "user", "content": p}] if isinstance(p, str) else _messages(p, "prompt")
        if isinstance(c, str):
            completion = c
        else:
            cm = _messages(c, "completion")
            if len(cm) != 1 or cm[0]["role"] != "assistant":
                raise ValueError("completion must be a string or one assistant message")
            completion = cm[0]["content"]
    else:
        raise ValueError('expected {"messages": [...]} or {"prompt": ..., "completion": ...}')
    if not any(m["role"] == "user" for m in prompt):
        raise ValueError("the prompt has no user message")
    return Sample(row=index, messages=tuple(prompt), completion=completion)


def normalise_rows(rows: list[Any]) -> tuple[list[Sample], list[tuple[int, str]]]:
    """(samples, [(row, why it is invalid)])."""
    samples, invalid = [], []
    for i, row in enumerate(rows, start=1):
        try:
            samples.append(normalise_row(row, i))
        except ValueError as e:
            invalid.append((i, str(e)))
    return samples, invalid


def parse_jsonl(data: str | bytes, *, source: str = "training file") -> list[dict]:
    """Rows of a JSON Lines text; TrainingDataError names the first bad line."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise TrainingDataError(f"{source} line {line}: not UTF-8 text") from None
    rows = []
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrainingDataError(
                f"{source} line {n}: not valid JSON ({e.msg} at column {e.colno}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise TrainingDataError(f"{source} line {n}: expected a JSON object, found {row!r:.40}")
        rows.append(row)
    return rows


def load_jsonl(path: Path | str) -> list[dict]:
    path = Path(path)
    return parse_jsonl(path.read_bytes(), source=path.name)


@dataclass
class Finding:
    count: int = 0
    examples: list[dict] = field(default_factory=list)

    def add(self, example: dict, n: int = 1) -> None:
        self.count += n
        if len(self.examples) < EXAMPLES_PER_FINDING:
            self.examples.append(example)


@dataclass
class DataReport:
    rows: int
    valid: int
    unique: int  # valid rows that are not exact duplicates
    min_samples: int
    max_tokens: int
    length_unit: str  # "tokens", or "estimated tokens" (characters / 4) without a tokenizer
    invalid: Finding
    exact_duplicates: Finding
    near_duplicates: Finding
    empty: Finding
    overlong: Finding
    conflicts: Finding  # counted per instruction, not per row
    score: float  # fraction of rows that are clean: valid, unique, non-empty, fit, unambiguous
    passes: bool
    reasons: list[str]  # why it does not pass
    warnings: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PASSES" if self.passes else "DOES NOT PASS"
        lines = [
            f"training data: {self.rows} rows, {self.valid} valid, {self.unique} unique; "
            f"score {self.score:.2f}; {verdict}"
        ]
        lines += [f"  x {r}" for r in self.reasons]
        lines += [f"  ! {w}" for w in self.warnings]
        for name in ("invalid", "exact_duplicates", "conflicts", "empty", "overlong"):
            finding: Finding = getattr(self, name)
            for ex in finding.examples:
                lines.append(f"    {name}: {_short(json.dumps(ex, ensure_ascii=False), 160)}")
        return "\n".join(lines)


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


_PUNCT_EDGES = string.punctuation + "¿¡…"


def normalise_text(text: str) -> str:
    """Case- and whitespace-insensitive form, edge punctuation dropped ("Hi?" == " hi ")."""
    return re.sub(r"\s+", " ", text.casefold()).strip().strip(_PUNCT_EDGES).strip()


def _length(sample: Sample, tokenizer: Any | None) -> int:
    if tokenizer is None:
        chars = sum(len(m["content"]) for m in sample.messages) + len(sample.completion)
        return math.ceil(chars / CHARS_PER_TOKEN)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(sample.chat(), tokenize=False)
    else:
        text = sample.prompt_key + "\n" + sample.completion
    return len(tokenizer.encode(text, add_special_tokens=False))


def check_training_data(
    rows: list[Any],
    *,
    tokenizer: Any | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    min_samples: int = MIN_SAMPLES,
) -> DataReport:
    samples, invalid_rows = normalise_rows(rows)
    invalid = Finding()
    for row, why in invalid_rows:
        invalid.add({"row": row, "error": why})

    exact, empty, overlong = Finding(), Finding(), Finding()
    first_seen: dict[tuple[str, str], int] = {}
    unique: list[Sample] = []
    flawed: set[int] = set()  # rows of unique samples with an empty part, too long, or conflicting
    for s in samples:
        key = (s.prompt_key, s.completion)
        if key in first_seen:
            exact.add({"rows": [first_seen[key], s.row], "prompt": _short(s.instruction)})
            continue
        first_seen[key] = s.row
        unique.append(s)
        if not s.instruction.strip() or not s.completion.strip():
            empty.add({"row": s.row, "empty": "prompt" if not s.instruction.strip() else "answer"})
            flawed.add(s.row)
        n = _length(s, tokenizer)
        if n > max_tokens:
            overlong.add({"row": s.row, "length": n, "prompt": _short(s.instruction)})
            flawed.add(s.row)

    # Near duplicates and conflicts: the same prompt once case, spacing and edge punctuation
    # are ignored (system message and earlier turns included, so differing contexts differ).
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in unique:
        groups[normalise_text(s.prompt_key)].append(s)
    near, conflicts = Finding(), Finding()
    for group in groups.values():
        if len(group) < 2:
            continue
        answers: dict[str, list[Sample]] = defaultdict(list)
        for s in group:
            answers[normalise_text(s.completion)].append(s)
        if len(answers) > 1:
            shown = [
                {"rows": [x.row for x in same], "answer": _short(same[0].completion)}
                for same in list(answers.values())[:3]
            ]
            conflicts.add({"prompt": _short(group[0].instruction), "answers": shown})
            flawed.update(s.row for s in group)
        else:
            example = {"rows": [s.row for s in group][:5], "prompt": _short(group[0].instruction)}
            near.add(example, n=len(group) - 1)

    reasons: list[str] = []
    warnings: list[str] = []
    if invalid.count:
        first = invalid.examples[0]
        reasons.append(
            f"{invalid.count} row(s) are not in a supported format (row {first['row']}: "
            f"{first['error']})"
        )
    if len(unique) < min_samples:
        reasons.append(
            f"only {len(unique)} distinct samples; at least {min_samples} are needed for a LoRA "
            "to learn a behaviour rather than memorise rows"
        )
    if empty.count:
        reasons.append(
            f"{empty.count} sample(s) have an empty prompt or answer (row "
            f"{empty.examples[0]['row']}); an empty answer trains the model to say nothing"
        )
    _grade(
        reasons,
        warnings,
        exact.count,
        len(samples),
        MAX_DUPLICATE_FRACTION,
        "row(s) are exact duplicates of earlier rows; they over-weight those examples",
    )
    _grade(
        reasons,
        warnings,
        conflicts.count,
        len(groups),
        MAX_CONFLICT_FRACTION,
        "instruction(s) have conflicting answers; the model learns to guess between them",
    )
    _grade(
        reasons,
        warnings,
        overlong.count,
        len(unique),
        MAX_OVERLONG_FRACTION,
        f"sample(s) are longer than {max_tokens} tokens and will be cut, losing the end of "
        "their answer",
    )
    if near.count:
        share = near.count / max(len(unique), 1)
        advice = "; deduplicate before training" if share > MAX_NEAR_DUPLICATE_FRACTION else ""
        warnings.append(
            f"{near.count} row(s) ({share:.0%}) repeat another row's prompt with only "
            f"case/spacing changes and the same answer: fewer distinct tasks than rows{advice}"
        )

    return DataReport(
        rows=len(rows),
        valid=len(samples),
        unique=len(unique),
        min_samples=min_samples,
        max_tokens=max_tokens,
        length_unit="tokens" if tokenizer is not None else "estimated tokens",
        invalid=invalid,
        exact_duplicates=exact,
        near_duplicates=near,
        empty=empty,
        overlong=overlong,
        conflicts=conflicts,
        score=round((len(unique) - len(flawed)) / len(rows), 3) if rows else 0.0,
        passes=not reasons,
        reasons=reasons,
        warnings=warnings,
    )


def _grade(
    reasons: list[str], warnings: list[str], count: int, total: int, limit: float, what: str
) -> None:
    if not count:
        return
    share = count / max(total, 1)
    text = f"{count} ({share:.0%}) {what}"
    if share > limit:
        reasons.append(f"{text}; more than {limit:.0%} is a broken dataset")
    else:
        warnings.append(text)
