"""The app serving adapters against fake engines, for the adapters API tests: a client, an upload
archive of a valid (or broken) adapter, registering it, and the files left under the adapter
root."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import adapter_files as f
from tests.helpers.app import make_settings
from tests.helpers.fake_engine import FakeEngine

EXAMPLES = ["Write a pick rule for zone heron", "Translate this into WARELANG"]


def make_client(tmp_path: Path, engines: list[FakeEngine], **adapters) -> TestClient:
    settings = make_settings(
        tmp_path,
        [e.url for e in engines],
        model_dir=f.base_model_dir(),
        adapters={"retire_grace_s": 0.05, "reconcile_interval_s": 0.2, **adapters},
    )
    return TestClient(create_app(settings))


def archive(tmp_path: Path, rank: int = 8, mutate=None, name: str = "a.tar.gz") -> bytes:
    folder = f.valid_adapter(tmp_path / f"src-{name}-{time.monotonic_ns()}", rank=rank)
    if mutate is not None:
        mutate(folder)
    return f.tar_gz_of(folder, tmp_path / name).read_bytes()


def register(client, headers, data: bytes, name="warelang", **fields):
    return client.post(
        "/v1/adapters",
        headers=headers,
        files={"file": ("adapter.tar.gz", data, "application/gzip")},
        data={"name": name, "description": "WARELANG rules", "examples": json.dumps(EXAMPLES),
              **fields},
    )


def stored_files(client) -> list[Path]:
    """The files under the adapter root; os.walk, not rglob: a delete may be removing the
    folders while this looks (rglob raises on a folder gone mid-scan, os.walk skips it)."""
    root = client.app.state.ragtune.settings.resolved_adapters_root
    return sorted(Path(d) / n for d, _, names in os.walk(root) for n in names)
