"""The evaluation tables: migration 0006 creates what the models declare (on SQLite and, where it
runs, PostgreSQL), and a result is stored once however often it is written."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from core.registry.db import Registry
from core.registry.models import Base
from service.evaluations.store import EvaluationStore
from service.policy import Policy
from service.tenants import TenantService
from tests.helpers.postgres import postgres_available, registry_url

TABLES = {"eval_sets", "evaluations", "eval_results"}


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request, tmp_path):
    if request.param == "postgres" and not postgres_available():
        pytest.skip("no PostgreSQL at RAGTUNE_TEST_POSTGRES_URL")
    url, cleanup = registry_url(request.param, tmp_path)
    reg = Registry(url)
    reg.migrate()
    yield reg
    reg.dispose()
    cleanup()


def test_the_migration_creates_the_tables_the_models_declare(registry):
    with registry.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    ours = [d for d in diff if TABLES & {getattr(x, "name", None) for x in _objects(d)}]
    assert not ours, ours


def _objects(d):
    """The schema objects a diff entry talks about (entries are tuples or lists of tuples)."""
    items = d if isinstance(d, list) else [d]
    out = []
    for item in items:
        for x in item:
            table = getattr(x, "table", None)
            out += [x] + ([table] if table is not None else [])
    return out


def test_a_result_is_counted_once_and_a_claim_resumes_it(registry):
    TenantService(registry).create("acme", Policy())
    store = EvaluationStore(registry)
    s = store.create_set("acme", "s", [{"id": "1", "query": "q", "checks": {"exact": "a"}}], None)
    ev = store.create("acme", s["id"], ["prompt"], 16)
    claimed = store.claim("w1", lease_s=60)
    assert claimed.id == ev["id"] and store.claim("w2", lease_s=60) is None  # leased
    row = {"arm": "prompt", "item_id": "1", "seq": 0, "output": "a", "passed": True,
           "failed": [], "checks": {"exact": True}, "documents_hit": None, "route": None,
           "error": None, "latency_ms": 1.0, "engine_seconds": 0.5, "prompt_tokens": 3,
           "completion_tokens": 1}
    assert store.record(ev["id"], row) is True
    assert store.record(ev["id"], row) is False  # the same item on the same arm: once
    assert store.done_keys(ev["id"]) == {("prompt", "1")}
    assert store.view("acme", ev["id"])["progress"] == {"done": 1, "total": 1}
    assert store.renew(ev["id"], "w2", 60) is False and store.renew(ev["id"], "w1", 60) is True


def test_an_expired_lease_is_claimed_again(registry):
    TenantService(registry).create("acme", Policy())
    store = EvaluationStore(registry)
    s = store.create_set("acme", "s", [{"id": "1", "query": "q", "checks": {"exact": "a"}}], None)
    ev = store.create("acme", s["id"], ["prompt"], 16)
    assert store.claim("w1", lease_s=-1.0).id == ev["id"]  # its lease already ran out
    again = store.claim("w2", lease_s=60)
    assert again is not None and again.id == ev["id"]
    assert store.renew(ev["id"], "w1", 60) is False  # the first runner lost it
