"""The registry on both backends: SQLite (embedded) and the machine's PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from core.errors import Conflict, NotFound, RegistryUnavailable
from core.registry.db import Registry, normalize_url
from core.registry.models import ApiKey, Document, DocumentVersion, Tenant
from core.settings import DocumentLimits
from ingest.documents import DocumentService, Upload
from service.policy import Policy
from service.tenants import TenantService
from tests.helpers.postgres import POSTGRES_URL, postgres_available


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

    from core.registry.db import MIGRATIONS

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


def _paused_first(monkeypatch, entity_type):
    """Session.get pauses in the thread named "first" after reading an `entity_type` row."""
    read, resume = threading.Event(), threading.Event()
    real_get = Session.get

    def pausing_get(self, entity, ident, **kw):
        found = real_get(self, entity, ident, **kw)
        if entity is entity_type and threading.current_thread().name == "first":
            read.set()
            resume.wait(10)
        return found

    monkeypatch.setattr(Session, "get", pausing_get)
    return read, resume


def _race(first_fn, second_fn, read, resume) -> list:
    """first_fn pauses after its read; second_fn runs meanwhile; what each returned or raised."""
    results: list = [None, None]

    def run(i, fn):
        try:
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            results[i] = exc

    first = threading.Thread(target=run, args=(0, first_fn), name="first")
    first.start()
    assert read.wait(10)
    second = threading.Thread(target=run, args=(1, second_fn))
    second.start()
    second.join(0.5)  # unordered, the second would commit here, inside the first's window
    resume.set()
    first.join(10)
    second.join(10)
    assert not first.is_alive() and not second.is_alive()
    return results


def test_a_purge_never_takes_a_document_uploaded_again_meanwhile(registry, tmp_path, monkeypatch):
    """DELETE hides a document, then purges its rows. A new upload of the same id between the
    purge's read and its delete must survive: on PostgreSQL the row lock orders them, on SQLite
    the purge's transaction holds the write lock from its start (without it, the purge deleted
    the revived document and, by cascade, the new upload's version and file)."""
    TenantService(registry).create("acme", Policy())
    docs = DocumentService(registry, tmp_path / "uploads", DocumentLimits())
    docs.upload("acme", [Upload("refunds.txt", b"Refunds within 45 days.")], "refunds")
    docs.mark_deleting("acme", "refunds")

    read, resume = _paused_first(monkeypatch, Document)
    _, uploaded = _race(
        lambda: docs.purge("acme", "refunds"),
        lambda: docs.upload("acme", [Upload("refunds.txt", b"Refunds within 14 days.")],
                            "refunds"),
        read, resume,
    )
    assert isinstance(uploaded, dict), uploaded

    version = uploaded["documents"][0]["version"]
    with registry.session() as s:
        doc = s.get(Document, ("acme", "refunds"))
        kept = s.get(DocumentVersion, ("acme", "refunds", version))
    assert doc is not None and doc.state == "live"
    assert kept is not None and kept.state == "queued"
    assert Path(kept.stored_path).is_file()


def test_two_policy_patches_at_once_both_land(registry, monkeypatch):
    """A PATCH merges into the stored policy: the second of two concurrent PATCHes must merge
    into the first's result, not into what both read (a lost update without the row lock on
    PostgreSQL, or without the write lock on SQLite)."""
    svc = TenantService(registry)
    svc.create("acme", Policy())
    read, resume = _paused_first(monkeypatch, Tenant)
    _race(lambda: svc.update_policy("acme", {"top_k": 7}),
          lambda: svc.update_policy("acme", {"min_score": 0.5}), read, resume)
    policy = svc.get("acme").policy
    assert (policy.top_k, policy.min_score) == (7, 0.5)


def test_two_key_rotations_at_once_leave_one_valid_key(registry, monkeypatch):
    """The first rotation pauses after revoking the old key, before adding its new one. On
    PostgreSQL without the tenant row lock, the second rotation's revoke then skips the first's
    new key (not yet committed when it looked) and both new keys stay valid."""
    svc = TenantService(registry)
    svc.create("acme", Policy())
    read, resume = threading.Event(), threading.Event()
    real_add = Session.add

    def pausing_add(self, instance, *a, **kw):
        if isinstance(instance, ApiKey) and threading.current_thread().name == "first":
            read.set()
            resume.wait(10)
        return real_add(self, instance, *a, **kw)

    monkeypatch.setattr(Session, "add", pausing_add)
    keys = _race(lambda: svc.rotate_key("acme"), lambda: svc.rotate_key("acme"), read, resume)
    assert all(isinstance(k, str) for k in keys), keys
    valid = [k for k in keys if svc.authenticate(k) is not None]
    assert valid == [keys[1]]  # the second rotation, which ran last, revoked the first's key


