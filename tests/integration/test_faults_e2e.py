"""The real vLLM killed in the middle of a streamed answer: the stream ends with an error event
in the one error shape (never a silent cut), and once the supervisor has restarted the engine
the next request succeeds."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_engine_killed_mid_stream_ends_the_stream_with_an_error_event(server):
    key = server.new_tenant("fault-stream", {"mode": "prompt"})
    headers = {"Authorization": f"Bearer {key}"}
    body = {"stream": True, "max_tokens": 400, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from 1 to 300, one number a line."}]}
    events, killed = [], False
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers=headers, json=body,
                      timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == 5 and not killed:
                os.kill(server.engine_pid(), signal.SIGKILL)
                killed = True
    assert killed, f"the answer ended before the engine could be killed: {events}"
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert set(error) == {"error"} and error["error"]["code"] == "engine_unavailable", error
    assert error["error"]["message"]
    assert all("choices" in json.loads(e) for e in events[:-2])

    deadline = time.monotonic() + 20  # the supervisor sees the death, then restarts it
    while httpx.get(f"{server.url}/readyz").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    server.wait_ready(240)
    r = httpx.post(f"{server.url}/v1/chat/completions", headers=headers, timeout=120,
                   json={"messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 4})
    assert r.status_code == 200, r.text
