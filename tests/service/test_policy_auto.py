"""The automatic policy on three kinds of tenant (a DSL tenant with an adapter and its manual, a
policy-documents tenant, a plain tenant): thresholds come from `ragtune policy calibrate` on one
half of each labeled set, and `auto` is judged on the other half.

Real embeddings and the embedded Qdrant; the fake engine only loads the adapter (no LLM answer
is needed to decide a path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service import policy_cli
from service.app import create_app
from service.cli import app as cli
from tests.helpers import adapter_files as f
from tests.helpers.api import wait_job
from tests.helpers.app import ADMIN, ADMIN_KEY, ROOT, make_settings, new_tenant

EXAMPLES = ROOT / "examples"
HELD_OUT_ACCURACY = 0.85


def _labeled(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _upload_folder(client, headers, folder: Path) -> None:
    files = [("file", (p.name, p.read_bytes())) for p in sorted(folder.glob("*.md"))]
    r = client.post("/v1/documents", headers=headers, files=files)
    assert r.status_code == 202, r.text
    assert wait_job(client, headers, r.json()["job_id"], timeout=120)["state"] == "succeeded"


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, fake_engine):
    tmp = tmp_path_factory.mktemp("policy")
    settings = make_settings(tmp, [fake_engine.url], model_dir=f.base_model_dir())
    with TestClient(create_app(settings)) as client:
        keys = {name: new_tenant(client, tenant_id=name)[1]
                for name in ("halvard", "zephyr", "plain")}
        _upload_folder(client, keys["halvard"], EXAMPLES / "dsl" / "manual")
        instructions = [
            json.loads(line)["messages"][0]["content"]
            for line in (EXAMPLES / "dsl" / "data" / "train.jsonl").read_text().splitlines()[:20]
        ]
        folder = f.valid_adapter(tmp / "skerry-adapter")
        archive = f.tar_gz_of(folder, tmp / "skerry.tar.gz").read_bytes()
        r = client.post(
            "/v1/adapters", headers=keys["halvard"],
            files={"file": ("skerry.tar.gz", archive, "application/gzip")},
            data={"name": "skerry", "examples": json.dumps(instructions),
                  "description": "Writes Skerry programs for Halvard's warehouse control system"},
        )
        assert r.status_code == 201, r.text
        _upload_folder(client, keys["zephyr"], EXAMPLES / "policy_docs" / "docs")
        yield client, keys


CASES = {
    "halvard": EXAMPLES / "dsl" / "labeled_queries.jsonl",
    "zephyr": EXAMPLES / "policy_docs" / "labeled_queries.jsonl",
    "plain": EXAMPLES / "plain" / "labeled_queries.jsonl",
}


@pytest.mark.parametrize("tenant", list(CASES))
def test_auto_picks_the_labeled_path_with_calibrated_thresholds(tenants, tenant, tmp_path,
                                                                monkeypatch):
    client, keys = tenants
    rows = _labeled(CASES[tenant])
    tune, held_out = rows[0::2], rows[1::2]
    labeled = tmp_path / "tune.jsonl"
    labeled.write_text("".join(json.dumps(r) + "\n" for r in tune))
    monkeypatch.setattr(policy_cli, "_CLIENT", client)
    key = keys[tenant]["Authorization"].split()[1]
    result = CliRunner().invoke(cli, [
        "policy", "calibrate", "--tenant", tenant, "--labeled", str(labeled), "--key", key,
        "--admin-key", ADMIN_KEY, "--apply", "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[: result.output.rindex("}") + 1])
    assert report["suggested_accuracy"] >= report["current_accuracy"]
    policy = client.get(f"/v1/tenants/{tenant}", headers=ADMIN).json()["policy"]
    assert policy["min_score"] == report["suggested"]["min_score"]

    explained = client.post("/v1/policy/explain", headers=keys[tenant],
                            json={"queries": [r["query"] for r in held_out]}).json()["data"]
    got = [e["route"]["path"] for e in explained]
    hits = sum(g == r["path"] for g, r in zip(got, held_out, strict=True))
    wrong = [(r["path"], g, r["query"]) for g, r in zip(got, held_out, strict=True)
             if g != r["path"]]
    assert hits / len(held_out) >= HELD_OUT_ACCURACY, wrong
    for e in explained:  # every decision says why, with the figures behind it
        assert e["route"]["reason"].startswith("auto: ")
        assert "top_score" in e["route"]["signals"]


def test_calibrate_refuses_a_key_of_another_tenant(tenants, tmp_path, monkeypatch):
    client, keys = tenants
    labeled = tmp_path / "l.jsonl"
    labeled.write_text('{"query": "hi", "path": "prompt"}\n')
    monkeypatch.setattr(policy_cli, "_CLIENT", client)
    result = CliRunner().invoke(cli, [
        "policy", "calibrate", "--tenant", "zephyr", "--labeled", str(labeled),
        "--key", keys["plain"]["Authorization"].split()[1],
    ])
    assert result.exit_code == 2 and "not 'zephyr'" in result.output
