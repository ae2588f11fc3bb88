"""Making a backup: the registry, the embedded vector store, the uploads, the adapters and the
admin key in one file (service/backup_format.py), consistent while `ragtune serve` runs and
writes.

Where it runs. Qdrant Edge is open inside the serving process, which holds its folder (a second
open is refused: "Can't init WAL: WouldBlock") and changes its files in place, so no other
process can read it consistently. `ragtune backup create` therefore first tries to open the
store itself: when it can, no server runs and the CLI makes the backup; when the folder is held,
it asks the server that holds it (`POST /v1/admin/backup`, admin key), which makes the backup in
its own process and sends the file back. Both run `create_backup` below. A Qdrant server
(`qdrant.url`) is not backed up here (`backup_unsupported`): use Qdrant's own snapshots.

Consistency, in two steps.
1. Registry and vector store: one point in time. While `EdgeChunkStore.exclusive()` holds the
   store's writes back (searches go on), the registry is copied (SQLite: its online backup API
   on a connection of its own; PostgreSQL: pg_dump of a snapshot exported by the transaction
   that also reads the checks of step 2) and the points are dumped. The worker upserts a
   version's points before it switches the version current, and deletes them only after the
   version is superseded or its document deleted; so every version the copied registry calls
   current had all its points written before the hold began, and none deleted before the hold
   ended. Points without a current row (a version being indexed, a superseded one awaiting
   deletion) are extra, hidden from readers as on the server, and the restored worker finishes
   or deletes them as the original would have.
2. Files after the registry. A file is written before any row names it as usable (an upload's
   files before its versions are inserted; an adapter's folder before its version is ready) and
   removed only after that row is gone (a document's purge, an adapter's drop or discard, a
   tenant's removal). So every file a copied row needs existed when the registry was copied,
   and can be missing when it is read only if its row was deleted after the copy. After reading
   the files, every file a copied row needs is looked up in the archive; if a deletion slipped
   in between, the attempt is thrown away and made again (up to ATTEMPTS times). Files no
   copied row names (an upload whose rows were not yet committed) are harmless extras.
Rows that need files: every version of a live document (its sections and its original), every
ready or retired version of a live adapter (its folder). Not a document or adapter being
deleted (the restored server's sweep finishes the deletion), nor a rejected version (its files
go by design), nor one still loading (a registration in flight; the restore drops it, as a
crash would have).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath

from sqlalchemy import and_, create_engine, inspect, select, text

from adapters.peft_files import CONFIG_NAME
from core.errors import BackupError
from core.registry.db import normalize_url
from core.registry.dump import (
    RegistryDumpError,
    backup_sqlite,
    dump_postgres,
    head_revision,
    registry_kind,
    revision_of,
    sqlite_file,
)
from core.registry.models import Adapter, AdapterVersion, Document, DocumentVersion
from core.settings import Settings
from ingest.store_edge import EdgeChunkStore
from ingest.stored_files import original_of
from ingest.vector_dump import dump_points
from service.backup_format import (
    ADMIN_KEY,
    REGISTRY,
    VECTORS,
    ArchiveWriter,
    BackupRefused,
)

log = logging.getLogger("ragtune.backup")

ATTEMPTS = 3
EDGE = "qdrant-edge"
UNSUPPORTED = (
    "the vector store is a Qdrant server (qdrant.url): `ragtune backup` captures the embedded "
    "store only; back the collection up with Qdrant's own snapshots"
)
_ONE_AT_A_TIME = threading.Lock()  # per process: two backups would only compete for the disk


def ragtune_version() -> str:
    try:
        return metadata.version("ragtune")
    except metadata.PackageNotFoundError:
        return "unknown"


def file_roots(settings: Settings) -> dict[str, Path]:
    """The folders whose files a backup holds, by the name their members go under."""
    return {"uploads": settings.data_dir / "uploads", "adapters": settings.resolved_adapters_root}


def root_forms(root: Path) -> list[str]:
    """The spellings a path the registry stored may begin with (as configured, absolute,
    with links resolved)."""
    return list(dict.fromkeys([str(root), os.path.abspath(root), os.path.realpath(root)]))


def relative_under(path: str, forms: list[str]) -> PurePosixPath | None:
    """`path` relative to the root spelled by one of `forms`; None when it is under none."""
    for form in forms:
        try:
            rel = PurePosixPath(path).relative_to(form)
        except ValueError:
            continue
        if rel.parts and ".." not in rel.parts:
            return rel
    return None


@dataclass
class RegistryCopy:
    kind: str  # sqlite | postgresql
    file: Path
    revision: str | None
    uploads: list[str]  # the stored paths rows need (step 2 of the module doc)
    adapters: list[str]  # the adapter folders rows need


def needed_paths(conn) -> tuple[list[str], list[str]]:
    """(sections files, adapter folders) the registry's rows need; a table a registry at an
    older revision lacks needs nothing."""
    tables = set(inspect(conn).get_table_names())
    uploads, folders = [], []
    if {"documents", "document_versions"} <= tables:
        d, v = Document.__table__.c, DocumentVersion.__table__.c
        uploads = list(conn.execute(
            select(v.stored_path)
            .join(Document.__table__, and_(d.tenant_id == v.tenant_id, d.id == v.document_id))
            .where(d.state == "live")
        ).scalars())
    if {"adapters", "adapter_versions"} <= tables:
        a, v = Adapter.__table__.c, AdapterVersion.__table__.c
        folders = list(conn.execute(
            select(v.path)
            .join(Adapter.__table__, and_(a.tenant_id == v.tenant_id, a.name == v.name))
            .where(a.state == "live", v.state.in_(("ready", "retired")))
        ).scalars())
    return uploads, folders


def copy_registry(url: str, tmp: Path) -> RegistryCopy:
    try:
        kind = registry_kind(url)
        dest = tmp / PurePosixPath(REGISTRY[kind]).name
        if kind == "sqlite":
            backup_sqlite(sqlite_file(url), dest)
            engine = create_engine(f"sqlite:///{dest}")  # the needed paths: read in the copy
        else:
            engine = create_engine(normalize_url(url), isolation_level="REPEATABLE READ")
        try:
            with engine.connect() as conn, conn.begin():
                if kind == "postgresql":
                    # pg_dump dumps the very snapshot this transaction reads the paths in.
                    snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
                copy = RegistryCopy(kind, dest, revision_of(conn), *needed_paths(conn))
                if kind == "postgresql":
                    dump_postgres(url, dest, snapshot)
            return copy
        finally:
            engine.dispose()
    except RegistryDumpError as exc:
        raise BackupError(f"the registry could not be copied: {exc}") from None


class _Moved(Exception):
    """Files a copied row needs were deleted before they were read (module doc, step 2)."""


def _files(root: Path) -> Iterator[tuple[Path, PurePosixPath]]:
    """Every regular file under `root` (no links, nothing special), but those of a top-level
    hidden folder: adapter staging (`.incoming`) holds registrations in flight."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if here != root or not d.startswith("."))
        for name in sorted(filenames):
            path = here / name
            try:
                regular = stat.S_ISREG(path.lstat().st_mode)
            except FileNotFoundError:
                continue  # deleted meanwhile: step 2 of the module doc
            if regular:
                yield path, PurePosixPath(path.relative_to(root).as_posix())


