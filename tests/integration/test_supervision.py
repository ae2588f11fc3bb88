"""The supervised vLLM child: killed, it is reported down, restarted, and serves again."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.helpers.server import live_group_members

pytestmark = pytest.mark.integration


def _chat(server, key, timeout=60):
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 4},
        timeout=timeout,
    )


def _restarts(server) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("ragtune_engine_restarts_total "):
            return float(line.split()[1])
    raise AssertionError("no ragtune_engine_restarts_total in /metrics")


def test_killed_engine_is_restarted(server):
    key = server.new_tenant("sup-tenant")
    assert _chat(server, key).status_code == 200
    restarts = _restarts(server)
    pid = server.engine_pid()
    assert pid is not None
    pgid = os.getpgid(pid)
    assert pgid == pid  # its own process group: a stop takes its workers too
    os.kill(pid, signal.SIGKILL)

    # Reported down: /readyz 503 naming the LLM, chat 503 with Retry-After.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready = httpx.get(f"{server.url}/readyz")
        if ready.status_code == 503:
            break
        time.sleep(0.2)
    assert ready.status_code == 503 and ready.json()["checks"]["llm"] == "down"
    r = _chat(server, key)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
    assert int(r.headers["retry-after"]) > 0

    server.wait_ready(240)
    assert _chat(server, key).status_code == 200
    new_pid = server.engine_pid()
    assert new_pid is not None and new_pid != pid
    assert not live_group_members(pgid), "workers of the killed engine were left behind"
    assert _restarts(server) == restarts + 1
