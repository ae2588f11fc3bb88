"""Fixtures for every test: the fake engine, the in-process app with a tenant. Functions tests
share are in tests/helpers/, not here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers.app import ADMIN, make_settings, new_tenant
from tests.helpers.fake_engine import FakeEngine

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
