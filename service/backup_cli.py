"""`ragtune backup create | restore | verify`: one file holding a data dir, made while `ragtune
serve` runs (service/backup.py says how it stays consistent), restored into an empty data dir
(service/restore.py), checked byte for byte before anything is written
(service/backup_format.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import httpx
import typer

from service import policy_cli

backup_app = typer.Typer(
    no_args_is_help=True,
    help="Backups: one file, made while serving, restored into an empty data dir.",
)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (RAGTUNE_DATA_DIR).")]
ServerUrl = Annotated[
    str | None,
    typer.Option("--url", envvar="RAGTUNE_URL",
                 help="The server holding the data dir (default: RAGTUNE_HOST:RAGTUNE_PORT)."),
]
AdminKey = Annotated[
    str | None,
    typer.Option(envvar="RAGTUNE_ADMIN_KEY",
                 help="The server's admin key (default: <data dir>/admin_key)."),
]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _settings(data_dir: Path | None):
    from core.settings import load_settings

    return load_settings(**({"data_dir": data_dir} if data_dir is not None else {}))


@backup_app.command("create")
def create(
    out: Annotated[Path, typer.Option("--out", help="The backup file to write (new).")],
    data_dir: DataDir = None,
    url: ServerUrl = None,
    admin_key: AdminKey = None,
) -> None:
    """Back up a data dir: registry, vector store, uploads, adapters, admin key. Consistent
    while `ragtune serve` runs: the server holding the data dir makes it."""
    from core.errors import BackupError
    from ingest.store_edge import held_by_another
    from ingest.stores import open_chunk_store
    from service.backup import UNSUPPORTED, create_backup

    settings = _settings(data_dir)
    out = out.absolute()
    if out.exists():
        _fail(f"{out} exists: name a new file")
    if not out.parent.is_dir():
        _fail(f"{out.parent} is not a folder")
    if settings.qdrant.url:
        _fail(UNSUPPORTED)
    if held_by_another(settings.qdrant.resolved_path(settings.data_dir)):
        # Only the server holding the store can read it consistently: it makes the backup.
        _report(out, _from_server(settings, out, url, admin_key), "made by the running server")
        return
    try:
        store = open_chunk_store(settings.qdrant, settings.data_dir)
    except Exception as exc:  # noqa: BLE001 - shown as it is
        _fail(f"the vector store cannot be opened: {exc}")
    try:
        manifest = create_backup(settings, store, out)
    except BackupError as exc:
        _fail(exc.message)
    finally:
        store.close()
    _report(out, manifest, "no server running")


def _from_server(settings, out: Path, url: str | None, admin_key: str | None) -> dict:
    from service.backup_format import BackupRefused, verify

    base = url or f"http://{settings.host}:{settings.port}"
    key = admin_key or (settings.admin_key.get_secret_value() if settings.admin_key else None)
    key_file = settings.data_dir / "admin_key"
    if key is None and key_file.is_file():
        key = key_file.read_text().strip()
    if not key:
        _fail("the data dir is held by a running server, and there is no admin key to ask it "
              "for the backup: pass --admin-key or set RAGTUNE_ADMIN_KEY")
    partial = out.with_name(out.name + ".partial")
    try:
        # No read timeout: the server sends nothing until the whole file is written.
        client = policy_cli._CLIENT or httpx.Client(base_url=base,
                                                    timeout=httpx.Timeout(30, read=None))
        with client.stream(
            "POST", "/v1/admin/backup", headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            if resp.status_code != 200:
                resp.read()
                policy_cli._check(resp)
            with open(partial, "xb") as f:
                for chunk in resp.iter_bytes(1 << 20):
                    f.write(chunk)
        manifest = verify(partial)  # what came over the wire is checked like any backup
    except httpx.ConnectError as exc:
        partial.unlink(missing_ok=True)
        _fail(f"the vector store in {settings.data_dir} is held by another process, and no "
              f"ragtune server answers at {base} ({exc}): pass --url")
    except httpx.TransportError as exc:
        partial.unlink(missing_ok=True)
        _fail(f"the backup's transfer from {base} failed: {exc}")
    except BackupRefused as exc:
        partial.unlink(missing_ok=True)
        _fail(f"the server's backup arrived damaged: {exc}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    served = manifest.get("data_dir") or ""
    if os.path.realpath(served) != os.path.realpath(settings.data_dir):
        partial.unlink(missing_ok=True)
        _fail(f"the server at {base} serves {served}, not {settings.data_dir}: pass the --url "
              f"of the server holding {settings.data_dir}")
    partial.rename(out)
    return manifest


def _report(out: Path, manifest: dict, how: str) -> None:
    files = sum(name.startswith("files/") for name in manifest["members"])
    typer.echo(f"backup written to {out} ({how}): {out.stat().st_size} bytes, registry "
               f"{manifest['registry']['kind']} at revision {manifest['alembic_revision']}, "
               f"{manifest['vector_store']['points']} points, {files} files")


@backup_app.command("restore")
def restore(
    file: Annotated[Path, typer.Argument(help="The backup file.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The new, empty data folder.")],
) -> None:
    """Restore a backup into an empty (or new) data dir. The whole file is checked first; a
    damaged or foreign file is refused and nothing is written."""
    from service.backup_format import BackupRefused
    from service.restore import restore as run_restore

    try:
        summary = run_restore(file, _settings(data_dir))
    except BackupRefused as exc:
        _fail(f"{exc}; nothing was restored")
    typer.echo(f"restored {file} into {data_dir}: registry {summary['registry']} (made at "
               f"{summary['created_at']}), {summary['points']} points, {summary['files']} files, "
               f"{summary['paths_rewritten']} paths moved to the new data dir")
    typer.echo(f"start it with: ragtune serve --data-dir {data_dir}")


@backup_app.command("verify")
def verify_file(file: Annotated[Path, typer.Argument(help="The backup file.")]) -> None:
    """Check a backup file byte for byte, without restoring it."""
    from service.backup_format import BackupRefused, verify

    try:
        manifest = verify(file)
    except BackupRefused as exc:
        _fail(str(exc))
    typer.echo(f"{file}: a sound ragtune backup made {manifest['created_at']} by ragtune "
               f"{manifest['ragtune_version']}, {len(manifest['members'])} members, registry "
               f"{manifest['registry']['kind']} at revision {manifest['alembic_revision']}")
