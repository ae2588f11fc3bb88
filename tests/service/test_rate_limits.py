"""Per-tenant rate limits: fixed windows in the registry, one count across API replicas."""

from __future__ import annotations

import time

import httpx
import pytest

from core.errors import RateLimited
from core.registry.db import Registry
from service.limits import RateLimiter
from service.policy import Policy
from service.tenants import TenantService
from tests.helpers.app import ADMIN_KEY, assert_error, new_tenant
from tests.helpers.postgres import TempPostgres, postgres_available
from tests.helpers.server import RagtuneServer


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def limiter(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    reg.migrate()
    TenantService(reg).create("acme", Policy())
    clock = Clock(60 * 16_000 + 20.0)  # 20 s into a minute window
    yield RateLimiter(reg, clock=clock), clock
    reg.dispose()


def test_requests_per_minute_window(limiter):
    lim, clock = limiter
    policy = Policy(requests_per_minute=3)
    for _ in range(3):
        lim.admit("acme", policy)
    with pytest.raises(RateLimited) as exc:
        lim.admit("acme", policy)
    assert exc.value.code == "rate_limit_exceeded" and exc.value.status == 429
    assert exc.value.headers["Retry-After"] == "40"
    clock.t += 40  # the next window
    lim.admit("acme", policy)


def test_tokens_per_day_budget(limiter):
    lim, clock = limiter
    policy = Policy(tokens_per_day=100)
    lim.admit("acme", policy)
    lim.spend_tokens("acme", policy, 60)
    lim.admit("acme", policy)
    lim.spend_tokens("acme", policy, 60)  # the request that crosses the budget is served
    with pytest.raises(RateLimited) as exc:
        lim.admit("acme", policy)
    assert int(exc.value.headers["Retry-After"]) > 3600
    clock.t += 86_400
    lim.admit("acme", policy)


def test_limits_through_the_api(client):
    _, headers = new_tenant(client, {"requests_per_minute": 2})
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        assert client.post("/v1/chat/completions", headers=headers, json=body).status_code == 200
    r = client.post("/v1/chat/completions", headers=headers, json=body)
    assert_error(r, 429, "rate_limit_exceeded")
    assert int(r.headers["retry-after"]) >= 1
    _, other = new_tenant(client, {"requests_per_minute": 2})
    assert client.post("/v1/chat/completions", headers=other, json=body).status_code == 200


@pytest.mark.postgres
def test_two_service_processes_share_one_count(tmp_path, fake_engine):
    if not postgres_available():
        pytest.skip("no PostgreSQL at RAGTUNE_TEST_POSTGRES_URL")
    pg = TempPostgres()
    servers = [
        RagtuneServer(tmp_path / name, admin_key=ADMIN_KEY, engine_urls=[fake_engine.url],
                      env={"RAGTUNE_DATABASE_URL": pg.url, "RAGTUNE_LOG_JSON": "false",
                           "HF_HUB_OFFLINE": "1"})
        for name in ("a", "b")
    ]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(120)
        urls = [server.url for server in servers]
        api_key = servers[0].new_tenant("limited", {"requests_per_minute": 5})
        key = {"Authorization": f"Bearer {api_key}"}
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        left = 60 - time.time() % 60
        if left < 10:  # all 8 requests inside one minute window
            time.sleep(left + 0.5)
        codes = [
            httpx.post(f"{urls[i % 2]}/v1/chat/completions", headers=key, json=body,
                       timeout=30).status_code
            for i in range(8)
        ]
        # alternating between the two processes, the tenant still gets 5 in the minute
        assert codes == [200] * 5 + [429] * 3
    finally:
        for server in servers:
            server.stop(30)
        pg.drop()
