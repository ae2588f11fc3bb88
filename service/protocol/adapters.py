"""Adapters: /v1/adapters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.protocol.base import ResponseBody


class Gate(BaseModel):
    """Register a version only if an evaluation on the tenant's own set finds it not worse than
    the version it replaces (the first version: not worse than the `rag` path)."""

    model_config = ConfigDict(extra="forbid")

    eval_set: str = Field(min_length=1, max_length=64, description="One of the tenant's eval sets.")
    min_delta: float = Field(
        0.0, ge=0.0, le=1.0,
        description="How much lower the new version's pass rate may be (0.05 = 5 points).",
    )
    max_tokens: int = Field(256, ge=1, description="Per answer, as for an evaluation.")


class AdapterByUri(BaseModel):
    """Register a folder that already lies under the server's adapter root."""

    name: str
    uri: str = Field(description="A path (or file:// URI) under the server's adapter root.")
    description: str = ""
    examples: list[str] = Field(default_factory=list)
    gate: Gate | None = Field(None, description="Evaluate before traffic moves (API.md).")


class Rollback(BaseModel):
    version: int | None = Field(None, ge=1, le=2**31 - 1,
                                description="Default: the version before the current.")


# The route reads the multipart form itself (the archive is streamed to disk under the size
# cap), so FastAPI cannot derive the request body: the document is told it here.
REGISTER_ADAPTER_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "name"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "A .tar.gz or .zip of a PEFT LoRA folder"},
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "examples": {"type": "string", "description": "A JSON list of prompts"},
                    "gate": {"type": "string",
                             "description": 'JSON: {"eval_set": id, "min_delta"?: 0.0}'},
                },
            }
        },
        "application/json": {"schema": AdapterByUri.model_json_schema()},
    },
}

# loading: another registration is putting it on the engines (or its gate is evaluating it);
# retired: traffic left it (kept for a rollback); rejected: its gate found it worse (never served).
AdapterStatus = Literal["loading", "ready", "retired", "rejected"]


class GateRecord(ResponseBody):
    """What a version's gate measured: the new version against the one it was to replace."""

    eval_set: str
    evaluation: str = Field(description="The evaluation's id: GET /v1/evaluations/{id}.")
    baseline: str = Field(description="The arm it was compared with (the current version, or rag).")
    candidate: str
    baseline_pass_rate: float
    pass_rate: float
    delta: float = Field(description="pass_rate - baseline_pass_rate.")
    min_delta: float
    p_value: float | None = Field(description="Exact McNemar test on the paired items.")
    passed: bool


class TrainingContext(ResponseBody):
    """The retrieved context the adapter was trained with (as `ragtune adapters train` wrote it)."""

    top_k: int = Field(description="Chunks per sample; served as its top_k.")
    min_score: float = Field(description="The floor chunks had to clear; served as its floor.")
    context_max_tokens: int = Field(description="The context budget; served as its budget.")
    share: float = Field(description="Share of the training samples that carried context.")
    oracle_free_share: float = Field(
        description="Share of the samples with context whose passages lacked the answer's one."
    )
    retrieval: Literal["dense", "hybrid"] | None = None


class TrainingLoss(ResponseBody):
    before: float
    after: float
    held_out_no_context: float | None = None
    held_out_with_context: float | None = None


class TrainingRecord(ResponseBody):
    """The training record uploaded with a version (`ragtune_training.json` beside the PEFT
    files); null on a version that came without one."""

    format: Literal[1]
    base_model: str
    context: TrainingContext | None = Field(
        description="null: trained without retrieved context (served without passages unless "
        "the tenant's policy says adapter_context 'policy')."
    )
    steps: int
    seconds: float
    samples: int
    loss: TrainingLoss


class AdapterVersionInfo(ResponseBody):
    version: int
    status: AdapterStatus
    rank: int
    size_bytes: int
    training: TrainingRecord | None = Field(
        None, description="How this version was trained; null: it came without a record."
    )
    created_at: str = Field(description="ISO 8601.")
    retired_at: str | None = Field(description="When traffic left it; null if it never did.")
    gate: GateRecord | None = Field(None, description="Its gate; null: registered without one.")
    replicas: list[int] = Field(
        default_factory=list,
        description="Indexes of the engine replicas holding it (as the answering API replica "
        "last saw them).",
    )


class AdapterSummary(ResponseBody):
    """An adapter as GET /v1/adapters lists it: its current version (the one traffic goes to)."""

    object: Literal["adapter"]
    name: str
    version: int
    status: AdapterStatus
    base_model: str
    rank: int
    size_bytes: int
    description: str
    examples: list[str]
    training: TrainingRecord | None = Field(
        None, description="How the current version was trained; null: it came without a record."
    )
    created_at: str = Field(description="When the current version was registered (ISO 8601).")
    updated_at: str = Field(description="When the adapter last changed (ISO 8601).")
    gate: GateRecord | None = Field(
        None, description="The current version's gate; null: registered without one."
    )


class AdapterDetail(AdapterSummary):
    """An adapter with every version, newest first: GET /v1/adapters/{name}, and the answer to a
    registration (201) and a rollback."""

    versions: list[AdapterVersionInfo]


class AdapterList(ResponseBody):
    object: Literal["list"]
    data: list[AdapterSummary]
