"""Fixtures for every test: the fake engine, the in-process app with a tenant, and the one real
`ragtune serve` (which starts and supervises the real vLLM) of a test session, shared by the
integration tests and the console's browser tests. Functions tests share are in
tests/helpers/, not here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers.adapter_files import base_model_dir as prepared_base_model_dir
from tests.helpers.app import ADMIN, ADMIN_KEY, make_settings, new_tenant
from tests.helpers.fake_engine import FakeEngine
from tests.helpers.server import ENGINE_PYTHON, RagtuneServer, serving

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


@pytest.fixture(scope="session")
def fake_engine() -> Iterator[FakeEngine]:
    engine = FakeEngine().start()
    yield engine
    engine.stop()


@pytest.fixture
def client(tmp_path: Path, fake_engine: FakeEngine) -> Iterator[TestClient]:
    fake_engine.healthy = True
    fake_engine.requests.clear()
    app = create_app(make_settings(tmp_path, [fake_engine.url]))
    with TestClient(app) as c:
        yield c


@pytest.fixture
def admin() -> dict[str, str]:
    return dict(ADMIN)


@pytest.fixture
def tenant(client: TestClient) -> tuple[str, dict[str, str]]:
    return new_tenant(client)
