"""All configuration: one pydantic-settings class, prefix RAGTUNE_, nested groups with `__`.

Built by `load_settings()` (or `Settings(...)` in tests), never at import time.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.base_model import BASE_MODEL_NAME


def _default_engine_python() -> Path:
    # `make install` puts the engine's environment beside ragtune's own (.venv and .venv-engine).
    return Path(sys.prefix).parent / ".venv-engine" / "bin" / "python"


class QdrantSettings(BaseModel):
    """The vector store. `url` unset: Qdrant Edge embedded in the serving process."""

    url: str | None = Field(None, description="Qdrant server URL. Unset: embedded Qdrant Edge.")
    api_key: SecretStr | None = None
    collection: str = "ragtune_chunks"
    path: Path | None = Field(None, description="Embedded store folder. Unset: <data_dir>/qdrant.")
    timeout_s: float = Field(10.0, description="Server requests.")
    hnsw_ef: int = Field(128, description="HNSW beam width of a search (recall vs latency).")
    payload_m: int = Field(16, description="HNSW links per point inside its tenant's graph.")
    ef_construct: int = 100
    full_scan_threshold_kb: int = Field(
        10_000,
        description=(
            "A tenant whose vectors take less than this (KB; 384-d float32 is 1.5 KB a chunk, so "
            "~6.6k chunks) is searched exactly through the tenant index and gets no HNSW graph."
        ),
    )
    acorn: bool = Field(
        False,
        description=(
            "ACORN filtered search (explores neighbours of neighbours). Not needed with per-tenant "
            "graphs (bench/retrieval.py measures recall without it); costs latency."
        ),
    )
    indexing_threshold_kb: int | None = Field(
        None,
        description="Edge: a segment bigger than this (KB) gets its HNSW index. Unset: 10 MB.",
    )
    min_free_mb: int = Field(
        256, ge=0,
        description=(
            "Edge: a write is refused (the job waits and retries, the attempt not counted) "
            "while the store's filesystem has less free space than this. Edge writes through "
            "memory maps: on a full disk the kernel kills the process (SIGBUS) instead of "
            "failing the write."
        ),
    )
    retrieval: Literal["dense", "hybrid"] = Field(
        "hybrid",
        description=(
            "dense: cosine over the embeddings only. hybrid: also BM25 term vectors of the chunks "
            "(computed by the store), fused with the dense candidates by rank (Qdrant's RRF), "
            "which finds exact names and codes the embedding misses. Either way a hit's score "
            "is its cosine. Both modes store the term vectors: switching needs no re-index."
        ),
    )
    hybrid_candidates: int = Field(
        20,
        ge=1,
        description="hybrid: candidates taken from each side (dense, terms) before fusion.",
    )
    optimize_after_points: int = Field(
        20_000,
        description=(
            "Edge: run the optimizer (index, merge, vacuum) inline once this many points were "
            "written or deleted since the last run. It holds the GIL while it runs."
        ),
    )

    def resolved_path(self, data_dir: Path) -> Path:
        return self.path or data_dir / "qdrant"


class EngineSettings(BaseModel):
    """The LLM engine: vLLM replicas reached over HTTP, or one child process started by serve."""

    urls: list[str] = Field(
        default_factory=list,
        description="External vLLM base URLs (replicas). Empty: `ragtune serve` starts one itself.",
    )
    api_key: SecretStr | None = Field(None, description="Bearer key of external vLLM replicas.")
    python: Path = Field(default_factory=_default_engine_python)
    port: int = 8100
    kind: Literal["cpu", "gpu"] = "cpu"
    max_loras: int = Field(
        8, ge=1,
        description="vLLM's --max-loras: adapters in one engine step. Each slot costs vLLM's "
        "stacks at --max-lora-rank and, on the CPU engine, the plugin's float32 copy at the "
        "adapter's rank (deploy/README.md); 8 against 4 took 16 rotating adapters from 0.34 "
        "to about 0.5 of the base model's tokens/s (bench/adapters.py).",
    )
    max_cpu_loras: int | None = Field(
        None, ge=1,
        description="vLLM's --max-cpu-loras: adapters its workers keep in host memory. Unset: "
        "adapters.max_resident, so every adapter ragtune registers at a replica stays loaded "
        "(vLLM's own default, --max-loras, reloads an adapter from disk inside the engine step "
        "whenever more adapters rotate than there are slots; bench/adapters.py).",
    )
    max_lora_rank: int = 64
    max_model_len: int = 2048
    kv_cache_gib: int = Field(1, description="VLLM_CPU_KVCACHE_SPACE for the CPU engine.")
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout_s: float = 300.0
    restart_backoff_max_s: float = 30.0
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 300.0
    health_interval_s: float = 2.0


class LimitSettings(BaseModel):
    max_request_bytes: int = 1 << 20
    max_messages: int = 256
    max_message_chars: int = 32_000
    max_tokens: int = 1024
    default_max_tokens: int = 256


class EmbeddingSettings(BaseModel):
    model_path: str | None = Field(
        None, description="A sentence-transformers folder; default: the packaged all-MiniLM-L6-v2."
    )
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    batch_size: int = 32
    device: str = "cpu"
    query_trace: bool = Field(
        True, description="Embed queries with the model traced by TorchScript (checked against "
        "the eager model at start; eager if tracing fails)."
    )
    query_threads: int = Field(
        1, ge=0,
        description="torch threads for embedding one query (0: torch's default, every core). "
        "Inside the serving process, with its other threads, one thread decided faster than "
        "two in an alternating A/B (route p50 14-18 ms against 19-21 ms on 2 cores); alone "
        "on idle cores two are faster (5 against 8 ms).",
    )


class ChunkingSettings(BaseModel):
    # Small chunks: retrieved context must stay short and precise (DESIGN.md, measured facts).
    chunk_tokens: int = 160
    overlap_tokens: int = 24


class WorkerSettings(BaseModel):
    embedded: bool = Field(True, description="`ragtune serve` runs an ingestion worker itself.")
    lease_s: float = 60.0
    max_attempts: int = 3
    backoff_s: float = 2.0
    poll_s: float = 0.5
    upsert_batch: int = 64
    # The same word as adapters.retire_grace_s, for the same idea in the other slice: after a
    # switch, how long the replaced version stays usable before it is removed.
    retire_grace_s: float = Field(
        2.0,
        description=(
            "After a document's new version becomes current, the replaced version's points stay "
            "this long (readers that took the version list just before the switch may still "
            "search for them), then the worker deletes them."
        ),
    )


class EvaluationSettings(BaseModel):
    embedded: bool = Field(True, description="`ragtune serve` runs evaluations itself.")
    lease_s: float = 60.0
    poll_s: float = 1.0
    max_attempts: int = Field(
        5,
        description="Runs of one evaluation (each resumes where the last stopped) before it fails.",
    )
    concurrency: int = Field(
        4, ge=1, le=64, description="Items in flight at once (the engine batches them)."
    )
    max_items: int = Field(2000, ge=1, description="Items in one eval set.")


class DocumentLimits(BaseModel):
    max_file_bytes: int = 20 << 20
    max_files: int = 20
    max_metadata_bytes: int = 8192

    @property
    def max_upload_bytes(self) -> int:
        return self.max_files * self.max_file_bytes + (1 << 20)


class AdapterSettings(BaseModel):
    """Tenants' LoRA adapters. vLLM loads them by path, so `root` must be the same path on the
    engine's side (a shared volume at scale)."""

    root: Path | None = Field(None, description="Adapter store. Unset: <data_dir>/adapters.")
    max_archive_bytes: int = Field(512 << 20, description="Upload size cap (packed and unpacked).")
    max_files: int = Field(32, description="Files an adapter archive may hold.")
    max_examples: int = 50
    max_example_chars: int = 2000
    max_resident: int = Field(
        32,
        description=(
            "Adapters registered at each vLLM replica at once; more are loaded on demand, the "
            "least recently used going first (vLLM itself keeps --max-loras of them in its "
            "batch slots and --max-cpu-loras in memory)."
        ),
    )
    reconcile_interval_s: float = Field(
        30.0, description="How often every replica is brought in step with the registry."
    )
    retire_grace_s: float = Field(
        5.0,
        description=(
            "After a switch, the old version stays loaded this long and until this process's "
            "requests on it end (other API replicas' requests started before the switch)."
        ),
    )
    load_timeout_s: float = 120.0


