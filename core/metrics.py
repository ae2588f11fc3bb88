"""Prometheus metrics, one registry per app. Labels stay bounded: path, route template, status
class, token kind; never tenant ids or raw URLs."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Adapter names are tenants' choice: a bounded number of them become label values.
MAX_ADAPTER_LABELS = 50
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "ragtune_http_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "ragtune_http_request_duration_seconds",
            "HTTP request latency (to the end of the body)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.chat_requests = Counter(
            "ragtune_chat_requests", "Chat requests by path", ["path", "status"], registry=r
        )
        self.chat_latency = Histogram(
            "ragtune_chat_duration_seconds",
            "Chat latency by path, engine included",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ragtune_chat_time_to_first_token_seconds",
            "Time to the first streamed chunk",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "ragtune_chat_tokens", "Tokens by path and kind", ["path", "kind"], registry=r
        )
        self.engine_replicas_healthy = Gauge(
            "ragtune_engine_replicas_healthy", "Healthy vLLM replicas", registry=r
        )
        self.engine_restarts = Counter(
            "ragtune_engine_restarts", "Restarts of the supervised vLLM child", registry=r
        )

        self.retrieval_latency = Histogram(
            "ragtune_retrieval_duration_seconds",
            "Query embedding + vector search",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.jobs = Gauge("ragtune_jobs", "Ingestion jobs by state", ["state"], registry=r)
        self.jobs_finished = Counter(
            "ragtune_jobs_finished", "Ingestion jobs finished by this process", ["state"],
            registry=r,
        )
        self.ingest_latency = Histogram(
            "ragtune_ingest_job_duration_seconds",
            "Claim to indexed, per job",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.chunks_indexed = Counter(
            "ragtune_chunks_indexed", "Chunks written to the vector store", registry=r
        )

        self.adapter_loads = Counter(
            "ragtune_adapter_loads", "Adapter loads into a vLLM replica", registry=r
        )
        self.adapter_unloads = Counter(
            "ragtune_adapter_unloads", "Adapter unloads from a vLLM replica", registry=r
        )
        self.adapter_load_latency = Histogram(
            "ragtune_adapter_load_duration_seconds",
            "One runtime LoRA load into one replica",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.adapters_loaded = Gauge(
            "ragtune_adapters_loaded", "ragtune's adapters held by each replica (by index)",
            ["replica"], registry=r,
        )
        self.adapter_requests = Counter(
            "ragtune_adapter_requests",
            f"Chat requests by adapter (the first {MAX_ADAPTER_LABELS} adapters seen by this "
            "process get their own label, the rest count as 'other')",
            ["adapter"], registry=r,
        )
        self._adapter_labels: set[str] = set()
        self.decisions = Counter(
            "ragtune_route_decisions", "Route decisions by path and what decided them",
            ["path", "kind"], registry=r,
        )
        self.decision_latency = Histogram(
            "ragtune_route_decision_duration_seconds",
            "Deciding the path: signals (query embedding, retrieval, adapter match) included",
            ["path"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
                     1),
            registry=r,
        )
        self.rate_limited = Counter(
            "ragtune_rate_limited", "Requests refused by a tenant's limit (429), by limit",
            ["limit"], registry=r,
        )
        self.evaluation_items = Counter(
            "ragtune_evaluation_items", "Evaluation items answered, by arm kind and outcome",
            ["arm", "outcome"], registry=r,
        )
        self.evaluation_latency = Histogram(
            "ragtune_evaluation_run_duration_seconds",
            "One evaluation run (claim to finished or paused)",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )

    def count_rate_limited(self, limit: str) -> None:
        # limit: requests_per_minute | tokens_per_day
        self.rate_limited.labels(limit).inc()

    def count_evaluation_item(self, arm_kind: str, passed: bool) -> None:
        # arm_kind: prompt | rag | adapter_rag | auto (never the adapter's name: bounded labels)
        self.evaluation_items.labels(arm_kind, "passed" if passed else "failed").inc()

    def observe_evaluation(self, seconds: float) -> None:
        self.evaluation_latency.observe(seconds)

    def observe_decision(self, path: str, kind: str, seconds: float) -> None:
        self.decisions.labels(path, kind).inc()
        self.decision_latency.labels(path).observe(seconds)

    def observe_adapter_load(self, seconds: float) -> None:
        self.adapter_loads.inc()
        self.adapter_load_latency.observe(seconds)

    def count_adapter_request(self, adapter: str) -> None:
        if adapter not in self._adapter_labels and len(self._adapter_labels) < MAX_ADAPTER_LABELS:
            self._adapter_labels.add(adapter)
        self.adapter_requests.labels(adapter if adapter in self._adapter_labels else "other").inc()

    def observe_retrieval(self, seconds: float) -> None:
        self.retrieval_latency.observe(seconds)

    def observe_job(self, state: str, seconds: float, chunks: int) -> None:
        self.jobs_finished.labels(state).inc()
        if state == "succeeded":
            self.ingest_latency.observe(seconds)
            self.chunks_indexed.inc(chunks)

    def set_job_counts(self, counts: dict[str, int]) -> None:
        for state in ("queued", "running", "succeeded", "failed"):
            self.jobs.labels(state).set(counts.get(state, 0))

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, f"{status // 100}xx").inc()
        self.http_latency.labels(route).observe(seconds)

    def observe_chat(self, path: str, status: str, seconds: float) -> None:
        self.chat_requests.labels(path, status).inc()
        self.chat_latency.labels(path).observe(seconds)

    def observe_ttft(self, path: str, seconds: float) -> None:
        self.ttft.labels(path).observe(seconds)

    def count_tokens(self, path: str, prompt: int, completion: int) -> None:
        self.tokens.labels(path, "prompt").inc(prompt)
        self.tokens.labels(path, "completion").inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)
