"""deploy/Dockerfile, checked offline: its stages parsed (non-root, healthchecks, the entrypoint),
a pinned slim base, hadolint (which must flag a bad file, so a pass means something), and the
.dockerignore that admits only what the image needs."""

from __future__ import annotations

import re
import subprocess

from tests.helpers.deploy_files import DOCKERFILE, ROOT, require_module, require_script


def _stages() -> dict[str, list]:
    dockerfile = require_module("dockerfile", "dockerfile")
    stages: dict[str, list] = {}
    current = None
    for cmd in dockerfile.parse_file(str(DOCKERFILE)):
        if cmd.cmd.upper() == "FROM":
            value = list(cmd.value)
            current = value[2] if len(value) >= 3 and value[1].upper() == "AS" else value[0]
            stages[current] = [cmd]
        elif current is not None:
            stages[current].append(cmd)
    return stages


def _last(commands: list, name: str):
    found = [c for c in commands if c.cmd.upper() == name]
    return found[-1] if found else None


def test_dockerfile_final_stage_is_ragtune_non_root_with_healthcheck():
    stages = _stages()
    assert len(stages) >= 3, "multi-stage: build, engine-cpu, runtime"
    final_name = list(stages)[-1]
    assert final_name == "ragtune", "the default target is the API/worker image"
    for name in ("ragtune", "engine-cpu"):
        commands = stages[name]
        user = _last(commands, "USER")
        assert user is not None, f"{name}: no USER"
        uid = user.value[0].split(":")[0]
        assert uid not in ("root", "0") and uid.isdigit(), f"{name}: USER {uid}"
        health = _last(commands, "HEALTHCHECK")
        assert health is not None and "CMD" in health.value, f"{name}: no HEALTHCHECK"
    final = stages["ragtune"]
    assert "/healthz" in " ".join(_last(final, "HEALTHCHECK").value)
    entry, cmd = _last(final, "ENTRYPOINT"), _last(final, "CMD")
    assert entry.json and list(entry.value) == ["ragtune"]
    assert cmd.json and list(cmd.value) == ["serve"]


def test_dockerfile_base_is_pinned_slim_python():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    for line in re.findall(r"^FROM\s+(\S+)", text, re.M):
        assert line in ("${PYTHON_IMAGE}", "base", "build") or ":" in line, line
        assert not line.endswith(":latest"), line
    assert re.search(r"^ARG TORCH_SPEC=torch==[\d.]+\+cpu$", text, re.M)
    assert "deploy/install_engine.py --engine cpu" in text


def test_dockerfile_passes_hadolint():
    hadolint = require_script("hadolint")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And it does flag what it should (a root image on :latest), so the pass above means something.
    bad = subprocess.run([hadolint, "-"], input="FROM python:latest\nRUN apt-get install -y x\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "DL3007" in bad.stdout


def test_dockerignore_admits_only_what_the_image_needs():
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split("\n")
    patterns = [p for p in ignore if p and not p.startswith("#")]
    assert patterns[0] == "**", "everything is excluded first"
    admitted = {p[1:] for p in patterns if p.startswith("!")}
    assert {"pyproject.toml", "README.md", "service/**", "ingest/**", "adapters/**"} <= admitted
    assert not [p for p in admitted if ".venv" in p or p.startswith("tests")]