class AdvisorSettings(BaseModel):
    unfamiliar_ratio: float = Field(
        4.0,
        description=(
            "Perplexity on the tenant's text over perplexity on public reference prose at or "
            "above which the base model is taken not to know the domain (SmolLM2-135M: policy "
            "prose ~2.7x, DSL programs ~8x)."
        ),
    )
    max_samples: int = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAGTUNE_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    port: int = 8000
    admin_key: SecretStr | None = Field(
        None, description="Admin bearer key. Unset: one is generated into <data_dir>/admin_key."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the registry. Unset: SQLite in the data dir."
    )
    base_model_name: str = BASE_MODEL_NAME
    model_dir: Path | None = Field(None, description="Prepared base model folder.")
    log_level: str = "INFO"
    log_json: bool = True
    cors_origins: list[str] = Field(default_factory=list)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    documents: DocumentLimits = Field(default_factory=DocumentLimits)
    adapters: AdapterSettings = Field(default_factory=AdapterSettings)
    advisor: AdvisorSettings = Field(default_factory=AdvisorSettings)
    evaluations: EvaluationSettings = Field(default_factory=EvaluationSettings)

    @property
    def resolved_adapters_root(self) -> Path:
        return (self.adapters.root or self.data_dir / "adapters").resolve()

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models" / "base"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"


def load_settings(**overrides) -> Settings:
    return Settings(**overrides)
