"""`ragtune tenants`: an operator makes a first tenant, lists, rotates a key and deletes, with
no curl; through the admin API of an app in process (the CLI's client swapped for its
TestClient, as the other CLI tests do)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from service import policy_cli
from service.cli import app as cli
from tests.helpers.app import ADMIN, ADMIN_KEY, assert_error


@pytest.fixture
def run(client, monkeypatch):
    monkeypatch.setattr(policy_cli, "_CLIENT", client)

    def invoke(*args: str, env: dict | None = None):
        return CliRunner().invoke(cli, ["tenants", *args], env=env or {})

    return invoke


def test_a_first_tenant_is_made_listed_rotated_and_deleted(client, run):
    made = run("create", "acme", "--policy", '{"mode": "rag"}', "--admin-key", ADMIN_KEY)
    assert made.exit_code == 0, made.output
    key = next(line.split(": ", 1)[1] for line in made.stdout.splitlines()
               if line.startswith("api key: "))
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200 and me.json()["policy"]["mode"] == "rag"

    listed = run("list", env={"RAGTUNE_ADMIN_KEY": ADMIN_KEY})  # the key from the environment
    assert listed.exit_code == 0, listed.output
    assert "acme" in listed.stdout and "rag" in listed.stdout
    as_json = json.loads(run("list", "--json", "--admin-key", ADMIN_KEY).stdout)
    assert [t["id"] for t in as_json["data"]] == ["acme"] and as_json["data"][0]["created_at"]

    rotated = run("rotate-key", "acme", "--json", "--admin-key", ADMIN_KEY)
    assert rotated.exit_code == 0, rotated.output
    new_key = json.loads(rotated.stdout)["api_key"]
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {new_key}"}).status_code == 200

    gone = run("delete", "acme", "--yes", "--admin-key", ADMIN_KEY)
    assert gone.exit_code == 0, gone.output
    assert_error(client.get("/v1/tenants/acme", headers=ADMIN), 404, "tenant_not_found")


def test_delete_asks_first(client, run):
    assert run("create", "keep", "--admin-key", ADMIN_KEY).exit_code == 0
    r = CliRunner().invoke(cli, ["tenants", "delete", "keep", "--admin-key", ADMIN_KEY],
                           input="n\n")
    assert r.exit_code != 0
    assert client.get("/v1/tenants/keep", headers=ADMIN).status_code == 200


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["list"], 2, "no admin key"),
        (["create", "x", "--policy", "{nope", "--admin-key", ADMIN_KEY], 2, "not JSON"),
        (["create", "Bad Id", "--admin-key", ADMIN_KEY], 1, "invalid_tenant_id"),
        (["create", "x", "--policy", '{"mode": "sometimes"}', "--admin-key", ADMIN_KEY], 1,
         "policy.mode"),
        (["list", "--admin-key", "wrong"], 1, "error 401"),
        (["rotate-key", "ghost", "--admin-key", ADMIN_KEY], 1, "tenant_not_found"),
    ],
)
def test_mistakes_are_said_plainly(run, args, code, says):
    r = run(*args)
    assert r.exit_code == code, r.output
    assert says in r.output
