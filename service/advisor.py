"""The decision guide as a measurement: does the base model already know this tenant's domain,
is the training data fit to fine-tune on, and so which path the tenant's data calls for.

Familiarity is the base model's per-token perplexity on samples of the tenant's own text (given,
or taken from its indexed documents), through vLLM's prompt logprobs, against the same measure on
public reference prose shipped with ragtune (`service/data/reference.txt`). Every sample is
scored after one neutral lead-in sentence, so that its first tokens are not scored blind (short
samples would otherwise look strange for their length alone). A ratio far above 1 means text
the model cannot predict: knowledge or behaviour no public model learned.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path

from adapters.datacheck import check_training_data, parse_jsonl
from core.engine_pool import EnginePool
from core.errors import InvalidRequest
from ingest.documents import DocumentService
from ingest.stored_files import load_sections

REFERENCE = Path(__file__).parent / "data" / "reference.txt"
LEAD_IN = "Here is an excerpt from a document:\n\n"
MAX_SAMPLE_CHARS = 1500


def reference_texts() -> list[str]:
    return [p.strip() for p in REFERENCE.read_text(encoding="utf-8").split("\n\n") if p.strip()]


class Advisor:
    def __init__(
        self,
        pool: EnginePool,
        base_model: str,
        documents: DocumentService,
        *,
        unfamiliar_ratio: float = 4.0,
        max_samples: int = 16,
        latest_evaluation: Callable[[str], dict | None] | None = None,
    ) -> None:
        self.pool = pool
        # The tenant's latest succeeded evaluation (service/evaluations): measured beats estimated.
        self.latest_evaluation = latest_evaluation
        self.base_model = base_model
        self.documents = documents
        self.unfamiliar_ratio = unfamiliar_ratio
        self.max_samples = max_samples
        self._lead_in_tokens: int | None = None
        self._reference: tuple[float, int] | None = None

    async def _logprobs(self, text: str) -> list[float]:
        out = await self.pool.post_json(
            "/v1/completions",
            {"model": self.base_model, "prompt": text, "max_tokens": 1, "temperature": 0,
             "prompt_logprobs": 0},
        )
        entries = out["choices"][0].get("prompt_logprobs") or []
        values = []
        for entry in entries[1:]:  # the first token has no logprob
            # {token_id: {"logprob": ...}}: with prompt_logprobs=0 the prompt's own token only
            values.append(next(iter(entry.values()))["logprob"])
        return values

    async def perplexity(self, texts: list[str]) -> tuple[float, int]:
        """Per-token perplexity over all texts (each after the lead-in) and the tokens scored."""
        if self._lead_in_tokens is None:
            self._lead_in_tokens = len(await self._logprobs(LEAD_IN))
        skip = self._lead_in_tokens
        scored = await asyncio.gather(
            *(self._logprobs(LEAD_IN + t[:MAX_SAMPLE_CHARS]) for t in texts)
        )
        nll = [-lp for values in scored for lp in values[skip:]]
        if not nll:
            raise InvalidRequest("the samples hold no text to measure", code="empty_samples",
                                 param="sample_texts")
        return math.exp(sum(nll) / len(nll)), len(nll)

    async def reference_perplexity(self) -> tuple[float, int]:
        if self._reference is None:
            self._reference = await self.perplexity(reference_texts())
        return self._reference

    def _document_samples(self, tenant_id: str) -> list[str]:
        samples = []
        for path in self.documents.current_section_files(tenant_id):
            for section in load_sections(path):
                for para in section.text.split("\n\n"):
                    if len(para.strip()) >= 20:  # not a heading
                        samples.append(para.strip())
                if len(samples) >= self.max_samples:
                    return samples
        return samples

    async def advise(
        self, tenant_id: str, sample_texts: list[str] | None, training_file: str | None
    ) -> dict:
        """The estimate (perplexity, data check); then, when the tenant has a succeeded
        evaluation whose recommendation is a path, that measurement decides, and the estimate
        stays in the reasons as the prior it replaced."""
        out = await self._estimate(tenant_id, sample_texts, training_file)
        ev = None
        if self.latest_evaluation is not None:
            ev = await asyncio.to_thread(self.latest_evaluation, tenant_id)
        rec = (ev or {}).get("recommendation")
        out["basis"] = "evaluation" if rec else "estimate"
        out["evaluation"] = None
        if not rec:
            return out
        arm = rec["arm"]
        documents = out["knowledge_base"]["documents"]
        measured = (
            "prompt" if arm == "prompt" else "rag" if arm == "rag"
            else "fine_tune+rag" if documents else "fine_tune"
        )
        out["evaluation"] = {"id": ev["id"], "arm": arm, "reason": rec["reason"],
                             "finished_at": ev.get("finished_at")}
        estimate = out["recommendation"]
        out["recommendation"] = measured
        out["reasons"] = [
            f"measured on the tenant's own questions (evaluation {ev['id']}): {arm} is "
            f"recommended: {rec['reason']}",
            f"the estimate without it said {estimate}"
            + ("" if estimate != measured else " as well")
            + (": " + out["reasons"][0] if out["reasons"] else ""),
            *out["reasons"][1:],
        ]
        return out

    async def _estimate(
        self, tenant_id: str, sample_texts: list[str] | None, training_file: str | None
    ) -> dict:
        rows = parse_jsonl(training_file, source="training_file") if training_file else None
        report = check_training_data(rows) if rows is not None else None
        documents = await asyncio.to_thread(self.documents.count_current, tenant_id)
        source = "sample_texts"
        samples = [t for t in (sample_texts or []) if t.strip()][: self.max_samples]
        if not samples and documents:
            samples, source = await asyncio.to_thread(self._document_samples, tenant_id), (
                "documents"
            )
        if not samples and report is not None:
            from adapters.datacheck import normalise_rows

            samples = [s.completion for s in normalise_rows(rows)[0]][: self.max_samples]
            source = "training_file answers"
        out: dict = {
            "object": "advice",
            "knowledge_base": {"documents": documents},
            "training_data": report.to_dict() if report is not None else None,
            "familiarity": None,
        }
        reasons: list[str] = []
        if not samples:
            out["recommendation"] = "prompt"
            reasons.append(
                "no private data (no documents, samples or training file): the base model "
                "answers from what it already knows; a good system prompt is the whole job"
            )
            out["reasons"] = reasons
            return out

        ppl, tokens = await self.perplexity(samples)
        ref, ref_tokens = await self.reference_perplexity()
        ratio = ppl / ref
        knows = ratio < self.unfamiliar_ratio
        out["familiarity"] = {
            "perplexity": round(ppl, 2),
            "reference_perplexity": round(ref, 2),
            "ratio": round(ratio, 2),
            "unfamiliar_ratio": self.unfamiliar_ratio,
            "knows_domain": knows,
            "samples": len(samples),
            "tokens": tokens,
            "reference_tokens": ref_tokens,
            "source": source,
        }
        measured = (
            f"the base model's perplexity on the tenant's text ({source}) is {ppl:.1f}, "
            f"{ratio:.1f}x its {ref:.1f} on public reference prose"
        )
        if knows:
            out["recommendation"] = "rag"
            reasons.append(
                f"{measured} (< {self.unfamiliar_ratio:g}x): it reads this domain, so retrieval "
                "supplies the tenant's facts, citably, and an upload updates them"
            )
            if report is not None:
                reasons.append("fine-tuning is not needed for a domain the model already reads")
        else:
            out["recommendation"] = "fine_tune+rag" if documents else "fine_tune"
            reasons.append(
                f"{measured} (>= {self.unfamiliar_ratio:g}x): this is knowledge or behaviour no "
                "public model learned, which an adapter can carry"
            )
            if documents:
                reasons.append(
                    f"the tenant has {documents} indexed document(s): retrieval keeps carrying "
                    "the facts beside the adapter (train it with context: --context-docs)"
                )
            if report is None:
                reasons.append("send a training file to check it is fit to fine-tune on")
            elif not report.passes:
                reasons.append("but the training file fails the data check: fix it first ("
                               + "; ".join(report.reasons) + ")")
            else:
                reasons.append(f"the training file passes the data check ({report.score:.2f})")
        out["reasons"] = reasons
        return out
