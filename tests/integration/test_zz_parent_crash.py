"""Runs last (it ends the session's server): a crashed ragtune never leaves vLLM orphaned."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers.server import live_group_members

pytestmark = pytest.mark.integration


def test_sigkill_of_ragtune_takes_the_engine_down(server):
    pid = server.engine_pid()
    assert pid is not None
    pgid = os.getpgid(pid)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    deadline = time.monotonic() + 60
    while live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not live_group_members(pgid), "vLLM outlived the ragtune process that started it"
