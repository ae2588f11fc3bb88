"""Fixtures for the adapters API tests: two fake engines, and `client`, the app serving adapters
against them (it replaces the root conftest's `client` in tests/adapters/)."""

from __future__ import annotations

import pytest

from tests.helpers.adapter_service import make_client
from tests.helpers.fake_engine import FakeEngine


@pytest.fixture
def engines():
    started = [FakeEngine().start(), FakeEngine().start()]
    yield started
    for e in started:
        e.stop()


@pytest.fixture
def client(tmp_path, engines):
    with make_client(tmp_path, engines) as c:
        yield c
