"""`ragtune tenants`: the operator's tenant actions (create, list, show, rotate-key, delete)
through a running server's admin API, so a first tenant needs no curl."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from service.policy_cli import Url, _check, _client

tenants_app = typer.Typer(no_args_is_help=True, help="Tenants and their keys (admin key).")

AdminKey = Annotated[
    str | None, typer.Option(envvar="RAGTUNE_ADMIN_KEY", help="The server's admin key.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer.")]
TenantId = Annotated[str, typer.Argument(help="The tenant's id.")]


def _admin(admin_key: str | None) -> dict[str, str]:
    if not admin_key:
        typer.echo("no admin key: pass --admin-key or set RAGTUNE_ADMIN_KEY", err=True)
        raise typer.Exit(2)
    return {"Authorization": f"Bearer {admin_key}"}


def _policy(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        typer.echo(f"--policy is not JSON: {exc}", err=True)
        raise typer.Exit(2) from None
    if not isinstance(value, dict):
        typer.echo("--policy must be a JSON object", err=True)
        raise typer.Exit(2)
    return value


def _show_key(body: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    typer.echo(f"tenant {body['id']}")
    typer.echo(f"api key: {body['api_key']}")
    typer.echo("the key is shown once: the server keeps only its digest", err=True)


@tenants_app.command()
def create(
    tenant: Annotated[str, typer.Argument(help="The new tenant's id (a-z, 0-9, '-').")],
    policy: Annotated[
        str | None, typer.Option(help='Its policy as JSON, e.g. \'{"mode": "rag"}\'.')
    ] = None,
    admin_key: AdminKey = None,
    url: Url = "http://127.0.0.1:8000",
    as_json: AsJson = False,
) -> None:
    """Create a tenant; prints its API key (once)."""
    headers = _admin(admin_key)
    body = {"id": tenant, "policy": _policy(policy)}
    c = _client(url)
    _show_key(_check(c.post("/v1/tenants", headers=headers, json=body)), as_json)


@tenants_app.command("list")
def list_tenants(
    admin_key: AdminKey = None,
    url: Url = "http://127.0.0.1:8000",
    as_json: AsJson = False,
) -> None:
    """Every tenant, oldest first, with its policy mode."""
    headers = _admin(admin_key)
    c = _client(url)
    body = _check(c.get("/v1/tenants", headers=headers))
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    rows = body["data"]
    if not rows:
        typer.echo("no tenants yet: ragtune tenants create ID")
        return
    width = max(len(r["id"]) for r in rows)
    typer.echo(f"{'tenant':<{width}}  {'mode':<11}  created")
    for r in rows:
        typer.echo(f"{r['id']:<{width}}  {r['policy']['mode']:<11}  {r['created_at'][:19]}")


@tenants_app.command()
def show(
    tenant: TenantId,
    admin_key: AdminKey = None,
    url: Url = "http://127.0.0.1:8000",
) -> None:
    """A tenant's policy (JSON)."""
    headers = _admin(admin_key)
    c = _client(url)
    typer.echo(json.dumps(_check(c.get(f"/v1/tenants/{tenant}", headers=headers)), indent=2))


@tenants_app.command("rotate-key")
def rotate_key(
    tenant: TenantId,
    keep_existing: Annotated[
        bool, typer.Option(help="Keep the old keys working (default: they stop at once).")
    ] = False,
    admin_key: AdminKey = None,
    url: Url = "http://127.0.0.1:8000",
    as_json: AsJson = False,
) -> None:
    """A new API key for the tenant; prints it (once)."""
    headers = _admin(admin_key)
    c = _client(url)
    r = c.post(f"/v1/tenants/{tenant}/keys", headers=headers,
               json={"revoke_existing": not keep_existing})
    _show_key(_check(r), as_json)


@tenants_app.command()
def delete(
    tenant: TenantId,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    admin_key: AdminKey = None,
    url: Url = "http://127.0.0.1:8000",
) -> None:
    """Delete a tenant with its documents, chunks, adapters and keys."""
    headers = _admin(admin_key)
    if not yes:
        typer.confirm(f"delete tenant {tenant} with all its documents and adapters?", abort=True)
    c = _client(url)
    r = c.delete(f"/v1/tenants/{tenant}", headers=headers)
    if r.status_code != 204:
        _check(r)
    typer.echo(f"deleted tenant {tenant}")
