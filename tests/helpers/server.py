"""The one way tests and benchmarks run `ragtune` as a child process: `ragtune serve` on a free
port, waited for until /readyz answers 200 (the log, and its engine's, in the error when it does
not), stopped with SIGTERM and then SIGKILL; `ragtune worker` and other commands the same way.

Imports nothing of the product: bench scripts use it without loading the app.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.helpers.ports import free_port, port_closes

REPO = Path(__file__).resolve().parents[2]
# The engine's environment, as `make install` makes it (or as RAGTUNE_ENGINE__PYTHON names it).
ENGINE_PYTHON = Path(os.environ.get("RAGTUNE_ENGINE__PYTHON", REPO / ".venv-engine/bin/python"))
PROGRESS_EVERY_S = 30


def ragtune_command() -> list[str]:
    """The `ragtune` console script of this interpreter's environment, or the module without it.
    Not resolved: the venv's python is a symlink, and `ragtune` sits beside the link."""
    exe = Path(sys.executable).with_name("ragtune")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "service.cli"]


def _quiet(_message: str) -> None:
    pass


class NotReady(RuntimeError):
    """The process exited or did not come up in time; the message holds its log."""


class RagtuneProcess:
    """`ragtune <args>` with its output in `log_path`. With `new_session` it runs in a session of
    its own, so a Ctrl-C in the terminal reaches only the caller, which then stops it."""

    def __init__(
        self, args: list[str], *, env: dict[str, str], log_path: Path, new_session: bool = False
    ) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.new_session = new_session
        self.proc: subprocess.Popen | None = None

    @property
    def what(self) -> str:
        return f"ragtune {self.args[0]}"

    def start(self) -> RagtuneProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*ragtune_command(), *self.args],
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
            )
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return f"--- end of {self.log_path} ---\n" + self.log_text()[-chars:]

    def wait_for(
        self,
        probe: Callable[[], bool],
        what: str,
        timeout_s: float,
        progress: Callable[[str], None] = _quiet,
    ) -> float:
        """Seconds until `probe()` held; NotReady (with the log) if the process exits first or
        the time runs out. A probe raising an HTTP or socket error counts as not yet."""
        started = time.monotonic()
        next_note = started + PROGRESS_EVERY_S
        while True:
            code = self.proc.poll()
            if code is not None:
                raise NotReady(f"{what} exited with code {code} while starting;\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError, OSError):
                if probe():
                    return time.monotonic() - started
            now = time.monotonic()
            if now - started > timeout_s:
                raise NotReady(f"{what} was not ready after {timeout_s:.0f}s;\n{self.log_tail()}")
            if now >= next_note:
                progress(f"  ... still starting ({now - started:.0f}s)")
                next_note = now + PROGRESS_EVERY_S
            time.sleep(0.3)

    def stop(self, grace_s: float = 45.0) -> str:
        """SIGTERM, then SIGKILL after `grace_s` (to its whole session when it has one); returns
        what happened, for the log."""
        name = self.what
        if self.proc is None:
            return f"{name} was not started"
        if self.proc.poll() is not None:
            return f"{name} had already exited (code {self.proc.returncode})"
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
            return f"{name} stopped (exit {self.proc.returncode})"
        except subprocess.TimeoutExpired:
            # A vLLM child gets SIGTERM from the kernel when ragtune dies (PDEATHSIG).
            with contextlib.suppress(ProcessLookupError):
                if self.new_session:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    self.proc.kill()
            self.proc.wait()
            return f"{name} did not stop in {grace_s:.0f}s and was killed"


class RagtuneServer(RagtuneProcess):
    """`ragtune serve --port PORT --data-dir DATA_DIR`. Without `engine_urls` it spawns and
    supervises its own vLLM on `engine_port` (even if the environment or a .env names external
    replicas); with them it uses those. `env` is applied last, over everything."""

    def __init__(
        self,
        data_dir: Path,
        *,
        admin_key: str,
        port: int | None = None,
        engine_urls: list[str] | None = None,
        engine_port: int | None = None,
        model_dir: Path | None = None,
        engine_python: str | Path | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.admin_key = admin_key
        self.port = port or free_port()
        self.model_dir = model_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.engine_log_path = data_dir / "logs" / "engine.log"
        full_env = {**os.environ, "RAGTUNE_ADMIN_KEY": admin_key}
        if engine_urls:
            self.engine_port = None
            self.engine_url = engine_urls[0]
            full_env["RAGTUNE_ENGINE__URLS"] = json.dumps(engine_urls)
        else:
            self.engine_port = engine_port or free_port()
            self.engine_url = f"http://127.0.0.1:{self.engine_port}"
            full_env["RAGTUNE_ENGINE__URLS"] = "[]"
            full_env["RAGTUNE_ENGINE__PORT"] = str(self.engine_port)
        if model_dir is not None:
            full_env["RAGTUNE_MODEL_DIR"] = str(model_dir)
        if engine_python:
            full_env["RAGTUNE_ENGINE__PYTHON"] = str(engine_python)
        full_env.update(env or {})
        super().__init__(
            ["serve", "--port", str(self.port), "--data-dir", str(data_dir)],
            env=full_env,
            log_path=log_path or data_dir / "serve.log",
            new_session=new_session,
        )

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models" / "base"

    def wait_ready(
        self, timeout_s: float = 300, progress: Callable[[str], None] = _quiet
    ) -> float:
        """Seconds until GET /readyz answered 200; NotReady, with the logs, if ragtune exits or
        the time runs out."""
        def ready() -> bool:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

        return self.wait_for(ready, f"ragtune serve on {self.url}", timeout_s, progress)

    def log_tail(self, chars: int = 4000) -> str:
        text = super().log_tail(chars)
        if self.engine_log_path.exists():
            engine = self.engine_log_path.read_text(errors="replace")[-chars:]
            text += f"\n--- end of {self.engine_log_path} ---\n{engine}"
        return text

    def stop(self, grace_s: float = 45.0) -> str:
        outcome = super().stop(grace_s)
        if self.engine_port is not None and not port_closes(self.engine_port, 20.0):
            outcome += f"; WARNING: something still listens on engine port {self.engine_port}"
        return outcome

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def new_tenant(self, tenant_id: str, policy: dict | None = None) -> str:
        """A new tenant's API key."""
        r = httpx.post(f"{self.url}/v1/tenants", json={"id": tenant_id, "policy": policy or {}},
                       headers=self.admin())
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


@contextlib.contextmanager
def serving(
    server: RagtuneServer,
    *,
    ready_timeout_s: float = 300,
    stop_grace_s: float = 45.0,
    say: Callable[[str], None] = _quiet,
) -> Iterator[RagtuneServer]:
    """`server` started, waited for and yielded for one with-block, stopped on the way out; if
    the block fails its logs go to stderr (a start that fails has them in its error)."""
    try:
        server.start()
        say(f"ragtune ready after {server.wait_ready(ready_timeout_s, say):.0f}s")
        yield server
    except NotReady:
        raise
    except BaseException:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        say(server.stop(stop_grace_s))


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
