"""The test PostgreSQL (RAGTUNE_TEST_POSTGRES_URL): whether it answers, and a database of one's
own per test."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from core.registry.db import normalize_url

POSTGRES_URL = os.environ.get(
    "RAGTUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def postgres_available() -> bool:
    try:
        with create_engine(normalize_url(POSTGRES_URL)).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001
        return False


class TempPostgres:
    """A database of its own, created and dropped around a test."""

    def __init__(self) -> None:
        self.admin = create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
        self.name = "ragtune_t_" + uuid.uuid4().hex[:10]
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = normalize_url(POSTGRES_URL).rsplit("/", 1)[0] + f"/{self.name}"

    def drop(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def registry_url(kind: str, tmp_path: Path):
    """(url, cleanup) for 'sqlite' or 'postgres'."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}", lambda: None
    pg = TempPostgres()
    return pg.url, pg.drop
