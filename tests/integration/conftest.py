"""One real `ragtune serve` (which starts and supervises the real vLLM) per test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.base_model import prepare_model
from tests.conftest import ADMIN_KEY, ROOT

ENGINE_PYTHON = Path(os.environ.get("RAGTUNE_ENGINE__PYTHON", ROOT / ".venv-engine/bin/python"))
RAGTUNE_BIN = Path(sys.executable).parent / "ragtune"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies awaiting a reaper excluded:
    in a container PID 1 may be slow to reap them)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


@dataclass
class Server:
    url: str
    engine_url: str
    admin_key: str
    proc: subprocess.Popen
    data_dir: Path
    log_path: Path

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def new_tenant(self, tenant_id: str, policy: dict | None = None) -> str:
        r = httpx.post(
            f"{self.url}/v1/tenants",
            json={"id": tenant_id, "policy": policy or {}},
            headers=self.admin(),
        )
        assert r.status_code == 201, r.text
        return r.json()["api_key"]

    def engine_pid(self) -> int | None:
        """The supervised vLLM child (the ragtune_engine launcher), if any."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for pid in children.read_text().split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"ragtune_engine.launch" in cmd:
                return int(pid)
        return None

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ragtune serve exited; log:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"ragtune not ready after {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        engine_log = self.data_dir / "logs" / "engine.log"
        if engine_log.exists():
            text += "\n--- engine.log ---\n" + engine_log.read_text(errors="replace")[-n:]
        return text[-2 * n :]


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    target = Path(os.environ.get("RAGTUNE_TEST_MODEL_DIR", ROOT / ".data" / "models" / "base"))
    return prepare_model(target)


@pytest.fixture(scope="session")
def server(base_model_dir, tmp_path_factory) -> Iterator[Server]:
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"no engine environment at {ENGINE_PYTHON}: run `make install`")
    data_dir = tmp_path_factory.mktemp("ragtune-serve")
    port, engine_port = free_port(), free_port()
    env = {
        **os.environ,
        "RAGTUNE_ADMIN_KEY": ADMIN_KEY,
        "RAGTUNE_MODEL_DIR": str(base_model_dir),
        "RAGTUNE_ENGINE__PORT": str(engine_port),
        "RAGTUNE_ENGINE__PYTHON": str(ENGINE_PYTHON),
        "RAGTUNE_ENGINE__HEALTH_INTERVAL_S": "0.5",
        "HF_HUB_OFFLINE": "1",
    }
    log_path = data_dir / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(RAGTUNE_BIN), "serve", "--port", str(port), "--data-dir", str(data_dir)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    srv = Server(
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{engine_port}",
        ADMIN_KEY,
        proc,
        data_dir,
        log_path,
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
