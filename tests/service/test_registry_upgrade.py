"""A registry made by the first release (migration 0001: tenants and their keys), filled with
rows as that release wrote them (plain SQL, not today's models), upgrades to head and serves:
the tenant's key authenticates, /v1/me shows its policy, a chat answers. The same registry
backed up by `ragtune backup create` (no server running) restores into a new data dir, migrated
on the way, and serves there too."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from core.registry.db import MIGRATIONS, Registry, make_engine
from core.registry.dump import head_revision, revision_of
from service.app import create_app
from service.cli import app as cli
from tests.helpers.api import ask
from tests.helpers.app import make_settings

SYSTEM_PROMPT = "You answer for the warehouse, tersely."
AT = "2025-06-01 12:00:00.000000"  # how SQLAlchemy stores a DateTime in SQLite


def registry_at_first_revision(data_dir: Path) -> tuple[str, dict[str, str]]:
    """(the registry's URL, the tenant's auth header) of a data dir at revision 0001."""
    url = f"sqlite:///{data_dir / 'registry.db'}"
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    key_id = secrets.token_hex(8)
    key = f"rt-{key_id}-{secrets.token_urlsafe(32)}"  # service/tenants.py's format
    policy = {"mode": "auto", "system_prompt": SYSTEM_PROMPT, "top_k": 3, "min_score": 0.35}
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("INSERT INTO tenants (id, policy, created_at, updated_at) "
                          "VALUES ('old-co', :policy, :at, :at)"),
                     {"policy": json.dumps(policy), "at": AT})
        conn.execute(text("INSERT INTO api_keys (id, tenant_id, key_hash, created_at) "
                          "VALUES (:id, 'old-co', :hash, :at)"),
                     {"id": key_id, "hash": hashlib.sha256(key.encode()).hexdigest(), "at": AT})
        assert revision_of(conn) == "0001"
    engine.dispose()
    return url, {"Authorization": f"Bearer {key}"}


def serves(data_dir: Path, engine_url: str, headers: dict[str, str]) -> None:
    with TestClient(create_app(make_settings(data_dir, [engine_url]))) as client:
        me = client.get("/v1/me", headers=headers)
        assert me.status_code == 200, me.text
        assert me.json()["id"] == "old-co"
        assert me.json()["policy"]["system_prompt"] == SYSTEM_PROMPT
        answer = ask(client, headers, "hello")
        assert answer["route"]["path"] == "prompt"
        assert SYSTEM_PROMPT in answer["choices"][0]["message"]["content"]  # the fake echoes it


def test_a_registry_from_the_first_migration_upgrades_and_serves(tmp_path, fake_engine):
    url, headers = registry_at_first_revision(tmp_path)
    registry = Registry(url)
    registry.migrate()
    with registry.engine.connect() as conn:
        assert revision_of(conn) == head_revision()
    registry.dispose()
    serves(tmp_path, fake_engine.url, headers)


def test_a_backup_of_a_first_migration_registry_restores_migrated(tmp_path, fake_engine):
    _, headers = registry_at_first_revision(tmp_path / "old")
    runner = CliRunner()
    made = runner.invoke(cli, ["backup", "create", "--out", str(tmp_path / "old.tar"),
                               "--data-dir", str(tmp_path / "old")])
    assert made.exit_code == 0 and "at revision 0001" in made.output, made.output
    restored = runner.invoke(cli, ["backup", "restore", str(tmp_path / "old.tar"),
                                   "--data-dir", str(tmp_path / "new")])
    assert restored.exit_code == 0, restored.output
    registry = Registry(f"sqlite:///{tmp_path / 'new' / 'registry.db'}")
    with registry.engine.connect() as conn:
        assert revision_of(conn) == head_revision()
    registry.dispose()
    serves(tmp_path / "new", fake_engine.url, headers)
