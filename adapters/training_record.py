"""The training record (`ragtune_training.json`, written by `ragtune adapters train` beside the
PEFT files): how an adapter was trained, above all whether with retrieved context and at which
top_k / floor / budget, so that serving gives it the context it was trained with.

Optional: an adapter trained elsewhere has none. When present it is read and checked at
registration (strict types: a string where a number belongs is refused, not coerced), and the
checked record is kept with the adapter version in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapters.peft_files import TRAINING_NAME
from core.errors import AdapterError

# Far above any real record (a few hundred bytes): read no more than this of it.
MAX_RECORD_BYTES = 64 << 10
INVALID_RECORD = "invalid_training_record"


class _Strict(BaseModel):
    # Unknown keys are ignored (a newer trainer may add some); known ones must have their type.
    model_config = ConfigDict(strict=True, extra="ignore")


class RecordContext(_Strict):
    top_k: int = Field(ge=1, le=100)
    min_score: float = Field(ge=-1, le=1)
    context_max_tokens: int = Field(ge=1, le=100_000)
    share: float = Field(ge=0, le=1)
    oracle_free_share: float = Field(ge=0, le=1)
    retrieval: Literal["dense", "hybrid"] | None = None


class RecordLoss(_Strict):
    before: float
    after: float
    held_out_no_context: float | None = None
    held_out_with_context: float | None = None


class TrainingRecord(_Strict):
    format: int  # strict int, not Literal[1], which takes `true` for 1
    base_model: str = Field(min_length=1, max_length=255)
    # Required, but may be null: null means "trained without retrieved context", which changes
    # how the adapter is served, so a record that does not say is refused rather than guessed.
    context: RecordContext | None
    steps: int = Field(ge=0)
    seconds: float = Field(ge=0)
    samples: int = Field(ge=0)
    loss: RecordLoss

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"format {value} is unknown; this server reads format 1")
        return value


@dataclass(frozen=True)
class TrainedContext:
    """What serving takes from a record trained with context: how many chunks, which floor,
    what budget."""

    top_k: int
    min_score: float
    context_max_tokens: int


@dataclass(frozen=True)
class Trained:
    """What routing knows of an adapter version's training: `context` None = trained without
    retrieved context. An adapter without a record has no `Trained` at all."""

    context: TrainedContext | None


def trained_from(record: dict | None) -> Trained | None:
    """The routing view of a stored (already checked) record; None for no record."""
    if not record:
        return None
    ctx = record.get("context")
    if ctx is None:
        return Trained(None)
    return Trained(TrainedContext(int(ctx["top_k"]), float(ctx["min_score"]),
                                  int(ctx["context_max_tokens"])))


def read_training_record(folder: Path, *, param: str = "file") -> dict | None:
    """The folder's training record, checked, as the JSON the registry keeps (None: the folder
    has none). A record that is not JSON, or has a field of the wrong type or range, is a 422
    `invalid_training_record` naming the field."""
    path = Path(folder) / TRAINING_NAME

    def fail(why: str) -> AdapterError:
        return AdapterError(f"{TRAINING_NAME}: {why}", code=INVALID_RECORD, param=param)

    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise fail("is not a regular file")
    with path.open("rb") as fh:
        raw = fh.read(MAX_RECORD_BYTES + 1)
    if len(raw) > MAX_RECORD_BYTES:
        raise fail(f"is larger than {MAX_RECORD_BYTES} bytes; a training record is a small "
                   "JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise fail(f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise fail("must be a JSON object")
    try:
        record = TrainingRecord.model_validate(data)
    except ValidationError as exc:
        raise fail(_first_error(exc)) from None
    return record.model_dump(mode="json")


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "the record"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"field '{where}': {first['msg']}{more}"
