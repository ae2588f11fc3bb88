"""The Grafana dashboard in deploy/grafana: every panel's query names only metrics ragtune exports
(as Prometheus exposes them: a counter's `_total`, a histogram's `_bucket`/`_sum`/`_count`) or,
for the engine's panels, metrics the installed vLLM defines; it covers the areas an operator
watches; and docker-compose provisions it with the compose Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from core.metrics import Metrics
from tests.helpers.app import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ragtune.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
ENGINE_SITE = sorted((ROOT / ".venv-engine" / "lib").glob("python3*/site-packages/vllm"))


def exported_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        else:
            names.add(family.name)
    return names


def queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row"
            for t in p["targets"]]


def test_every_ragtune_metric_a_panel_queries_is_exported():
    exported = exported_names()
    seen = set()
    for title, expr in queries():
        for name in re.findall(r"\bragtune_[a-z_]+", expr):
            assert name in exported, f"panel {title!r} queries {name}: ragtune exports no such"
            seen.add(name)
    # every family ragtune exports has a panel
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exported}
    shown = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in seen}
    assert families - shown == set()


@pytest.mark.skipif(not ENGINE_SITE, reason="no engine environment (.venv-engine): make install")
def test_every_vllm_metric_a_panel_queries_is_defined_by_the_installed_vllm():
    source = "\n".join(p.read_text(errors="replace")
                       for p in (ENGINE_SITE[0] / "v1" / "metrics").glob("*.py"))
    defined = set(re.findall(r'"(vllm:[a-z_]+)"', source))
    seen = 0
    for title, expr in queries():
        for name in re.findall(r"\bvllm:[a-z_]+", expr):
            seen += 1
            base = re.sub(r"_total$", "", name)
            assert base in defined, f"panel {title!r} queries {name}, unknown to this vLLM"
    assert seen >= 3


def test_the_dashboard_covers_what_an_operator_watches():
    dash = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    for area in ("Paths", "Decisions", "Engine", "Adapters", "Ingestion", "Limits"):
        assert any(r.startswith(area) for r in rows), (area, rows)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]


def test_compose_provisions_the_dashboard_and_its_data_source():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    assert "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro" in grafana["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "ragtune.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert Path(DASHBOARD).is_file()
