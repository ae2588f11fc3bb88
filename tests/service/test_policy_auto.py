"""The automatic policy on the example tenants (two DSL tenants, each with an adapter and its
manual; a policy-documents tenant; a plain tenant), set up as a new user would (the adapter
registered with a description and ten example prompts, documents uploaded): first with the
defaults, nothing calibrated; then with thresholds from `ragtune policy calibrate` on one half
of each labeled set, judged on the other half.

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
CASES = {
    "halvard": EXAMPLES / "dsl" / "labeled_queries.jsonl",
    "brisling": EXAMPLES / "brisling" / "labeled_queries.jsonl",
    "zephyr": EXAMPLES / "policy_docs" / "labeled_queries.jsonl",
    "plain": EXAMPLES / "plain" / "labeled_queries.jsonl",
}
HELD_OUT_ACCURACY = 0.85
UNCALIBRATED_ACCURACY = 0.9  # issue 14's goal for the defaults, over the example tenants
EXAMPLE_PROMPTS = 10


def _labeled(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _upload_folder(client, headers, folder: Path) -> None:
    files = [("file", (p.name, p.read_bytes())) for p in sorted(folder.glob("*.md"))]
    r = client.post("/v1/documents", headers=headers, files=files)
    assert r.status_code == 202, r.text
    assert wait_job(client, headers, r.json()["job_id"], timeout=120)["state"] == "succeeded"


def _register(client, headers, tmp: Path, name: str, train: Path, description: str) -> None:
    instructions = [json.loads(line)["messages"][0]["content"]
                    for line in train.read_text().splitlines()[:EXAMPLE_PROMPTS]]
    folder = f.valid_adapter(tmp / f"{name}-adapter")
    archive = f.tar_gz_of(folder, tmp / f"{name}.tar.gz").read_bytes()
    r = client.post(
        "/v1/adapters", headers=headers,
        files={"file": (f"{name}.tar.gz", archive, "application/gzip")},
        data={"name": name, "examples": json.dumps(instructions), "description": description},
    )
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, fake_engine):
    tmp = tmp_path_factory.mktemp("policy")
    settings = make_settings(tmp, [fake_engine.url], model_dir=f.base_model_dir())
    with TestClient(create_app(settings)) as client:
        keys = {name: new_tenant(client, tenant_id=name)[1] for name in CASES}
        _upload_folder(client, keys["halvard"], EXAMPLES / "dsl" / "manual")
        _register(client, keys["halvard"], tmp, "skerry", EXAMPLES / "dsl" / "data" / "train.jsonl",
                  "Writes Skerry programs for Halvard's warehouse control system")
        _upload_folder(client, keys["brisling"], EXAMPLES / "brisling" / "manual")
        _register(client, keys["brisling"], tmp, "brisling",
                  EXAMPLES / "brisling" / "data" / "train.jsonl",
                  "Writes Brisling routing rules for Tollhaven Parcel")
        _upload_folder(client, keys["zephyr"], EXAMPLES / "policy_docs" / "docs")
        yield client, keys




def test_the_defaults_route_the_example_tenants_without_calibration(tenants):
    """Nothing calibrated: the background floor and the adapter's name decide. Over all four
    tenants at least UNCALIBRATED_ACCURACY; and the two fixed-floor failures the issue names
    are gone: "write this in <the language>" takes the adapter, and a general question on the
    manual's topic ("what is cross-docking?") is not sent to rag."""
    client, keys = tenants
    hits = total = 0
    wrong = []
    for tenant, path in CASES.items():
        r = client.patch(f"/v1/tenants/{tenant}", headers=ADMIN,  # the defaults, whatever ran
                         json={"policy": {"min_score": None, "adapter_match_min": 0.5}})
        assert r.status_code == 200, r.text
        rows = _labeled(path)
        explained = client.post("/v1/policy/explain", headers=keys[tenant],
                                json={"queries": [r["query"] for r in rows]}).json()["data"]
        for e, row in zip(explained, rows, strict=True):
            route = e["route"]
            if tenant != "plain":
                assert route["signals"]["floor_from"] == "background", route
            total += 1
            if route["path"] == row["path"]:
                hits += 1
            else:
                wrong.append((tenant, row["path"], route["path"], row["query"]))
    assert hits / total >= UNCALIBRATED_ACCURACY, wrong
    by_query = {q: got for _, _, got, q in wrong}
    for q in ("Write this in Skerry: count the dairy chiller every 6 hours.",
              "Write this in Brisling: route every express shipment to the Oslo gateway hub.",
              "What is cross-docking in logistics?", "Explain what a boolean expression is."):
        assert q not in by_query, (q, by_query[q])


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
