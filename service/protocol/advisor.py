"""Advisor and policy: /v1/advisor, /v1/policy."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.policy import Policy
from service.protocol.base import ResponseBody
from service.protocol.chat import RouteInfo


class AdviceRequest(BaseModel):
    sample_texts: list[str] | None = Field(
        None, max_length=64,
        description="Samples of the tenant's text; default: its indexed documents.",
    )
    training_file: str | None = Field(
        None, max_length=8 << 20, description="A proposed training file (JSONL) to check."
    )


class ExplainRequest(BaseModel):
    queries: list[str] = Field(min_length=1, max_length=500)


class LabeledQuery(BaseModel):
    query: str = Field(min_length=1, max_length=8000)
    path: Literal["prompt", "rag", "adapter_rag"]


class CalibrateRequest(BaseModel):
    rows: list[LabeledQuery] = Field(min_length=1, max_length=500)


class Calibration(ResponseBody):
    """`ragtune policy calibrate`'s report: the accuracy of the tenant's thresholds on labeled
    queries, and the thresholds that would do best (apply them with PATCH /v1/tenants/{id})."""

    n: int
    current: dict
    current_accuracy: float
    suggested: dict
    suggested_accuracy: float
    confusion: dict
    mistakes: list[dict]


class KnowledgeBaseSize(ResponseBody):
    documents: int = Field(description="The tenant's documents with a current version.")


class DataFinding(ResponseBody):
    count: int
    examples: list[dict[str, Any]] = Field(description="The first few rows it was found in.")


class TrainingDataReport(ResponseBody):
    """adapters/datacheck.py's DataReport."""

    rows: int
    valid: int
    unique: int
    min_samples: int
    max_tokens: int
    length_unit: str
    invalid: DataFinding
    exact_duplicates: DataFinding
    near_duplicates: DataFinding
    empty: DataFinding
    overlong: DataFinding
    conflicts: DataFinding
    score: float = Field(description="The fraction of rows that are clean.")
    passes: bool
    reasons: list[str] = Field(description="Why it does not pass.")
    warnings: list[str]


class Familiarity(ResponseBody):
    """The base model's perplexity on the tenant's text against public reference prose."""

    perplexity: float
    reference_perplexity: float
    ratio: float
    unfamiliar_ratio: float
    knows_domain: bool
    samples: int
    tokens: int
    reference_tokens: int
    source: str = Field(description="sample_texts | documents | training_file answers")


class AdviceEvaluation(ResponseBody):
    id: str
    arm: str
    reason: str
    finished_at: str | None


class Advice(ResponseBody):
    object: Literal["advice"]
    knowledge_base: KnowledgeBaseSize
    training_data: TrainingDataReport | None = Field(description="Null without a training file.")
    familiarity: Familiarity | None = Field(description="Null when there was no text to measure.")
    recommendation: Literal["prompt", "rag", "fine_tune", "fine_tune+rag"]
    reasons: list[str]
    basis: Literal["evaluation", "estimate"] = Field(
        description="evaluation: the tenant's latest evaluation decided; estimate: perplexity "
        "and the data check (no evaluation yet)"
    )
    evaluation: AdviceEvaluation | None = Field(
        description="The evaluation that decided: its id, recommended arm and reason."
    )


class RouteExplanation(ResponseBody):
    query: str
    route: RouteInfo


class PolicyExplanation(ResponseBody):
    """What `auto` would decide for each query; `policy` is the tenant's policy as stored."""

    object: Literal["list"]
    data: list[RouteExplanation]
    policy: Policy
