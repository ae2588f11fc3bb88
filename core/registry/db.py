"""The registry's database: SQLite embedded, PostgreSQL at scale, one schema managed by Alembic."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import RegistryUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    # Users write postgresql://; SQLAlchemy's default driver for it is psycopg2, we ship psycopg 3.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            # pysqlite sends BEGIN only before the first write, so a transaction's reads ran
            # outside it, each on its own snapshot. Off: SQLAlchemy's "begin" below sends it.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # WAL lets readers run beside the one writer; foreign keys are off by default in SQLite.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if _IMMEDIATE.get() else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (safe to run from several processes on PostgreSQL:
    Alembic's version table update happens in the migration's transaction)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialise concurrent start-ups of several replicas.
            conn.execute(text("SELECT pg_advisory_xact_lock(72417001)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


# This transaction's BEGIN (SQLite): IMMEDIATE for `session(lock=True)`. A context variable, as
# the session is begun in the caller's thread by its first statement.
_IMMEDIATE: ContextVar[bool] = ContextVar("ragtune_sqlite_immediate", default=False)
T = TypeVar("T")


def _busy(exc: BaseException | None) -> bool:
    """SQLite's SQLITE_BUSY family (busy, locked, a stale snapshot) or PostgreSQL's
    serialization failure / deadlock: the same transaction may succeed when run again."""
    text_ = str(getattr(exc, "orig", exc) or "").lower()
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return "database is locked" in text_ or "busy" in text_ or code in ("40001", "40P01")


class Registry:
    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self.sqlite = self.engine.dialect.name == "sqlite"
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def session(self, lock: bool = False) -> Iterator[Session]:
        """One transaction. A lost or refused database connection is a 503 that says so (the
        request may be retried); the pool checks connections before use, so once the database
        is back the next transaction works.

        On SQLite every transaction is explicit: BEGIN before its first statement, so all its
        reads see one snapshot (WAL). `lock`: the transaction reads rows FOR UPDATE and writes
        from what it read. PostgreSQL locks those rows. SQLite has no row locks: there the
        transaction takes the database's write lock at its start (BEGIN IMMEDIATE), so two
        such transactions run one after the other, and readers are not blocked. A deferred
        SQLite transaction that reads and then writes after another writer committed fails
        with a busy (stale) snapshot: `run` retries such a unit."""
        token = _IMMEDIATE.set(lock and self.sqlite)
        try:
            with self._sessions() as s, s.begin():
                yield s
        except DBAPIError as exc:
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise RegistryUnavailable() from exc
            raise
        finally:
            _IMMEDIATE.reset(token)

    def run(self, unit: Callable[[Session], T], *, lock: bool = False, attempts: int = 5) -> T:
        """`unit(session)` in one transaction, run again (a few times, backing off) when the
        database was busy or the transaction's snapshot went stale (SQLite: another writer
        committed between its read and its write). `unit` must be safe to re-run: all it wrote
        was rolled back."""
        for attempt in range(1, attempts + 1):
            try:
                with self.session(lock=lock) as s:
                    return unit(s)
            except RegistryUnavailable as exc:
                if attempt == attempts or not _busy(exc.__cause__):
                    raise
            time.sleep(0.005 * 2 ** attempt * (1 + random.random()))
        raise AssertionError("unreachable")

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
