"""The app in process, as the unit tests build it: settings, a new tenant, the one error shape."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def make_settings(tmp_path: Path, engine_urls: list[str], **overrides) -> Settings:
    return Settings(
        data_dir=tmp_path,
        admin_key=ADMIN_KEY,
        engine={"urls": engine_urls, "health_interval_s": 0.2},
        log_json=False,
        worker={"retire_grace_s": 0.1, "poll_s": 0.05},
        **overrides,
    )


def new_tenant(
    client: TestClient, policy: dict | None = None, tenant_id: str | None = None
) -> tuple[str, dict[str, str]]:
    """(id, auth header) of a new tenant; a random id unless one is given."""
    tenant_id = tenant_id or "t-" + uuid.uuid4().hex[:8]
    r = client.post("/v1/tenants", json={"id": tenant_id, "policy": policy or {}}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return tenant_id, {"Authorization": f"Bearer {r.json()['api_key']}"}


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == code, err
    assert err["message"]
    return err
