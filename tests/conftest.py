from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from service.app import create_app
from tests.fake_engine import FakeEngine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "test-admin-key"
POSTGRES_URL = os.environ.get(
    "RAGTUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def fake_engine() -> Iterator[FakeEngine]:
    engine = FakeEngine().start()
    yield engine
    engine.stop()


def make_settings(tmp_path: Path, engine_urls: list[str], **overrides) -> Settings:
    return Settings(
        data_dir=tmp_path,
        admin_key=ADMIN_KEY,
        engine={"urls": engine_urls, "health_interval_s": 0.2},
        log_json=False,
        worker={"retire_grace_s": 0.1, "poll_s": 0.05},
        **overrides,
    )


@pytest.fixture
def client(tmp_path: Path, fake_engine: FakeEngine) -> Iterator[TestClient]:
    fake_engine.healthy = True
    fake_engine.requests.clear()
    app = create_app(make_settings(tmp_path, [fake_engine.url]))
    with TestClient(app) as c:
        yield c


@pytest.fixture
def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def new_tenant(client: TestClient, policy: dict | None = None) -> tuple[str, dict[str, str]]:
    tenant_id = "t-" + uuid.uuid4().hex[:8]
    r = client.post(
        "/v1/tenants",
        json={"id": tenant_id, "policy": policy or {}},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert r.status_code == 201, r.text
    return tenant_id, {"Authorization": f"Bearer {r.json()['api_key']}"}


@pytest.fixture
def tenant(client: TestClient) -> tuple[str, dict[str, str]]:
    return new_tenant(client)


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == code, err
    assert err["message"]
    return err
