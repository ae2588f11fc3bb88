"""Per query: measure the signals the tenant's policy needs, decide the path, and gather the
context that path gives the model.

Signals: the retrieval top score over the tenant's current chunks against the tenant's floor
(its policy's `min_score`, or unset its background floor: service/background.py), the
similarity of the query to each of the tenant's adapters' declared purpose (description and
examples, embedded at registration), and whether the query names an adapter (`named_in`). The
query is embedded once and serves all.

The context an adapter_rag answer gets follows the adapter's training record (`ContextPlan`): an
adapter trained with retrieved context gets the top_k, floor and budget it was trained with, one
trained without gets none, unless the tenant's policy says `adapter_context: "policy"`; an
adapter without a record gets the policy's, as the rag path does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from adapters.service import AdapterService, ServedAdapter
from core.errors import InvalidRequest, RetrievalUnavailable
from core.metrics import Metrics
from ingest.context import fit_to_budget
from ingest.retrieval import Retrieval, Retriever, citations
from service.background import BackgroundFloor
from service.policy import (
    AdapterMatch,
    Policy,
    RouteDecision,
    decide_auto,
    effective_floor,
    requested_path,
    round_signal,
)

MIN_NAME_LENGTH = 4


@dataclass
class Routed:
    decision: RouteDecision
    adapter: ServedAdapter | None = None
    context: list[str] = field(default_factory=list)
    cited: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # what deciding took (the `route` entry of the Server-Timing header)
    # its steps that ran (seconds): "registry" (the reads), "embed" (the query), "search"
    steps: dict[str, float] = field(default_factory=dict)


def best_match(
    vector, adapters: list[ServedAdapter], named: frozenset[str] = frozenset()
) -> tuple[ServedAdapter, float, bool] | None:
    """The adapter whose description/examples are nearest the query (cosine), how near, and
    whether the query names it; an adapter the query names (its name in `named`) comes first."""
    best = None
    q = np.asarray(vector, dtype=np.float32)
    for a in adapters:
        if not len(a.vectors):
            continue
        score = float((a.vectors @ q).max())
        key = (a.name in named, score)
        if best is None or key > (best[2], best[1]):
            best = (a, score, a.name in named)
    return best


class AdapterNames:
    """Which adapters a query names. An adapter's name counts when it holds a word of at least
    MIN_NAME_LENGTH letters that the embedding model has no single token for (a made-up name,
    "skerry" -> sk ##erry, not a word such as "orders"): such a word weighs little in the
    query's embedding, though a user writing "Write this in Skerry" means the adapter."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._words: dict[str, tuple[str, ...]] = {}

    def words(self, name: str) -> tuple[str, ...]:
        found = self._words.get(name)
        if found is None:
            found = tuple(
                w for w in re.split(r"[^a-z]+", name.lower())
                if len(w) >= MIN_NAME_LENGTH and len(self.tokenizer.tokenize(w)) > 1
            )
            if len(self._words) < 10_000:
                self._words[name] = found
        return found

    def named_in(self, query: str, adapters: list[ServedAdapter]) -> frozenset[str]:
        words = set(re.findall(r"[a-z]+", query.lower()))
        return frozenset(a.name for a in adapters if words.intersection(self.words(a.name)))


@dataclass
class Signals:
    candidates: list[ServedAdapter]
    match: tuple[ServedAdapter, float] | None
    retrieval: Retrieval | None
    down: RetrievalUnavailable | None
    # For a second, wider search (an adapter trained with a larger top_k than the policy's):
    # what the first one was given, so that one needs neither the registry nor the embedder.
    hidden: list[tuple[str, int]] | None = None
    vector: object = None
    floor: float | None = None  # the tenant's background floor, where its policy needs one


@dataclass(frozen=True)
class ContextPlan:
    """The context a path gives the model: how many chunks, above which floor, in which
    budget, and where those figures come from (`context_from`): the adapter's training record,
    the tenant's policy, or none at all (an adapter trained without retrieved context)."""

    source: Literal["adapter", "policy", "none"]
    top_k: int = 0
    min_score: float = 0.0
    max_tokens: int = 0


def context_plan(
    policy: Policy, adapter: ServedAdapter | None, floor: float | None = None
) -> ContextPlan:
    """The policy's context unless an adapter with a training record serves and the policy
    lets its record decide (`adapter_context: "trained"`, the default). `floor`: the tenant's
    background floor, for a policy that leaves `min_score` unset."""
    trained = adapter.trained if adapter is not None else None
    if trained is None or policy.adapter_context == "policy":
        return ContextPlan("policy", policy.top_k, effective_floor(policy, floor),
                           policy.context_max_tokens)
    if trained.context is None:
        return ContextPlan("none")
    c = trained.context
    return ContextPlan("adapter", c.top_k, c.min_score, c.context_max_tokens)


class PathRouter:
    """Decides each query's path (prompt, rag, adapter_rag) from the tenant's policy and signals."""

    def __init__(
        self, retriever: Retriever, adapters: AdapterService | None, metrics: Metrics
    ) -> None:
        self.retriever = retriever
        self.adapters = adapters
        self.metrics = metrics
        self.count_tokens = retriever.embedder.count_tokens
        self.registry = retriever.documents.registry
        self.background = BackgroundFloor(retriever)
        self.names = AdapterNames(retriever.embedder.tokenizer)

    async def route(
        self, tenant_id: str, policy: Policy, query: str, forced: str | None,
        named: ServedAdapter | None, documents: frozenset[str] | None = None,
    ) -> Routed:
        """`documents`: a file_search tool's scope (its vector stores' documents). Retrieval
        reads only those, and the request asks for retrieval: a path the policy would take
        without it (prompt) becomes rag."""
        started = time.perf_counter()
        steps: dict[str, float] = {}
        routed = await self._route(tenant_id, policy, query, forced, named, steps, documents)
        routed.seconds = time.perf_counter() - started
        routed.steps = steps
        self.metrics.observe_decision(routed.decision.path, routed.decision.kind, routed.seconds)
        return routed

    async def _route(
        self, tenant_id: str, policy: Policy, query: str, forced: str | None,
        named: ServedAdapter | None, steps: dict[str, float],
        documents: frozenset[str] | None = None,
    ) -> Routed:
        wanted = "adapter_rag" if named is not None else requested_path(policy, forced)
        why = _why(wanted, forced, named)
        kind = "named_adapter" if named is not None else "forced" if forced else "policy_mode"
        if wanted == "prompt" and documents is not None:
            wanted, why, kind = _file_search_path(policy, forced)
        if wanted == "prompt":
            return Routed(RouteDecision("prompt", why, kind=kind))
        with_adapters = (
            named is None and wanted in ("auto", "adapter_rag") and self.adapters is not None
        )
        # One hop to a worker thread for every blocking step (registry reads, the query's
        # embedding, the search): each hop waits for the event loop, which is busy under load.
        sig = await asyncio.to_thread(
            self._signals, tenant_id, query, policy, with_adapters, named, steps, documents
        )
        if sig.down is not None and policy.on_retrieval_error == "fail":
            raise sig.down
        if sig.retrieval is not None:
            self.metrics.observe_retrieval(sig.retrieval.seconds)
        candidates, match, retrieval, down = sig.candidates, sig.match, sig.retrieval, sig.down
        top = retrieval.top_score if retrieval else None

        adapter = named
        if wanted == "auto":
            found = AdapterMatch(match[0].label, match[1], match[2]) if match else None
            decision = decide_auto(policy, top, found, sig.floor)
            if decision.path == "adapter_rag":
                adapter = match[0]
            elif decision.path == "prompt" and documents is not None:
                decision.path, decision.kind = "rag", "file_search"
                decision.reason += (
                    "; the request's file_search tool asks for retrieval, so the rag path "
                    "answers with what of its vector stores clears the floor"
                )
        else:
            if wanted == "adapter_rag" and adapter is None:
                adapter, why = _pick_adapter(policy, candidates, match, why)
            signals = {"top_score": round_signal(top)}
            decision = RouteDecision(wanted, why, signals=signals, kind=kind)
            if match is not None:
                decision.signals["adapter_match"] = round_signal(match[1])
        if adapter is not None:
            decision.adapter = adapter.label
        if down is not None:
            return _degraded(decision, adapter, down)
        if decision.path == "prompt":
            return Routed(decision)
        plan = context_plan(policy, adapter if decision.path == "adapter_rag" else None, sig.floor)
        if plan.top_k > policy.top_k and len(retrieval.hits) >= policy.top_k:
            # Trained with more chunks than the policy retrieves: search again, wider. (Never
            # for prompt and rag, which keep exactly the policy's retrieval.)
            try:
                retrieval = await asyncio.to_thread(
                    self._search_wider, tenant_id, query, plan.top_k, sig, steps, documents
                )
            except RetrievalUnavailable as exc:
                if policy.on_retrieval_error == "fail":
                    raise
                return _degraded(decision, adapter, exc)
            self.metrics.observe_retrieval(retrieval.seconds)
        return self._with_context(decision, adapter, plan, retrieval)

    def _search_wider(
        self, tenant_id: str, query: str, top_k: int, sig: Signals, steps: dict[str, float],
        documents: frozenset[str] | None = None,
    ) -> Retrieval:
        """Sync (a worker thread): the search again with `top_k`, reusing what the signals'
        search was given; its seconds are added to the steps the first one counted."""
        more: dict[str, float] = {}
        retrieval = self.retriever.retrieve(tenant_id, query, top_k, sig.hidden, sig.vector, more,
                                            documents)
        for name, seconds in more.items():
            steps[name] = steps.get(name, 0.0) + seconds
        return retrieval

    def _signals(
        self, tenant_id: str, query: str, policy: Policy, with_adapters: bool,
        named: ServedAdapter | None, steps: dict[str, float],
        documents: frozenset[str] | None = None,
    ) -> Signals:
        """Sync (a worker thread). One registry transaction reads the tenant's adapters and
        what of its knowledge base is readable; then the query is embedded once, and only when
        something uses the vector: an adapter with declared purpose, or chunks to search.

        The embedding runs after the reads, not beside them: started early (on a hint from the
        tenant's previous decision), it competed with the reads for the GIL and the cores and
        the decision was no faster (in-process, interleaved: p50 10.6 against 10.3 ms)."""
        started = time.perf_counter()
        with self.registry.session() as s:
            candidates = self.adapters.served_in(s, tenant_id) if with_adapters else []
            hidden = self.retriever.documents.readable_in(s, tenant_id)
        steps["registry"] = time.perf_counter() - started
        top_k = policy.top_k
        # An adapter that may serve was trained with more chunks than the policy retrieves: the
        # query's vector is kept for the wider search that serving it takes.
        wider = hidden is not None and any(
            context_plan(policy, a).top_k > top_k for a in ([named] if named else candidates)
        )
        vector = None  # else the search embeds the query, if there is anything to search
        if wider or any(len(a.vectors) for a in candidates):
            started = time.perf_counter()
            vector = self.retriever.embedder.query(query)
            steps["embed"] = time.perf_counter() - started
        match = (best_match(vector, candidates, self.names.named_in(query, candidates))
                 if vector is not None else None)
        try:
            retrieval = self.retriever.retrieve(tenant_id, query, top_k, hidden, vector, steps,
                                                documents)
            floor = None
            if policy.min_score is None and hidden is not None:
                started = time.perf_counter()
                floor = self.background.floor(tenant_id, hidden)
                steps["floor"] = time.perf_counter() - started
        except RetrievalUnavailable as exc:
            return Signals(candidates, match, None, exc)
        except Exception as exc:  # noqa: BLE001 - the background search failing is the store's
            return Signals(candidates, match, None,
                           RetrievalUnavailable(f"the knowledge base is unavailable: {exc}"))
        return Signals(candidates, match, retrieval, None, hidden, vector, floor)

    def _with_context(self, decision, adapter, plan: ContextPlan, retrieval) -> Routed:
        decision.signals["context_from"] = plan.source
        if plan.source == "none":
            decision.reason += (
                f"; adapter {adapter.label} was trained without retrieved context, so it "
                "answers without passages (the policy's adapter_context 'policy' would give "
                "it the policy's)"
            )
            decision.signals["chunks"] = 0
            return Routed(decision, adapter)
        decision.signals["top_k"] = plan.top_k
        decision.signals["min_score"] = round_signal(plan.min_score)
        decision.signals["context_max_tokens"] = plan.max_tokens
        if plan.source == "adapter":
            decision.reason += (
                f"; with the context adapter {adapter.label} was trained with (top {plan.top_k} "
                f"chunks, floor {plan.min_score:.2f}, {plan.max_tokens} tokens)"
            )
        if plan.source == "adapter":
            # The first top_k of what was retrieved (the policy's retrieval may hold more than
            # the adapter was trained with); the policy's own is left exactly as it came.
            retrieval = dataclasses.replace(retrieval, hits=retrieval.hits[: plan.top_k])
        hits = retrieval.above(plan.min_score)  # the one floor rule
        texts = fit_to_budget([h.text for h in hits], [h.tokens for h in hits],
                              plan.max_tokens, self.count_tokens)
        if not texts:
            decision.reason += (
                f"; no chunk scored above the floor {plan.min_score:.2f}, "
                "so the model answers without context"
            )
        decision.signals["chunks"] = len(texts)
        cited = citations(hits[: len(texts)])
        for c, text in zip(cited, texts, strict=True):
            c["text"] = text
        return Routed(decision, adapter, texts, cited)


def _pick_adapter(policy: Policy, candidates, match, why: str):
    if policy.adapter is not None:
        chosen = next((a for a in candidates if a.name == policy.adapter), None)
        if chosen is None:
            raise InvalidRequest(
                f"the tenant's policy names adapter '{policy.adapter}', which is not registered "
                "and ready",
                code="adapter_unavailable",
                param="route",
            )
        return chosen, f"{why}, with the policy's adapter {chosen.label}"
    if match is not None:
        return match[0], f"{why}, with the best-matching adapter {match[0].label}"
    if len(candidates) == 1:
        return candidates[0], f"{why}, with the tenant's only adapter {candidates[0].label}"
    raise InvalidRequest(
        "route 'adapter_rag' needs an adapter: "
        + ("this tenant has none registered" if not candidates else
           "name one with `model` or the policy's `adapter`"),
        code="adapter_unavailable",
        param="route",
    )


def _degraded(decision: RouteDecision, adapter, exc: RetrievalUnavailable) -> Routed:
    decision.signals["retrieval"] = "down"
    decision.kind = "degraded"
    if adapter is not None:
        decision.path = "adapter_rag"
        decision.reason += (
            f"; the knowledge base is unavailable ({exc.message}), so the adapter answers "
            "without retrieved context, as the tenant's policy allows"
        )
        return Routed(decision, adapter)
    reason = (
        f"the knowledge base is unavailable ({exc.message}); degraded to the prompt path "
        "as the tenant's policy allows"
    )
    return Routed(RouteDecision("prompt", reason, signals=decision.signals, kind="degraded"))


def _file_search_path(policy: Policy, forced: str | None) -> tuple[str, str, str]:
    """A file_search tool where the request or the policy says prompt: the tool asks for
    retrieval, so rag, where the policy lets a request choose it."""
    if forced == "prompt":
        raise InvalidRequest(
            "route 'prompt' answers without retrieval, and the request's file_search tool asks "
            "for it: drop one of the two",
            code="route_conflicts_with_file_search",
            param="route",
        )
    if "rag" not in policy.allow_route_override:
        raise InvalidRequest(
            "this tenant's policy answers on the prompt path and does not let a request choose "
            "rag, which the file_search tool needs",
            code="route_not_allowed",
            param="tools",
        )
    return ("rag", "the request's file_search tool asks for retrieval (the tenant's policy "
            "mode is 'prompt', and it lets a request choose rag)", "file_search")


def _why(wanted: str, forced: str | None, named: ServedAdapter | None) -> str:
    if named is not None:
        return f"the request named adapter {named.label} as its model"
    if wanted == "auto":
        return "auto"
    if forced:
        return f"the request forced route '{wanted}'"
    return f"the tenant's policy mode is '{wanted}'"
