"""yamllint over the hand-written YAML (compose, Prometheus, the chart's values) and over every
rendered manifest; it must flag bad spacing, so a pass means something."""

from __future__ import annotations

import pytest

from tests.helpers.deploy_files import (
    CHART,
    COMPOSE,
    COMPOSE_CPU,
    PROMETHEUS,
    YAMLLINT_CONFIG,
    require_module,
)
from tests.helpers.helm_chart import SCENARIOS, rendered

# Rendered manifests carry toYaml output, which does not indent sequences under their key, and
# data lines as long as the data (the engine URL list grows with the replica count).
RENDERED_YAMLLINT = """
extends: default
rules:
  line-length: disable
  document-start: disable
  indentation: {spaces: 2, indent-sequences: whatever}
  truthy: {check-keys: false}
"""


def _lint(text: str, config, name: str) -> list[str]:
    from yamllint import linter

    return [f"{name}:{p.line}:{p.column} {p.level} {p.message}"
            for p in linter.run(text, config) if p.level == "error"]


def test_yamllint_hand_written_files():
    require_module("yamllint", "yamllint")
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(YAMLLINT_CONFIG))
    files = [COMPOSE, COMPOSE_CPU, PROMETHEUS, YAMLLINT_CONFIG, CHART / "Chart.yaml",
             CHART / "values.yaml", CHART / "values-gpu.yaml",
             *sorted((PROMETHEUS.parent / "grafana" / "provisioning").rglob("*.yml"))]
    problems = [p for f in files for p in _lint(f.read_text(), config, f.name)]
    assert problems == []
    assert _lint("a:  1\nb: [1,2]\n", config, "bad"), "yamllint must flag bad spacing"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_yamllint_rendered_manifests(scenario):
    require_module("yamllint", "yamllint")
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(RENDERED_YAMLLINT)
    texts, _ = rendered(scenario)
    problems = [p for path, text in texts.items() for p in _lint(text, config, path)]
    assert problems == []
