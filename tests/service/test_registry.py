"""The registry on both backends: SQLite (embedded) and the machine's PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text

from service.errors import Conflict, NotFound
from service.policy import Policy
from service.registry.db import Registry, normalize_url
from service.tenants import TenantService
from tests.conftest import POSTGRES_URL
from tests.ingest.kb import postgres_available


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request, tmp_path):
    if request.param == "sqlite":
        reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
        reg.migrate()
        yield reg
        reg.dispose()
        return
    if not postgres_available():
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}")
    # A database of its own per test: migrations run from scratch, nothing shared.
    admin = create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    name = "ragtune_t_" + uuid.uuid4().hex[:10]
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = normalize_url(POSTGRES_URL).rsplit("/", 1)[0] + f"/{name}"
    reg = Registry(url)
    reg.migrate()
    yield reg
    reg.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_migrations_create_schema_and_are_idempotent(registry):
    tables = set(inspect(registry.engine).get_table_names())
    assert {"tenants", "api_keys", "documents", "document_versions", "jobs",
            "alembic_version"} <= tables
    registry.migrate()  # a second start-up changes nothing
    from alembic.script import ScriptDirectory

    from service.registry.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with registry.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head


def test_tenant_lifecycle_and_keys(registry):
    svc = TenantService(registry)
    tenant, key = svc.create("acme", Policy(system_prompt="hi"))
    assert svc.authenticate(key).id == "acme"
    assert svc.authenticate(key).policy.system_prompt == "hi"
    # only the digest is stored
    with registry.engine.connect() as conn:
        stored = conn.execute(text("SELECT key_hash FROM api_keys")).scalars().all()
    assert key not in stored and all(len(h) == 64 for h in stored)
    with pytest.raises(Conflict):
        svc.create("acme", Policy())
    # a key with the right id but a wrong secret fails
    forged = key[:-5] + ("AAAAA" if not key.endswith("AAAAA") else "BBBBB")
    assert svc.authenticate(forged) is None
    new = svc.rotate_key("acme")
    assert svc.authenticate(key) is None and svc.authenticate(new).id == "acme"
    assert svc.update_policy("acme", {"mode": "prompt"}).policy.mode == "prompt"
    svc.delete("acme")
    assert svc.authenticate(new) is None
    with pytest.raises(NotFound):
        svc.get("acme")
    with registry.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM api_keys")).scalar() == 0
