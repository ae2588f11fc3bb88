"""The registry's own backup and restore, one per database: SQLite through its online backup API
(`sqlite3.Connection.backup`: a consistent copy while the server writes, never a file copy, which
could catch a page half-written or miss what is still in the WAL), PostgreSQL through `pg_dump`
(custom format) and `pg_restore`, which must be on PATH. The revisions are Alembic's."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url

from core.registry.db import MIGRATIONS, normalize_url


class RegistryDumpError(RuntimeError):
    """A registry could not be dumped or restored; the message says why."""


def registry_kind(url: str) -> str:
    """'sqlite' or 'postgresql'."""
    backend = make_url(normalize_url(url)).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise RegistryDumpError(f"a registry on {backend} cannot be backed up (SQLite, PostgreSQL)")
    return backend


def sqlite_file(url: str) -> Path:
    database = make_url(normalize_url(url)).database
    if not database or database == ":memory:":
        raise RegistryDumpError("an in-memory SQLite registry has nothing to back up")
    return Path(database)


def _scripts() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg)


def head_revision() -> str:
    return _scripts().get_current_head()


def known_revisions() -> set[str]:
    return {s.revision for s in _scripts().walk_revisions()}


def revision_of(conn: Connection) -> str | None:
    """The Alembic revision the database is at (None: never migrated)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def backup_sqlite(db: Path, dest: Path) -> None:
    """Copy the live SQLite database `db` into the new file `dest` (online backup API)."""
    if not db.is_file():
        raise RegistryDumpError(f"no registry at {db}: is the data dir right?")
    # mode=rw: never create an empty database where the registry should be.
    with closing(sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=30)) as src, \
            closing(sqlite3.connect(dest)) as dst:
        src.backup(dst)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RegistryDumpError(
            f"{name} is not on PATH: a PostgreSQL registry is backed up and restored with "
            f"pg_dump and pg_restore (PostgreSQL's client tools, as new as the server)"
        )
    return found


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """(the URL libpq reads, without its password; the environment that carries it): the
    password never shows in a process list."""
    u = make_url(normalize_url(url))
    env = dict(os.environ)
    if u.password is not None:
        env["PGPASSWORD"] = str(u.password)
    plain = u.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RegistryDumpError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def dump_postgres(url: str, dest: Path, snapshot: str | None = None) -> None:
    """pg_dump's custom format into `dest`; `snapshot`: an exported snapshot
    (`pg_export_snapshot()`) to dump, so the caller reads the same data as the dump."""
    dburl, env = _libpq(url)
    args = [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
            f"--file={dest}", f"--dbname={dburl}"]
    if snapshot is not None:
        args.append(f"--snapshot={snapshot}")
    _run(args, env, "pg_dump")


def check_postgres_tools() -> None:
    _tool("pg_restore")


def restore_postgres(dump: Path, url: str) -> None:
    """Load a custom-format dump into the (empty) database `url`, all or nothing."""
    dburl, env = _libpq(url)
    _run([_tool("pg_restore"), "--no-owner", "--no-privileges", "--single-transaction",
          "--exit-on-error", f"--dbname={dburl}", str(dump)], env, "pg_restore")
