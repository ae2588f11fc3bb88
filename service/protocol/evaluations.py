"""Evaluations: eval sets, evaluation jobs and their results (API.md, "Evaluations")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.protocol.base import ResponseBody


class EvalSetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    items: list[Any] = Field(description="Items: {id?, query | messages, checks, documents?}")
    grammar: str | None = Field(None, description="Lark grammar text for `grammar` checks")

    @field_validator("name", "grammar")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        # PostgreSQL's text refuses NUL: a name or grammar holding one could never be stored.
        if v is not None and "\x00" in v:
            raise ValueError("holds a NUL character")
        return v


CREATE_EVAL_SET_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": EvalSetCreate.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "name"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "JSONL, one item a line",
                    },
                    "name": {"type": "string"},
                    "grammar": {
                        "type": "string",
                        "description": "Lark grammar text for `grammar` checks",
                    },
                },
            }
        },
    },
}


class EvalSetInfo(ResponseBody):
    id: str
    object: Literal["eval_set"] = "eval_set"
    name: str
    items: int
    grammar: bool
    created_at: str


class EvalSetList(ResponseBody):
    object: Literal["list"] = "list"
    data: list[EvalSetInfo]


class EvalSetDeleted(ResponseBody):
    id: str
    object: Literal["eval_set"] = "eval_set"
    deleted: bool


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eval_set: str = Field(min_length=1)
    arms: list[str] = Field(
        min_length=1,
        max_length=8,
        description="prompt, rag, auto, adapter_rag:<name> or adapter_rag:<name>@<version>",
    )
    max_tokens: int = Field(256, ge=1)


class EvaluationQueued(ResponseBody):
    id: str
    object: Literal["evaluation"] = "evaluation"
    state: Literal["queued"] = "queued"


class Progress(ResponseBody):
    done: int
    total: int


class ArmResult(ResponseBody):
    arm: str
    passed: int
    total: int
    pass_rate: float
    ci95: list[float]
    checks: dict[str, float]
    retrieval_hit_rate: float | None
    latency_ms: dict[str, float]
    tokens: dict[str, int]
    engine_seconds: float
    errors: int
    paths: dict[str, int]


class ArmComparison(ResponseBody):
    a: str
    b: str
    diff: float
    p_value: float
    verdict: Literal["a_better", "no_difference", "b_better"]
    only_a: int
    only_b: int


class Recommendation(ResponseBody):
    arm: str
    reason: str


class EvaluationInfo(ResponseBody):
    id: str
    object: Literal["evaluation"] = "evaluation"
    eval_set: str
    arms_requested: list[str]
    state: Literal["queued", "running", "succeeded", "failed"]
    progress: Progress
    created_at: str
    finished_at: str | None
    error: str | None = None
    arms: list[ArmResult] | None = None
    comparisons: list[ArmComparison] | None = None
    recommendation: Recommendation | None = None


class EvaluationList(ResponseBody):
    object: Literal["list"] = "list"
    data: list[EvaluationInfo]