def _required(copy: RegistryCopy, forms: dict[str, list[str]]) -> list[str]:
    wanted = [("uploads", p) for s in copy.uploads for p in (s, str(original_of(s)))]
    wanted += [("adapters", str(PurePosixPath(p) / CONFIG_NAME)) for p in copy.adapters]
    members = []
    for label, path in wanted:
        rel = relative_under(path, forms[label])
        if rel is None:
            raise BackupError(f"the registry names {path}, which is not under the {label} "
                              f"folder ({forms[label][0]}): it cannot be backed up")
        members.append(f"files/{label}/{rel}")
    return members


def _attempt(settings: Settings, store: EdgeChunkStore, out: Path) -> dict:
    roots = file_roots(settings)
    forms = {label: root_forms(root) for label, root in roots.items()}
    with tempfile.TemporaryDirectory(prefix=".ragtune-backup-", dir=out.parent) as tmp:
        points = Path(tmp) / "points.jsonl"
        with store.exclusive() as shard:  # step 1: the registry and the points, one moment
            copy = copy_registry(settings.resolved_database_url, Path(tmp))
            with open(points, "wb") as f:
                vectors = dump_points(shard, f)
        writer = ArchiveWriter(out)
        try:
            writer.add_file(REGISTRY[copy.kind], copy.file)
            writer.add_file(VECTORS, points)
            writer.add_file(ADMIN_KEY, settings.data_dir / "admin_key", mode=0o600)
            for label, root in roots.items():  # step 2: the files, after the registry
                for path, rel in _files(root):
                    try:
                        writer.add_file(f"files/{label}/{rel}", path)
                    except BackupRefused:
                        log.warning("backup: skipped %s (a name the format cannot hold)", path)
            missing = [m for m in _required(copy, forms) if m not in writer.members]
            if missing:
                raise _Moved(f"{len(missing)} files, e.g. {missing[0]}")
            return writer.finish({
                "ragtune_version": ragtune_version(),
                "created_at": datetime.now(UTC).isoformat(),
                "alembic_revision": copy.revision,
                "alembic_head": head_revision(),
                "registry": {"kind": copy.kind, "member": REGISTRY[copy.kind]},
                "vector_store": {"kind": EDGE, "member": VECTORS, **vectors},
                "roots": forms,
                "data_dir": os.path.abspath(settings.data_dir),
            })
        except BaseException:
            writer.abort()
            raise


def create_backup(settings: Settings, store, out: Path) -> dict:
    """Write the backup of the data `settings` name to the new file `out`, reading the vector
    store through `store` (the open one: the server's, or the CLI's); the manifest."""
    if not isinstance(store, EdgeChunkStore):
        raise BackupError(UNSUPPORTED, code="backup_unsupported", status=501)
    with _ONE_AT_A_TIME:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                manifest = _attempt(settings, store, out)
            except _Moved as moved:
                log.warning("backup attempt %d: %s deleted while read; again", attempt, moved)
                last = moved
                continue
            log.info("backup written to %s: %d members, %d points", out,
                     len(manifest["members"]), manifest["vector_store"]["points"])
            return manifest
    raise BackupError(f"files the registry names were deleted while the backup read them, "
                      f"{ATTEMPTS} times ({last}); try again when fewer deletions run",
                      code="backup_busy", status=503)


def backup_to_temp(settings: Settings, store) -> tuple[Path, Callable[[], None]]:
    """The server's side: a backup in a new private folder of the data dir, and the function
    that removes it (once the file is sent)."""
    folder = Path(tempfile.mkdtemp(prefix=".ragtune-backup-", dir=settings.data_dir))
    path = folder / f"ragtune-backup-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.tar"
    try:
        create_backup(settings, store, path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return path, lambda: shutil.rmtree(folder, ignore_errors=True)
