from __future__ import annotations

from tests.helpers.api import chat
from tests.helpers.app import assert_error, new_tenant


def chat_ok(client, headers) -> int:
    return chat(client, headers, "x").status_code


def test_create_shows_key_once_and_get_hides_it(client, admin):
    r = client.post("/v1/tenants", json={"id": "acme", "policy": {"mode": "prompt"}}, headers=admin)
    assert r.status_code == 201
    body = r.json()
    assert body["id"] == "acme" and body["api_key"].startswith("rt-")
    assert body["policy"]["mode"] == "prompt"
    got = client.get("/v1/tenants/acme", headers=admin).json()
    assert "api_key" not in got and got["policy"]["mode"] == "prompt"
    assert_error(
        client.post("/v1/tenants", json={"id": "acme"}, headers=admin), 409, "tenant_exists"
    )


def test_patch_policy_merges(client, admin):
    tenant_id, headers = new_tenant(client, {"system_prompt": "one"})
    r = client.patch(f"/v1/tenants/{tenant_id}", json={"policy": {"mode": "prompt"}}, headers=admin)
    assert r.status_code == 200
    assert r.json()["policy"]["mode"] == "prompt"
    assert r.json()["policy"]["system_prompt"] == "one"


def test_rotate_revokes_old_key_at_once(client, admin):
    tenant_id, old = new_tenant(client)
    assert chat_ok(client, old) == 200
    r = client.post(f"/v1/tenants/{tenant_id}/keys", headers=admin)
    assert r.status_code == 201
    new = {"Authorization": f"Bearer {r.json()['api_key']}"}
    assert chat_ok(client, old) == 401
    assert chat_ok(client, new) == 200
    # rotation with overlap keeps the previous key working
    r = client.post(f"/v1/tenants/{tenant_id}/keys", json={"revoke_existing": False}, headers=admin)
    assert chat_ok(client, new) == 200
    assert chat_ok(client, {"Authorization": f"Bearer {r.json()['api_key']}"}) == 200


def test_delete_tenant_revokes_keys(client, admin):
    tenant_id, headers = new_tenant(client)
    assert client.delete(f"/v1/tenants/{tenant_id}", headers=admin).status_code == 204
    assert chat_ok(client, headers) == 401
    assert_error(client.get(f"/v1/tenants/{tenant_id}", headers=admin), 404, "tenant_not_found")
    assert_error(client.delete(f"/v1/tenants/{tenant_id}", headers=admin), 404, "tenant_not_found")


def test_admin_endpoints_need_admin(client, tenant):
    tenant_id, headers = tenant
    assert_error(client.get(f"/v1/tenants/{tenant_id}", headers=headers), 403, "admin_key_required")
    assert_error(client.get(f"/v1/tenants/{tenant_id}"), 401, "missing_api_key")
