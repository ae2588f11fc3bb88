"""What the console stands on, in process: its page and assets are served by the app with a strict
Content-Security-Policy and reference nothing outside the origin; and the public API it calls
for operators and calibration (GET /v1/admin/status, POST /v1/policy/calibrate, the replicas on
adapter versions). The console itself, in a real browser, is tests/e2e/test_console.py."""

from __future__ import annotations

import re

import pytest

from service.routes.console import CONSOLE
from tests.helpers.adapter_service import archive, make_client, register
from tests.helpers.api import indexed
from tests.helpers.app import ADMIN, assert_error, new_tenant
from tests.helpers.fake_engine import FakeEngine

ASSETS = sorted(p for p in CONSOLE.rglob("*") if p.is_file() and p.suffix in (".js", ".css"))
# The one absolute URL the scripts hold is the SVG namespace, an identifier never fetched.
NAMESPACES = {"http://www.w3.org/2000/svg"}


def test_the_page_and_every_asset_are_served_from_the_origin(client):
    page = client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/console/assets/js/main.js" in referenced
    assert len(ASSETS) >= 8
    for path in ASSETS:
        rel = path.relative_to(CONSOLE).as_posix()
        r = client.get(f"/console/assets/{rel}")
        assert r.status_code == 200, rel
        assert r.headers["x-content-type-options"] == "nosniff"
        urls = set(re.findall(r"https?://[^\s\"'`)]+", r.text)) - NAMESPACES
        assert urls == set(), (rel, urls)
    for ref in referenced:
        if ref.startswith("/console/assets/"):
            assert client.get(ref).status_code == 200, ref
    assert client.get("/console/assets/../../app.py").status_code == 404


def test_scripts_build_the_page_from_data_never_from_html_strings():
    """Answers, passages and error messages are data: the scripts set textContent only."""
    for path in ASSETS:
        if path.suffix == ".js":
            text = path.read_text()
            assert "innerHTML" not in text and "outerHTML" not in text, path.name
            assert "insertAdjacentHTML" not in text and "eval(" not in text, path.name


def test_the_operators_status_is_the_admins_only(client):
    tid, headers = new_tenant(client, {"requests_per_minute": 50})
    other, _ = new_tenant(client, {"requests_per_minute": 50})
    client.post("/v1/chat/completions", headers=headers,
                json={"messages": [{"role": "user", "content": "hi"}]})
    st = client.get("/v1/admin/status", headers=ADMIN)
    assert st.status_code == 200, st.text
    body = st.json()
    assert body["status"] == "ready" and set(body["checks"]) == {"llm", "registry",
                                                                 "vector_store"}
    (replica,) = body["replicas"]
    assert replica["healthy"] is True and replica["index"] == 0
    mine = next(t for t in body["tenants"] if t["id"] == tid)
    assert mine["limits"] == {"requests_per_minute": 50, "tokens_per_day": None}
    assert mine["usage"]["requests_this_minute"] == 1
    idle = next(t for t in body["tenants"] if t["id"] == other)
    assert idle["usage"] == {"requests_this_minute": 0, "tokens_today": 0}
    assert_error(client.get("/v1/admin/status", headers=headers), 403, "admin_key_required")


def test_adapter_versions_say_which_replicas_hold_them(tmp_path, fake_engine):
    second = FakeEngine().start()
    try:
        with make_client(tmp_path, [fake_engine, second]) as client:
            _, headers = new_tenant(client)
            assert register(client, headers, archive(tmp_path)).status_code == 201
            (v1,) = client.get("/v1/adapters/warelang", headers=headers).json()["versions"]
            assert v1["replicas"] == [0, 1]
            held = client.get("/v1/admin/status", headers=ADMIN).json()["replicas"]
            assert all(any(n.endswith("--warelang--v1") for n in r["adapters"]) for r in held)
    finally:
        second.stop()


@pytest.mark.parametrize("rows", [[], [{"query": "x", "path": "sometimes"}]])
def test_calibrate_refuses_bad_rows(client, tenant, rows):
    _, headers = tenant
    r = client.post("/v1/policy/calibrate", headers=headers, json={"rows": rows})
    assert r.status_code in (400, 422) and r.json()["error"]["code"], r.text


def test_calibrate_reports_the_accuracy_now_and_with_better_thresholds(client, tenant):
    _, headers = tenant
    indexed(client, headers, "harbour.txt", "The harbour office door code is QX-7731.")
    rows = [{"query": "What is the harbour office door code?", "path": "rag"},
            {"query": "Which code opens the harbour office door?", "path": "rag"},
            {"query": "Write a haiku about autumn leaves.", "path": "prompt"},
            {"query": "What is the capital of Spain?", "path": "prompt"}]
    r = client.post("/v1/policy/calibrate", headers=headers, json={"rows": rows})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["n"] == 4 and report["suggested_accuracy"] >= report["current_accuracy"]
    assert report["current"]["min_score"] is None  # the background floor, unset
    assert set(report["suggested"]) == {"min_score", "adapter_match_min"}
    # nothing changed: the tenant's policy is as it was
    assert client.get("/v1/me", headers=headers).json()["policy"]["min_score"] is None
