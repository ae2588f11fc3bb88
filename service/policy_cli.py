"""`ragtune policy calibrate` and `ragtune advise`: the decision guide from the command line,
through a running server's API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer

policy_app = typer.Typer(no_args_is_help=True, help="A tenant's decision policy.")

Url = Annotated[str, typer.Option(envvar="RAGTUNE_URL", help="The ragtune server.")]
Key = Annotated[str | None, typer.Option(envvar="RAGTUNE_API_KEY", help="Tenant API key.")]
# Tests pass an httpx.Client of their own (a TestClient); None: a real one for --url.
_CLIENT: httpx.Client | None = None


def _client(url: str) -> httpx.Client:
    return _CLIENT if _CLIENT is not None else httpx.Client(base_url=url, timeout=600)


def _check(resp: httpx.Response) -> dict:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.is_success and isinstance(body, dict):
        return body
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        typer.echo(f"error {resp.status_code} ({err.get('code')}): {err.get('message')}", err=True)
    else:
        typer.echo(f"error {resp.status_code}: {resp.text[:500]}", err=True)
    raise typer.Exit(1)


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        typer.echo(f"cannot read {path}: {exc}", err=True)
        raise typer.Exit(2) from None


@policy_app.command()
def calibrate(
    tenant: Annotated[str, typer.Option(help="The tenant whose policy to calibrate.")],
    labeled: Annotated[
        Path | None, typer.Option(help='JSONL rows {"query", "path"} labelled by a person.')
    ] = None,
    evaluation: Annotated[
        str | None,
        typer.Option(help="Or labels measured by an evaluation: each item's label is the "
                     "simplest path arm that passed it."),
    ] = None,
    key: Key = None,
    admin_key: Annotated[
        str | None, typer.Option(envvar="RAGTUNE_ADMIN_KEY", help="Needed for --apply.")
    ] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Set the suggested thresholds.")] = False,
    url: Url = "http://127.0.0.1:8000",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Accuracy of the tenant's `auto` thresholds on labeled queries (a person's labels, or an
    evaluation's measured outcomes), and better ones."""
    from service.calibrate import calibrate as run
    from service.calibrate import labeled_from_explain
    from service.policy import Policy

    if not key:
        typer.echo("no tenant key: pass --key or set RAGTUNE_API_KEY", err=True)
        raise typer.Exit(2)
    if apply and not admin_key:
        typer.echo("--apply changes the tenant's policy: pass --admin-key", err=True)
        raise typer.Exit(2)
    if (labeled is None) == (evaluation is None):
        typer.echo("pass one of --labeled and --evaluation", err=True)
        raise typer.Exit(2)
    client = _client(url)
    auth = {"Authorization": f"Bearer {key}"}
    if evaluation is not None:
        from service.calibrate import labels_from_evaluation

        resp = client.get(f"/v1/evaluations/{evaluation}/items", headers=auth)
        if not resp.is_success:
            _check(resp)
        rows = labels_from_evaluation(
            [json.loads(x) for x in resp.text.splitlines() if x.strip()]
        )
        if not rows:
            typer.echo(f"evaluation {evaluation}: no item was passed by a path arm", err=True)
            raise typer.Exit(2)
    else:
        rows = _read_jsonl(labeled)
    me = _check(client.get("/v1/me", headers=auth))
    if me["id"] != tenant:
        typer.echo(f"the key acts as tenant '{me['id']}', not '{tenant}'", err=True)
        raise typer.Exit(2)
    explained = _check(client.post(
        "/v1/policy/explain", headers=auth, json={"queries": [r["query"] for r in rows]}
    ))
    try:
        result = run(Policy.model_validate(explained["policy"]),
                     labeled_from_explain(rows, explained["data"]))
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(f"{result.n} labeled queries")
        typer.echo(f"current   {result.current}: accuracy {result.current_accuracy:.1%}")
        typer.echo(f"suggested {result.suggested}: accuracy {result.suggested_accuracy:.1%}")
        for m in result.mistakes[:20]:
            typer.echo(f"  x {m['label']:>11} -> {m['predicted']:<11} {m['query'][:70]}")
    if apply:
        _check(client.patch(
            f"/v1/tenants/{tenant}", headers={"Authorization": f"Bearer {admin_key}"},
            json={"policy": result.suggested},
        ))
        typer.echo(f"applied to tenant '{tenant}'")


def advise(
    samples: Annotated[
        Path | None, typer.Option(help="The tenant's text: a file, or a folder of .txt/.md.")
    ] = None,
    training_file: Annotated[Path | None, typer.Option(help="A proposed training JSONL.")] = None,
    key: Key = None,
    url: Url = "http://127.0.0.1:8000",
) -> None:
    """Which path the tenant's data calls for: prompt, rag, fine_tune or fine_tune+rag."""
    if not key:
        typer.echo("no tenant key: pass --key or set RAGTUNE_API_KEY", err=True)
        raise typer.Exit(2)
    body: dict = {}
    if samples is not None:
        if samples.is_dir():
            files = sorted(p for p in samples.rglob("*") if p.suffix in (".txt", ".md"))
        else:
            files = [samples]
        texts = [p.read_text(errors="replace") for p in files]
        body["sample_texts"] = [t for text in texts for t in text.split("\n\n") if t.strip()][:64]
    if training_file is not None:
        body["training_file"] = training_file.read_text(errors="replace")
    out = _check(_client(url).post(
        "/v1/advisor", headers={"Authorization": f"Bearer {key}"}, json=body
    ))
    typer.echo(json.dumps(out, indent=2))
