"""The registry's migrations against a real PostgreSQL server in a container (testcontainers), the
image docker-compose.yml runs. Skipped, with the reason, where no Docker engine answers."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from core.registry.db import MIGRATIONS, Registry
from service.policy import Policy
from service.tenants import TenantService

ROOT = Path(__file__).resolve().parents[2]


def _docker_unavailable() -> str | None:
    try:
        import docker
    except ImportError as exc:
        return f"the docker SDK is not installed ({exc}); install the dev extra"
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine means: skip
        return f"no Docker engine answers ({type(exc).__name__}: {exc})"
    return None


def _compose_postgres_image() -> str:
    """The same image (and so the same major version) as docker-compose.yml."""
    compose = (ROOT / "docker-compose.yml").read_text()
    match = re.search(r"\$\{POSTGRES_IMAGE:-([^}]+)\}", compose)
    assert match, "docker-compose.yml names its PostgreSQL image as ${POSTGRES_IMAGE:-...}"
    return match.group(1)


@pytest.fixture(scope="module")
def postgres_url():
    reason = _docker_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(
        _compose_postgres_image(), username="ragtune", password="ragtune", dbname="ragtune",
        driver=None,
    )
    with container:
        yield container.get_connection_url()


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def test_migrations_run_concurrently_and_are_idempotent(postgres_url):
    # Several API replicas and workers start at once: each runs the migrations.
    registries = [Registry(postgres_url) for _ in range(3)]
    errors: list[BaseException] = []

    def migrate(reg: Registry) -> None:
        try:
            reg.migrate()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(r,)) for r in registries]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == []
        reg = registries[0]
        reg.migrate()  # and once more: nothing to do
        tables = set(inspect(reg.engine).get_table_names())
        assert {"tenants", "api_keys", "documents", "document_versions", "jobs",
                "alembic_version"} <= tables
        with reg.engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
            assert list(versions) == [_head_revision()]
            assert conn.dialect.name == "postgresql"
    finally:
        for r in registries:
            r.dispose()


def test_registry_serves_tenants_on_the_migrated_schema(postgres_url):
    reg = Registry(postgres_url)
    try:
        reg.migrate()
        svc = TenantService(reg)
        tenant, key = svc.create("acme-containers", Policy(system_prompt="hi"))
        assert svc.authenticate(key).id == tenant.id == "acme-containers"
    finally:
        reg.dispose()