def test_the_same_tenant_created_twice_at_once_is_one_tenant_and_a_409(registry, monkeypatch):
    svc = TenantService(registry)
    read, resume = _paused_first(monkeypatch, Tenant)
    first, second = _race(lambda: svc.create("acme", Policy()),
                          lambda: svc.create("acme", Policy()), read, resume)
    outcomes = sorted(type(r).__name__ for r in (first, second))
    assert outcomes == ["Conflict", "tuple"], (first, second)  # never a bare IntegrityError
    assert next(r for r in (first, second) if isinstance(r, Conflict)).code == "tenant_exists"


def test_a_new_document_uploaded_twice_at_once_gets_two_versions(registry, tmp_path, monkeypatch):
    TenantService(registry).create("acme", Policy())
    docs = DocumentService(registry, tmp_path / "uploads", DocumentLimits())
    read, resume = _paused_first(monkeypatch, Document)

    def up(text: bytes):
        return lambda: docs.upload("acme", [Upload("refunds.txt", text)], "refunds")

    first, second = _race(up(b"Refunds within 45 days."), up(b"Refunds within 14 days."),
                          read, resume)
    assert isinstance(first, dict) and isinstance(second, dict), (first, second)
    got = sorted(r["documents"][0]["version"] for r in (first, second))
    assert got == [1, 2]


def test_a_new_adapter_name_registered_twice_at_once_gets_two_versions(
    registry, tmp_path, monkeypatch
):
    from adapters.service import AdapterService
    from adapters.validation import AdapterInfo
    from core.registry.models import Adapter
    from core.settings import Settings

    TenantService(registry).create("acme", Policy())
    service = AdapterService(registry, None, Settings(data_dir=tmp_path))
    info = AdapterInfo(rank=8, alpha=16, target_modules=["q_proj"], base_model="base",
                       size_bytes=1, num_tensors=2)
    read, resume = _paused_first(monkeypatch, Adapter)

    def reserve():
        return service._reserve("acme", "warelang", info, "rules", ["a prompt"])

    first, second = _race(reserve, reserve, read, resume)
    assert isinstance(first, tuple) and isinstance(second, tuple), (first, second)
    assert sorted(r[0] for r in (first, second)) == [1, 2]


def _sqlite_with_a_tenant(tmp_path) -> Registry:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.migrate()
    TenantService(reg).create("acme", Policy())
    return reg


def _write_elsewhere(reg: Registry, top_k: int) -> None:
    """Another connection commits a change (another request, worker or process)."""
    with reg.engine.connect() as other:
        other.execute(text("UPDATE tenants SET policy = :p WHERE id = 'acme'"),
                      {"p": f'{{"top_k": {top_k}}}'})
        other.commit()


def test_sqlite_a_transactions_reads_see_one_snapshot(tmp_path):
    """pysqlite begins a transaction only at its first write: a transaction that reads twice
    saw another connection's commit in between. Every transaction now begins explicitly."""
    reg = _sqlite_with_a_tenant(tmp_path)
    read = text("SELECT policy FROM tenants WHERE id = 'acme'")
    with reg.session() as s:
        first = s.execute(read).scalar()
        _write_elsewhere(reg, 9)
        assert s.execute(read).scalar() == first
    with reg.session() as s:
        assert "9" in s.execute(read).scalar()
    reg.dispose()


def test_sqlite_run_runs_a_unit_again_when_its_snapshot_went_stale(tmp_path):
    """A transaction read, another writer committed, then it wrote: SQLite refuses the write
    (a stale snapshot). `run` runs the unit again, and it lands."""
    reg = _sqlite_with_a_tenant(tmp_path)
    attempts = []

    def unit(s: Session) -> int:
        attempts.append(1)
        seen = s.execute(text("SELECT count(*) FROM tenants")).scalar()
        if len(attempts) == 1:
            _write_elsewhere(reg, 5)
        s.execute(text("UPDATE tenants SET policy = :p WHERE id = 'acme'"), {"p": '{"top_k": 7}'})
        return seen

    assert reg.run(unit) == 1 and len(attempts) == 2
    with reg.session() as s:
        assert "7" in s.execute(text("SELECT policy FROM tenants WHERE id = 'acme'")).scalar()
    # Without `run`, the same unit is the 503 it always was, never a half-written change.
    attempts.clear()
    with pytest.raises(RegistryUnavailable):
        with reg.session() as s:
            unit(s)
    reg.dispose()
