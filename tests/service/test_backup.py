"""Backups that restore: `ragtune backup create` while the server runs and a tenant uploads in a
loop, `ragtune backup restore` into an empty dir, and a new server on it (the original data dir
deleted first, so nothing can be read from there) answers the same questions with the same
citations, serves the same adapter version from its new place, and finishes the uploads that
were in flight. A damaged or foreign file, and a non-empty target, are refused with a message,
a non-zero exit and nothing written."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service import policy_cli
from service.app import create_app
from service.cli import app as cli
from tests.helpers import adapter_files as f
from tests.helpers.adapter_service import archive, register
from tests.helpers.api import ask, indexed, upload
from tests.helpers.app import ADMIN_KEY, make_settings, new_tenant
from tests.helpers.fake_engine import FakeEngine

HANDBOOK_V1 = "Expense reports are due on the 5th of each month, sent to the finance desk."
HANDBOOK_V2 = "Expense reports are due on the 10th of each month and need a scanned receipt."
POLICY = "Remote work is allowed three days per week with the approval of your manager."
QUESTIONS = ["When are expense reports due?", "How many days of remote work are allowed?"]


@dataclass
class Source:
    backup: Path
    output: str  # what `backup create` printed
    answers: dict[str, list[tuple]]  # question -> citations (document, chunk, text, score)
    searches: dict[str, list[tuple]]  # question -> vector store hits (file, text, score)
    store: str  # the vector store's id
    adapter: dict  # GET /v1/adapters/warelang
    adapter_answer: str
    documents: list[tuple]  # (document_id, current_version, chunks)
    busy_uploads: int  # the load's accepted uploads before it stopped
    acme: dict[str, str]  # the tenants' keys, made before the backup
    busy: dict[str, str]


def settings_for(data_dir: Path, engine: FakeEngine):
    return make_settings(data_dir, [engine.url], model_dir=f.base_model_dir(),
                         adapters={"retire_grace_s": 0.05, "reconcile_interval_s": 0.2})


def cli_run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["backup", *args], env=env or {})


def citations(body: dict) -> list[tuple]:
    return [(c["document_id"], c["chunk_id"], c["text"], round(c["score"], 5))
            for c in body["citations"]]


def observe(client, acme, store_id) -> dict:
    """What the tests compare before and after: answers, searches, adapter, documents."""
    answers = {q: citations(ask(client, acme, q, route="rag")) for q in QUESTIONS}
    searches = {}
    for q in QUESTIONS:
        r = client.post(f"/v1/vector_stores/{store_id}/search", headers=acme, json={"query": q})
        assert r.status_code == 200, r.text
        searches[q] = [(h["file_id"], h["content"][0]["text"], round(h["score"], 5))
                       for h in r.json()["data"]]
    adapter = client.get("/v1/adapters/warelang", headers=acme).json()
    answer = ask(client, acme, QUESTIONS[0], model="warelang")
    docs = client.get("/v1/documents", headers=acme).json()["data"]
    return {"answers": answers, "searches": searches, "adapter": adapter,
            "adapter_answer": (answer["route"]["adapter"], answer["choices"][0]["message"]),
            "documents": sorted((d["document_id"], d["current_version"], d["chunks"])
                                for d in docs)}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backup")
    engine = FakeEngine().start()
    stop, accepted = threading.Event(), []
    try:
        with TestClient(create_app(settings_for(tmp / "a", engine))) as client:
            _, acme = new_tenant(client, tenant_id="acme")
            _, busy = new_tenant(client, tenant_id="busy")
            indexed(client, acme, "handbook.txt", HANDBOOK_V1.encode(), document_id="handbook")
            indexed(client, acme, "handbook.txt", HANDBOOK_V2.encode(), document_id="handbook")
            indexed(client, acme, "policy.txt", POLICY.encode())
            for rank, name in ((8, "v1.tgz"), (4, "v2.tgz")):
                r = register(client, acme, archive(tmp, rank=rank, name=name))
                assert r.status_code == 201, r.text
            store_id = client.post("/v1/vector_stores", headers=acme, json={
                "name": "kb", "file_ids": ["handbook", "policy"]}).json()["id"]

            def load() -> None:
                i = 0
                while not stop.is_set():
                    text = f"Busy note {i}: crate {i} goes to loading dock {i % 7}."
                    if upload(client, busy, f"note-{i}.txt", text.encode()).status_code == 202:
                        accepted.append(i)
                    i += 1
                    stop.wait(0.02)  # a steady stream, not a flood the worker never catches up on

            loader = threading.Thread(target=load)
            loader.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (len(accepted) < 3 or not any(
                    d["current_version"] for d in
                    client.get("/v1/documents", headers=busy).json()["data"])):
                time.sleep(0.05)  # some of busy's uploads indexed, more coming
            policy_cli._CLIENT = client  # the CLI's HTTP calls go to this app
            try:
                made = cli_run("create", "--out", str(tmp / "backup.tar"),
                               "--data-dir", str(tmp / "a"), "--admin-key", ADMIN_KEY)
            finally:
                policy_cli._CLIENT = None
                stop.set()
                loader.join()
            assert made.exit_code == 0, made.output
            seen = observe(client, acme, store_id)
    finally:
        stop.set()
        engine.stop()
    shutil.rmtree(tmp / "a")  # the restored server must find everything in its own dir
    return Source(tmp / "backup.tar", made.output, seen["answers"], seen["searches"], store_id,
                  seen["adapter"], seen["adapter_answer"], seen["documents"], len(accepted),
                  acme, busy)


def test_a_backup_made_while_serving_restores_the_same_service(source: Source, tmp_path):
    assert "made by the running server" in source.output, source.output
    assert source.busy_uploads >= 3
    restored = cli_run("restore", str(source.backup), "--data-dir", str(tmp_path / "b"))
    assert restored.exit_code == 0, restored.output
    assert "ragtune serve --data-dir" in restored.output

    engine = FakeEngine().start()
    try:
        settings = settings_for(tmp_path / "b", engine)
        with TestClient(create_app(settings)) as client:
            seen = observe(client, source.acme, source.store)  # the keys work as before
            assert seen["answers"] == source.answers
            assert any("10th" in c[2] for c in seen["answers"][QUESTIONS[0]])  # version 2
            assert seen["searches"] == source.searches
            assert seen["documents"] == source.documents
            assert ("handbook", 2, 1) in seen["documents"]
            assert _without_replicas(seen["adapter"]) == _without_replicas(source.adapter)
            statuses = {v["version"]: v["status"] for v in seen["adapter"]["versions"]}
            assert statuses == {1: "retired", 2: "ready"}
            assert seen["adapter_answer"] == source.adapter_answer
            route, message = seen["adapter_answer"]
            assert route == "warelang@2" and "[acme--warelang--v2]" in message["content"]
            # The engine loaded it from the restored dir: the registry's paths were moved.
            assert engine.loras["acme--warelang--v2"].startswith(str(tmp_path / "b"))
            original = client.get("/v1/files/handbook/content", headers=source.acme)
            assert original.content == HANDBOOK_V2.encode()
            _busy_uploads_finish(client, source.busy)
    finally:
        engine.stop()


def _without_replicas(adapter: dict) -> dict:
    """The adapter's view but which engine replicas hold each version (each server's own)."""
    versions = [{k: v for k, v in version.items() if k != "replicas"}
                for version in adapter["versions"]]
    return {**adapter, "versions": versions}


def _busy_uploads_finish(client, busy) -> None:
    """Uploads in flight during the backup: each restored one is indexed by the restored
    worker, and every current version has exactly its chunks in the store."""
    deadline = time.monotonic() + 60
    while True:
        docs = client.get("/v1/documents?limit=100", headers=busy).json()["data"]
        if all(d["status"] == "current" for d in docs) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert docs and all(d["status"] == "current" for d in docs), docs
    store = client.app.state.ragtune.store
    for d in docs:
        assert store.count("busy", d["document_id"], d["current_version"]) == d["chunks"] > 0
        content = client.get(f"/v1/files/{d['document_id']}/content", headers=busy)
        assert content.status_code == 200 and content.content.startswith(b"Busy note")


def _flip(offset_of):
    def damage(data: bytes, path: Path) -> bytes:
        i = offset_of(data, path)
        return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:]
    return damage


def _member_offset(name: str, extra: int):
    def at(data: bytes, path: Path) -> int:
        with tarfile.open(path) as tar:
            info = tar.getmember(name)
        return (info.offset if extra < 0 else info.offset_data) + abs(extra)
    return at


def _foreign_tar(data: bytes, path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("notes.txt", "data/random.bin"):
            body = os.urandom(300)
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _zip(data: bytes, path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("manifest.json", '{"format": "ragtune-backup", "version": 1}')
    return buf.getvalue()


def _escaping(data: bytes, path: Path) -> bytes:
    """A tar that looks like a backup and holds a path out of the data dir."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in (("FORMAT", b"ragtune-backup 1\n"),
                           ("files/uploads/../../escaped.txt", b"out")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _link(data: bytes, path: Path) -> bytes:
    """A tar that looks like a backup and holds a symbolic link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("FORMAT")
        info.size = len(b"ragtune-backup 1\n")
        tar.addfile(info, io.BytesIO(b"ragtune-backup 1\n"))
        link = tarfile.TarInfo("files/adapters/t/a/v1/adapter_config.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return buf.getvalue()


# (case, how the file is made from the good backup, words the refusal says)
REFUSED = [
    ("truncated to half", lambda d, p: d[: len(d) // 2], "damaged"),
    ("truncated by one block", lambda d, p: d[:-512], "damaged"),
    ("a byte flipped in the middle", _flip(lambda d, p: len(d) // 2), "damaged"),
    ("a byte flipped in the registry", _flip(_member_offset("registry/registry.db", 100)),
     "damaged"),
    ("a byte flipped in a header", _flip(_member_offset("vectors/points.jsonl", -100)),
     "damaged"),
    ("a byte flipped in the manifest", _flip(_member_offset("manifest.json", 40)), "damaged"),
    ("bytes appended", lambda d, p: d + b"\0" * 10240, "damaged"),
    ("a tar of random files", _foreign_tar, "not a ragtune backup"),
    ("a zip", _zip, "not a ragtune backup"),
    ("random bytes", lambda d, p: os.urandom(50_000), "not a ragtune backup"),
    ("an empty file", lambda d, p: b"", "not a ragtune backup"),
    ("the backup gzipped", lambda d, p: gzip.compress(d, 1), "not a ragtune backup"),
    ("a path escaping the data dir", _escaping, "is not one a ragtune backup holds"),
    ("a link", _link, "is not a regular file"),
]


@pytest.mark.parametrize("case,make,words", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_damaged_or_foreign_file_is_refused_and_nothing_written(source, tmp_path, case, make,
                                                                   words):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(make(source.backup.read_bytes(), source.backup))
    target = tmp_path / "target"
    target.mkdir()  # an empty data dir: it must stay so
    result = cli_run("restore", str(bad), "--data-dir", str(target))
    assert result.exit_code == 1, result.output
    assert words in result.output and "nothing was restored" in result.output, result.output
    assert list(target.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()
    checked = cli_run("verify", str(bad))
    assert checked.exit_code == 1 and words in checked.output, checked.output


def test_restore_refuses_a_data_dir_that_is_not_empty(source, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = cli_run("restore", str(source.backup), "--data-dir", str(tmp_path))
    assert result.exit_code == 1 and "is not empty" in result.output, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_create_refuses_to_overwrite_a_file(source, tmp_path):
    result = cli_run("create", "--out", str(source.backup), "--data-dir", str(tmp_path))
    assert result.exit_code == 1 and "exists" in result.output, result.output
