"""Gated adapter releases: a new version serves only if an evaluation on the tenant's own set
finds it not worse than the version it replaces, by more than the allowance.

The candidate is loaded on the engines but still `loading` (no tenant request can reach it);
the evaluation runs both arms, `adapter_rag:<name>@<current>` and `adapter_rag:<name>@<new>`
(the first version of a name is compared with `rag`, the path the tenant's queries take without
it), through the chat path applications use, here and now rather than behind the queue. It is a
stored evaluation like any other (GET /v1/evaluations/{id} shows it). The verdict is on the
pass rates: the candidate passes when `pass_rate - baseline_pass_rate >= -min_delta`; the
paired McNemar p-value is reported with it, not used to excuse a drop (a gate that lets a worse
version through because twelve items cannot prove it worse is no gate)."""

from __future__ import annotations

import asyncio

from adapters.service import GateCheck, GateOutcome
from core.errors import APIError, InvalidRequest
from core.settings import EvaluationSettings, LimitSettings
from service.evaluations.runner import EvaluationRunner
from service.evaluations.store import EvaluationStore
from service.protocol import Gate

EPS = 1e-9


class GateEvaluationFailed(APIError):
    status = 503
    type = "server_error"
    code = "gate_evaluation_failed"


class AdapterGates:
    def __init__(
        self,
        store: EvaluationStore,
        runner: EvaluationRunner,
        settings: EvaluationSettings,
        limits: LimitSettings,
    ) -> None:
        self.store = store
        self.runner = runner
        self.settings = settings
        self.limits = limits

    def prepare(self, tenant_id: str, spec: Gate) -> GateCheck:
        """Check the gate before a byte of the adapter is stored (the set is the tenant's: 404
        otherwise); the check AdapterService runs once the version is loaded."""
        self.store.get_set(tenant_id, spec.eval_set)
        if spec.max_tokens > self.limits.max_tokens:
            raise InvalidRequest(f"gate.max_tokens may be at most {self.limits.max_tokens}",
                                 code="max_tokens_too_large", param="gate")

        async def check(tenant: str, name: str, version: int, current: int | None) -> GateOutcome:
            return await self.run(tenant, name, version, current, spec)

        return check

    async def run(
        self, tenant_id: str, name: str, version: int, current: int | None, spec: Gate
    ) -> GateOutcome:
        baseline = f"adapter_rag:{name}@{current}" if current else "rag"
        candidate = f"adapter_rag:{name}@{version}"
        claimed = await asyncio.to_thread(
            self.store.create_claimed, tenant_id, spec.eval_set, [baseline, candidate],
            spec.max_tokens, self.runner.worker_id, self.settings.lease_s,
        )
        await self.runner.run_claimed(claimed)
        view = await asyncio.to_thread(self.store.view, tenant_id, claimed.id)
        if view["state"] != "succeeded":
            raise GateEvaluationFailed(
                f"the gate's evaluation {claimed.id} did not finish ({view.get('error')}); "
                f"nothing was switched: register version again"
            )
        arms = {a["arm"]: a for a in view["arms"]}
        base, new = arms[baseline], arms[candidate]
        delta = new["pass_rate"] - base["pass_rate"]
        p_value = next((c["p_value"] for c in view["comparisons"]), None)
        passed = delta >= -spec.min_delta - EPS
        record = {
            "eval_set": spec.eval_set,
            "evaluation": claimed.id,
            "baseline": baseline,
            "candidate": candidate,
            "baseline_pass_rate": base["pass_rate"],
            "pass_rate": new["pass_rate"],
            "delta": round(delta, 6),
            "min_delta": spec.min_delta,
            "p_value": p_value,
            "passed": passed,
        }
        against = f"version {current}" if current else "the rag path"
        message = (
            f"adapter '{name}' version {version} failed its gate on eval set {spec.eval_set}: "
            f"it passed {new['passed']} of {new['total']} items ({new['pass_rate']:.0%}) against "
            f"{base['passed']} of {base['total']} ({base['pass_rate']:.0%}) for {against}, "
            f"{delta * 100:+.1f} points where at most {spec.min_delta * 100:.1f} lower is "
            f"allowed (paired McNemar p = {p_value}). Version {version} is kept as rejected "
            f"and traffic stays where it was; evaluation {claimed.id} has the items"
        )
        return GateOutcome(passed, record, message)
