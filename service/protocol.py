"""The HTTP protocol: the request and response bodies of API.md as pydantic models, in one module.

Every route names its success body here (`response_model=`), so /openapi.json documents what a
client gets back, not only what it sends. Response models list exactly the fields the service
answers with: the contract may grow, never lose a field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.policy import Path as ServedPath
from service.policy import Policy


class ResponseBody(BaseModel):
    """A success body. Fields a model does not name still pass through: FastAPI serializes a
    route's return value through its response model, and a field the service starts to answer
    with before its model names it must not vanish from the answer."""

    model_config = ConfigDict(extra="allow")


# ---- errors: every operation's 4XX (service/http_errors.py documents and renders them) ----


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1)
    type: str
    param: str | None
    code: str = Field(min_length=1)


class ErrorBody(BaseModel):
    """Every error, whatever raised it (API.md): OpenAI's shape."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


# ---- operations: /healthz, /readyz ----


class Health(ResponseBody):
    status: Literal["ok"]


class ReadinessChecks(ResponseBody):
    """Each dependency: "ok", or "down" (with the failure's type where one was raised)."""

    llm: str
    registry: str
    vector_store: str


class Readiness(ResponseBody):
    status: Literal["ready"]
    checks: ReadinessChecks


class NotReady(ResponseBody):
    """The 503 of /readyz: the checks, beside the one error shape's `error` naming what is down."""

    status: Literal["not ready"]
    checks: ReadinessChecks
    error: ErrorDetail


# ---- tenants: /v1/me, /v1/tenants ----


class TenantCreate(BaseModel):
    id: str = Field(max_length=64)
    policy: Policy = Field(default_factory=Policy)


class TenantPatch(BaseModel):
    policy: dict = Field(description="Policy fields to change; the rest stay as they are.")


class KeyRotate(BaseModel):
    revoke_existing: bool = True


class TenantInfo(ResponseBody):
    """A tenant as /v1/me and the admin's /v1/tenants answer it: never its keys."""

    id: str
    policy: Policy


class TenantCreated(TenantInfo):
    api_key: str = Field(description="Shown once: the service stores only its digest.")


class KeyRotated(ResponseBody):
    id: str
    api_key: str = Field(description="Shown once: the service stores only its digest.")


# ---- chat: /v1/chat/completions, /v1/models ----


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if isinstance(p, dict))
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = 1
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    # Every field passed on to vLLM is typed and bounded here (OpenAI's ranges): what reaches
    # the engine is what its schema accepts, and a 70-bit seed is a 400, not a crash.
    stop: str | list[str] | None = Field(None, max_length=16)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, max_length=300)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=256)
    route: ServedPath | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n


class RouteInfo(ResponseBody):
    """Why an answer took its path (API.md's `route`)."""

    path: ServedPath
    reason: str
    reason_kind: str = Field(
        description="forced | policy_mode | named_adapter | auto_adapter | auto_knowledge | "
        "auto_no_match | auto_empty | degraded"
    )
    adapter: str | None = Field(description="name@version of the adapter that serves, if any")
    # int before float: a count (`chunks`) stays an integer on its way through the model.
    signals: dict[str, int | float | str | None]


class Citation(ResponseBody):
    document_id: str
    chunk_id: str
    score: float
    source: str
    text: str = Field(description="The chunk as the model was given it.")
    version: int


class CompletionMessage(ResponseBody):
    role: str
    content: str | None = None


class CompletionChoice(ResponseBody):
    index: int
    message: CompletionMessage
    finish_reason: str | None = None


