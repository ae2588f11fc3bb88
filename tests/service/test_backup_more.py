"""More of `ragtune backup`: made with no server running (the CLI reads the data dir itself) and
carrying the generated admin key; a PostgreSQL registry (pg_dump of the snapshot the backup
reads, pg_restore into an empty database), skipped where no test PostgreSQL answers; the
refusals that come from the settings (a Qdrant server store, a target of another kind), from a
newer ragtune's backup and from a server holding another data dir; a registration in flight
dropped by the restore; a deletion racing the backup, which is taken again."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from core.errors import BackupError
from core.registry.db import Registry
from core.registry.models import Adapter, AdapterVersion, Document, DocumentVersion, Tenant
from core.settings import QdrantSettings
from ingest.store_edge import EdgeChunkStore
from service import backup, policy_cli
from service.app import create_app
from service.backup_format import ArchiveWriter
from service.cli import app as cli
from tests.helpers.api import ask, indexed
from tests.helpers.app import ADMIN_KEY, make_settings, new_tenant
from tests.helpers.postgres import TempPostgres, postgres_available

POLICY = "Remote work is allowed three days per week with the approval of your manager."
QUESTION = "How many days of remote work are allowed?"


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["backup", *args], env=env or {})


def citations(client, headers) -> list[tuple]:
    body = ask(client, headers, QUESTION, route="rag")
    return [(c["document_id"], c["chunk_id"], c["text"], round(c["score"], 5))
            for c in body["citations"]]


@pytest.fixture(scope="module")
def offline(tmp_path_factory, fake_engine):
    """A backup made by the CLI of a data dir no server holds: (file, key, citations)."""
    tmp = tmp_path_factory.mktemp("offline")
    with TestClient(create_app(make_settings(tmp / "a", [fake_engine.url]))) as client:
        _, acme = new_tenant(client, tenant_id="acme")
        indexed(client, acme, "policy.txt", POLICY.encode())
        cited = citations(client, acme)
    key = tmp / "a" / "admin_key"  # as `ragtune serve` generates it when none is set
    key.write_text("rt-admin-generated\n")
    key.chmod(0o600)
    made = run("create", "--out", str(tmp / "offline.tar"), "--data-dir", str(tmp / "a"))
    assert made.exit_code == 0, made.output
    assert "no server running" in made.output and "1 points" in made.output, made.output
    return tmp / "offline.tar", acme, cited


def test_a_backup_made_with_no_server_restores(offline, tmp_path, fake_engine):
    backup, acme, cited = offline
    checked = run("verify", str(backup))
    assert checked.exit_code == 0 and "a sound ragtune backup" in checked.output, checked.output
    restored = run("restore", str(backup), "--data-dir", str(tmp_path / "b"))
    assert restored.exit_code == 0, restored.output
    key = tmp_path / "b" / "admin_key"
    assert key.read_text() == "rt-admin-generated\n" and key.stat().st_mode & 0o777 == 0o600
    with TestClient(create_app(make_settings(tmp_path / "b", [fake_engine.url]))) as client:
        assert client.get("/v1/me", headers=acme).json()["id"] == "acme"
        assert citations(client, acme) == cited


def test_a_qdrant_server_store_is_not_backed_up(tmp_path):
    out = tmp_path / "b.tar"
    result = run("create", "--out", str(out), "--data-dir", str(tmp_path),
                 env={"RAGTUNE_QDRANT__URL": "http://127.0.0.1:9"})
    assert result.exit_code == 1 and "Qdrant server" in result.output, result.output
    assert not out.exists()


def test_restore_refuses_a_target_of_another_kind(offline, tmp_path):
    backup, _, _ = offline
    targets = [({"RAGTUNE_QDRANT__URL": "http://127.0.0.1:9"}, "embedded Qdrant Edge")]
    db = TempPostgres() if postgres_available() else None
    if db is not None:
        targets.append(({"RAGTUNE_DATABASE_URL": db.url}, "holds a sqlite registry"))
    try:
        for env, words in targets:
            result = run("restore", str(backup), "--data-dir", str(tmp_path / "t"), env=env)
            assert result.exit_code == 1 and words in result.output, result.output
            assert not (tmp_path / "t").exists()
    finally:
        if db is not None:
            db.drop()


@pytest.mark.skipif(not postgres_available(), reason="no test PostgreSQL answers")
def test_a_postgres_registry_round_trips(tmp_path, fake_engine):
    source, target = TempPostgres(), TempPostgres()
    try:
        settings = make_settings(tmp_path / "a", [fake_engine.url], database_url=source.url)
        with TestClient(create_app(settings)) as client:
            _, acme = new_tenant(client, tenant_id="acme")
            indexed(client, acme, "policy.txt", POLICY.encode())
            cited = citations(client, acme)
            policy_cli._CLIENT = client
            try:
                made = run("create", "--out", str(tmp_path / "pg.tar"), "--data-dir",
                           str(tmp_path / "a"), "--admin-key", ADMIN_KEY)
            finally:
                policy_cli._CLIENT = None
        assert made.exit_code == 0 and "registry postgresql" in made.output, made.output
        env = {"RAGTUNE_DATABASE_URL": target.url}
        restored = run("restore", str(tmp_path / "pg.tar"), "--data-dir", str(tmp_path / "b"),
                       env=env)
        assert restored.exit_code == 0, restored.output
        again = run("restore", str(tmp_path / "pg.tar"), "--data-dir", str(tmp_path / "c"),
                    env=env)
        assert again.exit_code == 1 and "holds tables" in again.output, again.output
        settings = make_settings(tmp_path / "b", [fake_engine.url], database_url=target.url)
        with TestClient(create_app(settings)) as client:
            assert citations(client, acme) == cited
            content = client.get("/v1/files/policy/content", headers=acme)
            assert content.content == POLICY.encode()
    finally:
        source.drop()
        target.drop()


def test_a_backup_from_a_newer_ragtune_is_refused(tmp_path):
    writer = ArchiveWriter(tmp_path / "newer.tar")
    writer.add_bytes("registry/registry.db", b"")
    writer.add_bytes("vectors/points.jsonl", b"")
    writer.finish({"alembic_revision": "9999", "vector_store": {"kind": "qdrant-edge"},
                   "registry": {"kind": "sqlite", "member": "registry/registry.db"}})
    result = run("restore", str(tmp_path / "newer.tar"), "--data-dir", str(tmp_path / "t"))
    assert result.exit_code == 1 and "does not know" in result.output, result.output
    assert not (tmp_path / "t").exists()


def test_create_refuses_a_server_holding_another_data_dir(tmp_path, fake_engine):
    """The data dir named is held (here by a store of the test's own), and the server asked
    serves another one: its backup is not the one wanted."""
    held = EdgeChunkStore(tmp_path / "mine" / "qdrant", QdrantSettings())
    held.ensure_collection(4)
    out = tmp_path / "b.tar"
    try:
        with TestClient(create_app(make_settings(tmp_path / "other", [fake_engine.url]))) as c:
            policy_cli._CLIENT = c
            try:
                result = run("create", "--out", str(out), "--data-dir", str(tmp_path / "mine"),
                             "--admin-key", ADMIN_KEY)
            finally:
                policy_cli._CLIENT = None
    finally:
        held.close()
    assert result.exit_code == 1 and "serves" in result.output, result.output
    assert not out.exists() and list(tmp_path.glob("b.tar*")) == []


def test_restore_drops_a_registration_in_flight_and_moves_adapter_paths(tmp_path):
    """Versions still `loading` in the backup (a registration the original server was making)
    are dropped with their files, an adapter left without versions with them; the others'
    paths point into the new data dir."""
    src = tmp_path / "src"
    registry = Registry(f"sqlite:///{src / 'registry.db'}")
    registry.migrate()
    folders = {v: src / "adapters" / "t1" / name / f"v{n}"
               for v, (name, n) in {"a1": ("first", 1), "b1": ("kept", 1),
                                    "b2": ("kept", 2)}.items()}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
    with registry.session() as s:
        s.add(Tenant(id="t1", policy={}))
        s.flush()
        s.add_all([Adapter(tenant_id="t1", name="first", current_version=None),
                   Adapter(tenant_id="t1", name="kept", current_version=1)])
        s.flush()
        for key, (name, n, state) in {"a1": ("first", 1, "loading"), "b1": ("kept", 1, "ready"),
                                      "b2": ("kept", 2, "loading")}.items():
            s.add(AdapterVersion(tenant_id="t1", name=name, version=n, state=state,
                                 engine_name=f"t1--{name}--v{n}", path=str(folders[key]),
                                 base_model="m", rank=8, size_bytes=1))
    registry.dispose()
    assert run("create", "--out", str(tmp_path / "b.tar"), "--data-dir", str(src)).exit_code == 0
    restored = run("restore", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "new"))
    assert restored.exit_code == 0, restored.output
    registry = Registry(f"sqlite:///{tmp_path / 'new' / 'registry.db'}")
    with registry.session() as s:
        adapters = {a.name: a.current_version for a in s.query(Adapter)}
        versions = [(v.name, v.version, v.state, v.path) for v in s.query(AdapterVersion)]
    registry.dispose()
    kept = tmp_path / "new" / "adapters" / "t1" / "kept"
    assert adapters == {"kept": 1}
    assert versions == [("kept", 1, "ready", str(kept / "v1"))]
    assert (kept / "v1" / "adapter_config.json").is_file()
    assert not (kept / "v2").exists() and not (kept.parent / "first" / "v1").exists()


def _one_document(data_dir) -> Registry:
    """A registry at head with one live document whose files exist."""
    registry = Registry(f"sqlite:///{data_dir / 'registry.db'}")
    registry.migrate()
    job = data_dir / "uploads" / "t1" / "job-1"
    job.mkdir(parents=True)
    (job / "0.orig").write_text("hello")
    (job / "0.sections.json").write_text('[{"text": "hello", "meta": {}}]')
    with registry.session() as s:
        s.add(Tenant(id="t1", policy={}))
        s.flush()
        s.add(Document(tenant_id="t1", id="doc", state="live"))
        s.flush()
        s.add(DocumentVersion(tenant_id="t1", document_id="doc", version=1, job_id="job-1",
                              state="queued", source="a.txt", content_type="text", size_bytes=5,
                              sha256="x", stored_path=str(job / "0.sections.json"), meta={}))
    return registry


@pytest.mark.parametrize("row_goes_too", [True, False], ids=["deleted", "files-only-vanish"])
def test_a_deletion_between_registry_and_files_is_taken_again(tmp_path, monkeypatch,
                                                              row_goes_too):
    """A document deleted after the registry was copied and before its files were read: the
    attempt is made again, and then holds neither the rows nor the files. Files that vanish
    while their rows stay (nothing the server does) fail the backup after every attempt."""
    registry = _one_document(tmp_path)
    copies = []

    def copy_then_delete(url, tmp):
        copy = real_copy(url, tmp)
        copies.append(copy)
        if len(copies) == 1 or not row_goes_too:
            if row_goes_too:
                with registry.session() as s:
                    s.delete(s.get(Document, ("t1", "doc")))
            shutil.rmtree(tmp_path / "uploads" / "t1", ignore_errors=True)
        return copy

    real_copy = backup.copy_registry
    monkeypatch.setattr(backup, "copy_registry", copy_then_delete)
    settings = make_settings(tmp_path, ["http://127.0.0.1:9"])
    store = EdgeChunkStore(tmp_path / "qdrant", QdrantSettings())
    try:
        if row_goes_too:
            manifest = backup.create_backup(settings, store, tmp_path / "b.tar")
            assert len(copies) == 2 and copies[0].uploads and not copies[1].uploads
            assert not any(m.startswith("files/") for m in manifest["members"])
        else:
            with pytest.raises(BackupError) as refused:
                backup.create_backup(settings, store, tmp_path / "b.tar")
            assert refused.value.code == "backup_busy" and len(copies) == backup.ATTEMPTS
            assert not (tmp_path / "b.tar").exists()
    finally:
        store.close()
        registry.dispose()
