"""The Helm chart as `helm template` prints it, rendered by Helm itself (as a library) for each
values scenario the deploy tests check."""

from __future__ import annotations

import copy
import functools

import yaml

from tests.helpers.deploy_files import CHART, require_module

RELEASE, NAMESPACE = "rt", "ml"
EXTERNAL_QDRANT = "http://qdrant.search.svc:6333"

SCENARIOS: dict[str, tuple[list[str], dict]] = {
    "default": ([], {}),
    "gpu": (["values-gpu.yaml"], {}),
    # Qdrant outside the release, the chart's own database Secret, monitoring on, 3 engines.
    "external": (
        [],
        {
            "qdrant": {"enabled": False},
            "externalQdrant": {"url": EXTERNAL_QDRANT},
            "qdrantApiKey": {"existingSecret": "qdrant-key"},
            "database": {"url": "postgresql://ragtune:pw@db.example:5432/ragtune"},
            "networkPolicy": {"enabled": True},
            "serviceMonitor": {"enabled": True},
            "vllm": {"replicas": 3},
            "api": {"autoscaling": {"enabled": False}},
        },
    ),
    "no-netpol": ([], {"networkPolicy": {"enabled": False}}),
    # The base model on a claim, the adapter store on a CSI volume (object storage).
    "volumes": (
        ["values-gpu.yaml"],
        {
            "model": {"source": "pvc", "existingClaim": "models", "subPath": "llama"},
            "adapters": {"volume": {"csi": {"driver": "example.csi.k8s.io",
                                            "volumeAttributes": {"bucket": "adapters"}}}},
        },
    ),
}


def _merge(base: dict, override: dict) -> dict:
    """Helm's coalescing of values files: maps merge, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def scenario_values(scenario: str) -> dict:
    files, overrides = SCENARIOS[scenario]
    values: dict = {}
    for name in files:
        values = _merge(values, yaml.safe_load((CHART / name).read_text()))
    return _merge(values, overrides)


def render_values(values: dict) -> dict[str, str]:
    helm = require_module("helm_python", "helm-python-sdk")
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


@functools.cache
def rendered(scenario: str) -> tuple[dict[str, str], list[dict]]:
    """(template path -> manifest text, every object), as `helm template` would print them."""
    raw = render_values(scenario_values(scenario))
    texts = {path: text.strip() + "\n" for path, text in raw.items()
             if not path.endswith("NOTES.txt") and text.strip()}
    docs = [doc for text in texts.values() for doc in yaml.safe_load_all(text) if doc]
    return texts, docs


def render(scenario: str) -> list[dict]:
    return copy.deepcopy(rendered(scenario)[1])