class CompletionUsage(ResponseBody):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(ResponseBody):
    """OpenAI's `chat.completion` as the engine answered it, plus `route` and `citations`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str = Field(description="The base model's name, or the adapter's that answered.")
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    route: RouteInfo
    citations: list[Citation] = Field(description="Every chunk given to the model.")


class ModelCard(ResponseBody):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    parent: str | None = Field(description="The base model, for an adapter.")
    root: str
    version: int | None = Field(None, description="The adapter's served version (adapters only).")


class ModelList(ResponseBody):
    object: Literal["list"]
    data: list[ModelCard]


# ---- documents: /v1/documents ----


# The route reads the multipart form itself (each file part is read only up to the size cap),
# so FastAPI cannot derive the request body: the document is told it here.
UPLOAD_DOCUMENTS_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "txt, md, html, pdf, json or jsonl files"},
                    "document_id": {"type": "string",
                                    "description": "Default: derived from the file name"},
                    "metadata": {"type": "string", "description": "A JSON object"},
                },
            }
        }
    },
}

# ingest/versions.py's states: queued and indexing until the job ends; then current (what
# readers see), superseded and retired (replaced), or failed.
VersionState = Literal["queued", "indexing", "current", "superseded", "retired", "failed"]


class QueuedDocument(ResponseBody):
    document_id: str
    version: int
    status: Literal["queued"]


class UploadAccepted(ResponseBody):
    """The 202 of an upload: one job indexes every file (GET /v1/jobs/{job_id})."""

    job_id: str
    documents: list[QueuedDocument] = Field(description="In the upload's file order.")


class JobDocument(ResponseBody):
    document_id: str
    version: int
    state: VersionState
    chunks: int | None = Field(description="Null until the version is indexed.")
    error: str | None


class JobInfo(ResponseBody):
    job_id: str
    state: Literal["queued", "running", "succeeded", "failed"]
    error: str | None = Field(description="The last failed attempt's reason.")
    chunks: int
    attempts: int
    created_at: str = Field(description="ISO 8601.")
    finished_at: str | None = Field(description="ISO 8601; null until the job ends.")
    documents: list[JobDocument]


class DocumentSummary(ResponseBody):
    """A live document as GET /v1/documents lists it."""

    document_id: str
    current_version: int | None = Field(description="The version readers see; null until one "
                                        "is indexed.")
    latest_version: int | None
    status: VersionState | None = Field(description="The latest version's state.")
    source: str | None = Field(description="The file name of the current version, else of the "
                               "latest.")
    chunks: int | None = Field(description="The current version's; null without one.")
    metadata: dict[str, Any] = Field(description="The current version's, else the latest's.")
    updated_at: str = Field(description="ISO 8601.")


class DocumentVersionInfo(ResponseBody):
    version: int
    state: VersionState
    job_id: str
    chunks: int | None
    size_bytes: int
    sha256: str
    error: str | None
    created_at: str = Field(description="ISO 8601.")


class DocumentDetail(DocumentSummary):
    versions: list[DocumentVersionInfo] = Field(description="Newest first.")


class DocumentList(ResponseBody):
    object: Literal["list"]
    data: list[DocumentSummary]
    has_more: bool


# ---- adapters: /v1/adapters ----


class AdapterByUri(BaseModel):
    """Register a folder that already lies under the server's adapter root."""

    name: str
    uri: str = Field(description="A path (or file:// URI) under the server's adapter root.")
    description: str = ""
    examples: list[str] = Field(default_factory=list)


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
                },
            }
        },
        "application/json": {"schema": AdapterByUri.model_json_schema()},
    },
}

# loading: another registration is putting it on the engines; retired: traffic left it (kept
# for a rollback).
AdapterStatus = Literal["loading", "ready", "retired"]


class AdapterVersionInfo(ResponseBody):
    version: int
    status: AdapterStatus
    rank: int
    size_bytes: int
    created_at: str = Field(description="ISO 8601.")
    retired_at: str | None = Field(description="When traffic left it; null if it never did.")


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
    created_at: str = Field(description="When the current version was registered (ISO 8601).")
    updated_at: str = Field(description="When the adapter last changed (ISO 8601).")


class AdapterDetail(AdapterSummary):
    """An adapter with every version, newest first: GET /v1/adapters/{name}, and the answer to a
    registration (201) and a rollback."""

    versions: list[AdapterVersionInfo]


class AdapterList(ResponseBody):
    object: Literal["list"]
    data: list[AdapterSummary]


# ---- advisor and policy: /v1/advisor, /v1/policy ----


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


class Advice(ResponseBody):
    object: Literal["advice"]
    knowledge_base: KnowledgeBaseSize
    training_data: TrainingDataReport | None = Field(description="Null without a training file.")
    familiarity: Familiarity | None = Field(description="Null when there was no text to measure.")
    recommendation: Literal["prompt", "rag", "fine_tune", "fine_tune+rag"]
    reasons: list[str]


class RouteExplanation(ResponseBody):
    query: str
    route: RouteInfo


class PolicyExplanation(ResponseBody):
    """What `auto` would decide for each query; `policy` is the tenant's policy as stored."""

    object: Literal["list"]
    data: list[RouteExplanation]
    policy: Policy
