"""What the routes call: eval sets checked before they are stored, evaluations checked before
they are queued (arms, adapters, token limit), and the views of both."""

from __future__ import annotations

from adapters.service import AdapterService
from core.errors import InvalidRequest, NotFound
from core.settings import EvaluationSettings, LimitSettings
from service.evaluations.checks import MAX_ITEMS, compile_grammar, parse_items
from service.evaluations.runner import parse_arm
from service.evaluations.store import EvaluationStore


class EvaluationService:
    def __init__(
        self,
        store: EvaluationStore,
        adapters: AdapterService | None,
        settings: EvaluationSettings,
        limits: LimitSettings,
    ) -> None:
        self.store = store
        self.adapters = adapters
        self.settings = settings
        self.limits = limits

    def create_set(self, tenant_id: str, name: str, rows: list, grammar: str | None) -> dict:
        if grammar is not None:
            if not grammar.strip():
                grammar = None
            else:
                compile_grammar(grammar)
        items = parse_items(
            rows,
            has_grammar=grammar is not None,
            max_items=min(MAX_ITEMS, self.settings.max_items),
        )
        stored = [i.model_dump(exclude_none=True) for i in items]
        return self.store.create_set(tenant_id, name, stored, grammar)

    def _check_arm(self, tenant_id: str, arm: str) -> None:
        kind, name, version = parse_arm(arm)
        if kind != "adapter_rag" or self.adapters is None:
            return
        found = (
            self.adapters.version(tenant_id, name, version)
            if version is not None
            else next(iter(self.adapters.served(tenant_id, name)), None)
        )
        if found is None:
            what = f"version {version} of adapter {name!r}" if version else f"adapter {name!r}"
            raise NotFound(f"arm {arm!r}: no servable {what}", code="model_not_found", param="arms")

    def create(self, tenant_id: str, set_id: str, arms: list[str], max_tokens: int) -> dict:
        if len(set(arms)) != len(arms):
            raise InvalidRequest("an arm is named twice", code="duplicate_arm", param="arms")
        for arm in arms:
            self._check_arm(tenant_id, arm)
        if max_tokens > self.limits.max_tokens:
            raise InvalidRequest(
                f"max_tokens may be at most {self.limits.max_tokens}",
                code="max_tokens_too_large",
                param="max_tokens",
            )
        return self.store.create(tenant_id, set_id, arms, max_tokens)  # 404: no such set
