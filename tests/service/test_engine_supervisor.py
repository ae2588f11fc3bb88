"""The engine supervisor's restart loop, with a stand-in engine command (a shell script in the
engine python's place) so that the loop's cases can be made at will: the real vLLM's restart is
tests/integration/test_supervision.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from core.settings import EngineSettings, Settings
from service.engine_supervisor import EngineSupervisor
from tests.helpers.ports import free_port


def test_a_restarted_engine_that_never_becomes_ready_is_stopped_and_started_again(
    tmp_path: Path,
):
    """The engine exits; its restart starts but never answers /health. After the start-up
    timeout the supervisor stops that child and starts another, rather than waiting on a
    process that is alive and useless."""
    starts = tmp_path / "starts"
    engine = tmp_path / "engine"
    engine.write_text(f"#!/bin/sh\necho $$ >> {starts}\nexec sleep 600\n")
    engine.chmod(0o755)
    settings = Settings(data_dir=tmp_path / "data", engine=EngineSettings(
        python=engine, kind="gpu", port=free_port(), startup_timeout_s=1.0,
        restart_backoff_max_s=0.2))

    async def scenario() -> tuple[list[str], int | None]:
        sup = EngineSupervisor(settings)
        sup.proc = await asyncio.create_subprocess_exec("true", start_new_session=True)
        sup._watch_task = asyncio.create_task(sup._watch())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if starts.exists() and len(starts.read_text().split()) >= 2:
                break
            await asyncio.sleep(0.1)
        await sup.stop(grace_s=2)
        return starts.read_text().split() if starts.exists() else [], sup.proc.returncode

    pids, last_code = asyncio.run(scenario())
    assert len(pids) >= 2, f"started {len(pids)} time(s): the unready child was never replaced"
    assert len(set(pids)) == len(pids) and last_code is not None  # and none is left running
