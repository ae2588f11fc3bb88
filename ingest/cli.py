"""`ragtune worker` (stand-alone ingestion workers) and `ragtune ingest` (uploads through the
API)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from ingest.readers import TYPES


def worker(data_dir: Path | None = None) -> None:
    """Run one ingestion worker against the configured registry and Qdrant."""
    from core.observability import configure_logging
    from core.registry.db import Registry
    from core.settings import load_settings
    from ingest.embedding import shared_embedder
    from ingest.pipeline import ChunkPipeline
    from ingest.stores import open_chunk_store
    from ingest.worker import IngestWorker

    settings = load_settings(**({"data_dir": data_dir} if data_dir else {}))
    configure_logging(settings.log_level, settings.log_json)
    if settings.qdrant.url is None:
        typer.echo(
            "note: no RAGTUNE_QDRANT__URL: using the embedded store, which one process at a time "
            "can open (stop `ragtune serve` or set RAGTUNE_WORKER__EMBEDDED=false there)",
            err=True,
        )
    registry = Registry(settings.resolved_database_url)
    registry.migrate()
    embedder = shared_embedder(settings.embedding)
    store = open_chunk_store(settings.qdrant, settings.data_dir)
    store.ensure_collection(embedder.dim)
    w = IngestWorker(registry, store, ChunkPipeline(embedder, settings.chunking), settings.worker)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop.set() or w.wake.set())
    try:
        w.run_forever()
    finally:
        store.close()
        registry.dispose()


def collect(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TYPES)
            files.extend(sorted(found))
        elif p.is_file():
            files.append(p)
        else:
            raise typer.BadParameter(f"{p} does not exist")
    return files


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to upload.")],
    tenant: Annotated[str, typer.Option(help="The tenant the key must belong to.")],
    url: Annotated[str, typer.Option(envvar="RAGTUNE_URL")] = "http://127.0.0.1:8000",
    key: Annotated[str | None, typer.Option(envvar="RAGTUNE_API_KEY", help="Tenant key.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until every job has ended.")] = True,
    metadata: Annotated[str | None, typer.Option(help="JSON object for every file.")] = None,
) -> None:
    """Upload documents into a tenant's knowledge base, with a progress bar."""
    import httpx
    from tqdm import tqdm

    if not key:
        raise typer.BadParameter("a tenant key is needed: --key or RAGTUNE_API_KEY")
    files = collect(paths)
    if not files:
        raise typer.BadParameter("no supported files found (" + ", ".join(sorted(TYPES)) + ")")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        me = client.get("/v1/me")
        if me.status_code != 200:
            _fail(me)
        if me.json()["id"] != tenant:
            typer.echo(f"this key belongs to tenant '{me.json()['id']}', not '{tenant}'", err=True)
            raise typer.Exit(2)
        jobs, failed = [], 0
        for f in tqdm(files, desc="upload", unit="file"):
            data = {"metadata": metadata} if metadata else {}
            r = client.post("/v1/documents", files={"file": (f.name, f.read_bytes())}, data=data)
            if r.status_code != 202:
                failed += 1
                tqdm.write(f"{f}: error {r.status_code}: {_message(r)}")
                continue
            jobs.append(r.json()["job_id"])
        if wait and jobs:
            failed += _wait(client, jobs)
    typer.echo(f"{len(files) - failed} of {len(files)} files indexed" if wait else
               f"{len(jobs)} jobs queued")
    if failed:
        raise typer.Exit(1)


def _wait(client, jobs: list[str], timeout_s: float = 3600.0) -> int:
    """Poll the jobs until each has ended; a job the server cannot report, or one still
    running after `timeout_s`, counts as failed. A server that cannot be reached for a while
    (restarting) is asked again until the deadline."""
    import httpx
    from tqdm import tqdm

    pending, failed = set(jobs), 0
    deadline = time.monotonic() + timeout_s
    with tqdm(total=len(jobs), desc="index", unit="job") as bar:
        while pending:
            if time.monotonic() > deadline:
                tqdm.write(f"{len(pending)} job(s) still not done after {timeout_s:.0f}s")
                return failed + len(pending)
            for job_id in list(pending):
                try:
                    r = client.get(f"/v1/jobs/{job_id}")
                except httpx.TransportError as exc:
                    # The server is restarting (refused, cut off, slow): its jobs are durable,
                    # ask again.
                    tqdm.write(f"job {job_id}: {type(exc).__name__}: {exc}; asking again")
                    break
                if r.status_code != 200:
                    if r.status_code < 500:  # 5xx: the server is busy or restarting, ask again
                        pending.discard(job_id)
                        bar.update(1)
                        failed += 1
                        tqdm.write(f"job {job_id}: error {r.status_code}: {_message(r)}")
                    continue
                body = r.json()
                if body["state"] in ("succeeded", "failed"):
                    pending.discard(job_id)
                    bar.update(1)
                    if body["state"] == "failed":
                        failed += 1
                        tqdm.write(f"job {job_id} failed: {body['error']}")
            if pending:
                time.sleep(0.5)
    return failed


def _message(resp) -> str:
    """The error message of a response in the API's error shape, else its text (a proxy's
    HTML page, say)."""
    try:
        return resp.json()["error"]["message"]
    except Exception:  # noqa: BLE001
        return resp.text[:300]


def _fail(resp) -> None:
    typer.echo(f"error {resp.status_code}: {_message(resp)}", err=True)
    raise typer.Exit(1)
