"""One real `ragtune serve` (which starts and supervises the real vLLM) per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.adapter_files import base_model_dir as prepared_base_model_dir
from tests.helpers.app import ADMIN_KEY, ROOT
from tests.helpers.server import RagtuneServer, serving

ENGINE_PYTHON = Path(os.environ.get("RAGTUNE_ENGINE__PYTHON", ROOT / ".venv-engine/bin/python"))


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    return prepared_base_model_dir()


@pytest.fixture(scope="session")
def server(base_model_dir, tmp_path_factory) -> Iterator[RagtuneServer]:
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"no engine environment at {ENGINE_PYTHON}: run `make install`")
    srv = RagtuneServer(
        tmp_path_factory.mktemp("ragtune-serve"),
        admin_key=ADMIN_KEY,
        model_dir=base_model_dir,
        engine_python=ENGINE_PYTHON,
        env={"RAGTUNE_ENGINE__HEALTH_INTERVAL_S": "0.5", "HF_HUB_OFFLINE": "1"},
    )
    with serving(srv, ready_timeout_s=300, stop_grace_s=60):
        yield srv
