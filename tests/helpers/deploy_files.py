"""The deployment files under test (Helm chart, compose files, Dockerfile, Prometheus and yamllint
configs) and the dev tools that check them: each tool missing is a skip that says how to install
it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ragtune"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
YAMLLINT_CONFIG = ROOT / "deploy" / "yamllint.yml"
BIN = Path(sys.executable).parent  # the venv's console scripts


def require_module(module: str, dist: str):
    try:
        return __import__(module)
    except Exception as exc:  # noqa: BLE001 - an unloadable native library is a skip too
        pytest.skip(f"{dist} is not importable ({type(exc).__name__}: {exc}); "
                    f"install the dev extra: pip install -e '.[dev]'")


def require_script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"`{name}` not found in {BIN} or on PATH; install the dev extra")
        return found
    return str(path)
