"""Restoring a backup (service/backup_format.py) into an empty data dir, so that `ragtune serve
--data-dir DIR` serves the same data.

Nothing is written before the whole file is checked (`verify`: format, manifest, every byte)
and the target is known to fit: an empty (or new) data dir, and any store the settings put
outside it (the adapter root, the Qdrant folder, a SQLite file, a PostgreSQL database) empty
too; the registry of the kind the backup holds; a Qdrant Edge store (not a server). Then the
members are written, each hashed again as it is (the file could change after the check), and
if anything fails, what this restore wrote is removed again.

The registry's rows keep absolute paths into the data dir the backup was made from
(`document_versions.stored_path`, `adapter_versions.path`; no other column holds one). Each is
rewritten to the same place under the new data dir, relative to the root it was under (the
manifest's `roots`). Then the registry is migrated to this code's head, and what the original
processes were doing is released: the leases of running jobs and evaluations end (their
workers are gone; the restored ones claim them at once), and an adapter version still loading
(a registration in flight) is dropped with its files, as after a crash. The vector store is
created anew from the dumped points (ingest/vector_dump.py).
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import MetaData, bindparam, create_engine, delete, inspect, select, update

from core.registry.db import Registry, normalize_url
from core.registry.dump import (
    RegistryDumpError,
    check_postgres_tools,
    known_revisions,
    registry_kind,
    restore_postgres,
    sqlite_file,
)
from core.registry.models import Adapter, AdapterVersion, DocumentVersion, Evaluation, Job
from core.settings import Settings
from ingest.store_edge import EdgeChunkStore
from ingest.vector_dump import load_points
from service.backup import EDGE, relative_under
from service.backup_format import (
    ADMIN_KEY,
    FORMAT,
    MANIFEST,
    MANIFEST_SHA,
    REGISTRY,
    VECTORS,
    BackupRefused,
    check_name,
    verify,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CHUNK = 1 << 20


@dataclass
class Target:
    settings: Settings
    data_dir: Path
    registry_url: str
    registry: str  # sqlite | postgresql
    uploads: Path
    adapters: Path
    qdrant: Path
    folders: dict[Path, bool] = field(default_factory=dict)  # folder -> existed before

    @classmethod
    def of(cls, settings: Settings) -> Target:
        data_dir = settings.data_dir.absolute()
        settings = settings.model_copy(update={"data_dir": data_dir})
        url = settings.resolved_database_url
        t = cls(settings, data_dir, url, registry_kind(url), data_dir / "uploads",
                settings.resolved_adapters_root, settings.qdrant.resolved_path(data_dir).absolute())
        t.folders = {f: f.exists() for f in (data_dir, t.adapters, t.qdrant)}
        return t

    @property
    def sqlite(self) -> Path:
        return sqlite_file(self.registry_url).absolute()


def restore(archive: Path, settings: Settings) -> dict:
    """Restore `archive` into the data dir of `settings`; a summary of what was restored.
    BackupRefused (nothing written) when the file or the target does not fit."""
    try:
        t = Target.of(settings)
        _check_empty(t)
    except RegistryDumpError as exc:
        raise BackupRefused(str(exc)) from None
    manifest = verify(archive)
    _check_fits(manifest, t)
    try:
        return _write(archive, manifest, t)
    except BaseException:
        _undo(t)
        raise


def _check_empty(t: Target) -> None:
    for folder in t.folders:
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise BackupRefused(f"{folder} is not empty: a backup is restored into an empty or "
                                "new data dir, never over data")
    if t.registry == "sqlite" and t.sqlite.exists():
        raise BackupRefused(f"{t.sqlite} exists: the registry is restored into a new file")
    if t.registry == "postgresql":
        try:
            engine = create_engine(normalize_url(t.registry_url))
            with engine.connect() as conn:
                tables = inspect(conn).get_table_names()
            engine.dispose()
        except Exception as exc:  # noqa: BLE001 - any failure: the target is unusable
            raise BackupRefused(f"the target registry cannot be read: {exc}") from None
        if tables:
            raise BackupRefused(f"the target PostgreSQL database holds tables ({tables[0]}, "
                                "...): the registry is restored into an empty database")


def _check_fits(manifest: dict, t: Target) -> None:
    kind = (manifest.get("registry") or {}).get("kind")
    if kind != t.registry:
        raise BackupRefused(f"the backup holds a {kind} registry and the target registry is "
                            f"{t.registry} (RAGTUNE_DATABASE_URL): restore it into the same kind")
    if kind == "postgresql":
        try:
            check_postgres_tools()
        except RegistryDumpError as exc:
            raise BackupRefused(str(exc)) from None
    revision = manifest.get("alembic_revision")
    if revision is not None and revision not in known_revisions():
        raise BackupRefused(f"the backup's registry is at revision {revision}, which this "
                            "ragtune does not know: restore it with the ragtune that made it")
    if (manifest.get("vector_store") or {}).get("kind") != EDGE or t.settings.qdrant.url:
        raise BackupRefused("the backup holds an embedded Qdrant Edge store: restore it with "
                            "RAGTUNE_QDRANT__URL unset")


def _destination(name: str, t: Target, tmp: Path) -> tuple[Path, int]:
    """Where a member goes, and its mode; never outside the folder it belongs in."""
    p = check_name(name)
    if name == ADMIN_KEY:
        return t.data_dir / "admin_key", 0o600
    if name in REGISTRY.values() or name == VECTORS:
        return tmp / p.name, 0o600
    root = t.uploads if p.parts[1] == "uploads" else t.adapters
    dest = root.joinpath(*p.parts[2:])
    if not dest.resolve().is_relative_to(root.resolve()):
        raise BackupRefused(f"member {name} would land outside {root}")
    return dest, 0o644


def _copy(tar: tarfile.TarFile, info: tarfile.TarInfo, dest: Path, mode: int, want: dict) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    src, digest = tar.extractfile(info), hashlib.sha256()
    with open(dest, "xb") as out:  # x: never over a file (two members cannot share a path)
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    dest.chmod(mode)
    if digest.hexdigest() != want["sha256"]:
        raise BackupRefused(f"member {info.name} changed since the file was checked")


def _write(archive: Path, manifest: dict, t: Target) -> dict:
    for folder in t.folders:
        folder.mkdir(parents=True, exist_ok=True)
    tmp = t.data_dir / ".restore"
    tmp.mkdir()
    members, written = manifest["members"], set()
    with tarfile.open(archive, mode="r:") as tar:
        for info in tar:
            if info.name in (FORMAT, MANIFEST, MANIFEST_SHA):
                continue
            if info.name not in members or not info.isreg():
                raise BackupRefused(f"member {info.name} changed since the file was checked")
            dest, mode = _destination(info.name, t, tmp)
            _copy(tar, info, dest, mode, members[info.name])
            written.add(info.name)
    if written != set(members) - {FORMAT}:
        raise BackupRefused(f"{archive} changed since it was checked (members missing)")
    files = sum(name.startswith("files/") for name in written)
    registry = tmp / Path(manifest["registry"]["member"]).name
    if t.registry == "sqlite":
        t.sqlite.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(registry, t.sqlite)
    else:
        restore_postgres(registry, t.registry_url)
    fixed = _fix_registry(t, manifest)
    store = EdgeChunkStore(t.qdrant, t.settings.qdrant)
    try:
        with open(tmp / Path(VECTORS).name, "rb") as f:
            points = load_points(store, f, manifest["vector_store"].get("dim"))
    finally:
        store.close()
    shutil.rmtree(tmp)
    return {"registry": t.registry, "revision": manifest.get("alembic_revision"),
            "created_at": manifest.get("created_at"), "files": files, "points": points, **fixed}


def _rewrite(conn, table, column: str, keys: tuple[str, ...], forms: list[str],
             root: Path) -> int:
    c = table.c
    changes = []
    for row in conn.execute(select(*(c[k] for k in keys), c[column])).all():
        rel = relative_under(row[-1], forms)
        if rel is not None:
            changes.append({**{f"k_{k}": row[i] for i, k in enumerate(keys)},
                            "new_path": str(root.joinpath(*rel.parts))})
    if changes:
        conn.execute(
            update(table).where(*(c[k] == bindparam(f"k_{k}") for k in keys))
            .values({column: bindparam("new_path")}),
            changes,
        )
    return len(changes)


def _fix_registry(t: Target, manifest: dict) -> dict:
    registry = Registry(t.registry_url)
    try:
        registry.migrate()
        roots = manifest.get("roots") or {}
        with registry.engine.begin() as conn:
            moved = _rewrite(conn, DocumentVersion.__table__, "stored_path",
                             ("tenant_id", "document_id", "version"), roots.get("uploads", []),
                             t.uploads)
            moved += _rewrite(conn, AdapterVersion.__table__, "path",
                              ("tenant_id", "name", "version"), roots.get("adapters", []),
                              t.adapters)
            for table in (Job.__table__, Evaluation.__table__):
                conn.execute(update(table).where(table.c.state == "running")
                             .values(lease_until=_EPOCH))
            dropped = _drop_loading(conn, t)
    finally:
        registry.dispose()
    return {"paths_rewritten": moved, "loading_versions_dropped": dropped}


def _drop_loading(conn, t: Target) -> int:
    v, a = AdapterVersion.__table__, Adapter.__table__
    paths = list(conn.execute(select(v.c.path).where(v.c.state == "loading")).scalars())
    if paths:
        conn.execute(delete(v).where(v.c.state == "loading"))
        left = select(v.c.name).where(v.c.tenant_id == a.c.tenant_id, v.c.name == a.c.name)
        conn.execute(delete(a).where(a.c.current_version.is_(None), ~left.exists()))
    for path in map(Path, paths):
        if path.resolve().is_relative_to(t.adapters.resolve()) and path != t.adapters:
            shutil.rmtree(path, ignore_errors=True)
    return len(paths)


def _undo(t: Target) -> None:
    """Remove what this restore wrote: the targets were empty or absent before it."""
    for folder, existed in t.folders.items():
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.is_dir():
            for child in folder.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
    if t.registry == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{t.sqlite}{suffix}").unlink(missing_ok=True)
        return
    engine = create_engine(normalize_url(t.registry_url))
    try:
        meta = MetaData()
        with engine.begin() as conn:
            meta.reflect(conn)
            meta.drop_all(conn)
    except Exception:  # noqa: BLE001 - best effort; the restore's own error is the one to show
        pass
    finally:
        engine.dispose()
