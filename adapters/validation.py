"""Will the served base model load this LoRA folder? Decided from JSON and tensor headers only.

Nothing here loads weights: adapter_config.json is parsed, and adapter_model.safetensors is read
for its header (names, shapes, dtypes) with safetensors' `safe_open`. Pickle files are refused by
name, never opened. The rules mirror what vLLM's LoRA loader accepts (`vllm/lora/peft_helper.py`),
so that an adapter we accept is one vLLM loads, and one vLLM would refuse fails here, with a
reason an ML engineer can act on: adapter_config.json in `lora_config`, the tensors in
`lora_tensors`, both against the base model's layers (`base_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters.archive import clear_folder, safe_unpack
from adapters.base_layout import base_layout
from adapters.lora_config import check_config, read_config, targeted_leaves
from adapters.lora_tensors import check_tensors
from adapters.peft_files import WEIGHTS_NAME
from core.errors import AdapterError

# Files that can run code when loaded (torch.load, pickle, joblib): refused on sight.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    alpha: float
    target_modules: list[str]
    base_model: str
    size_bytes: int
    num_tensors: int


def validate_adapter(
    folder: Path,
    *,
    base_model_name: str,
    base_model_dir: Path,
    max_rank: int,
    max_bytes: int | None = None,
    param: str = "file",
) -> AdapterInfo:
    """Check an unpacked adapter folder against the served base model; raise AdapterError."""
    folder = Path(folder)

    def fail(code: str, message: str) -> AdapterError:
        return AdapterError(message, code=code, param=param)

    size_bytes = _check_files(folder, max_bytes, fail)
    config = read_config(folder, fail)
    layout = base_layout(Path(base_model_dir))
    rank, alpha, rank_pattern = check_config(config, base_model_name, max_rank, fail)
    targeted = targeted_leaves(config.get("target_modules"), layout, fail)
    num_tensors, present = check_tensors(folder, layout, targeted, rank, rank_pattern, fail)
    return AdapterInfo(
        rank=rank,
        alpha=alpha,
        target_modules=sorted(present),
        base_model=config["base_model_name_or_path"],
        size_bytes=size_bytes,
        num_tensors=num_tensors,
    )


def validate_archive(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int,
    max_files: int,
    base_model_name: str,
    base_model_dir: Path,
    max_rank: int,
) -> tuple[Path, AdapterInfo]:
    """Unpack then validate; on any failure nothing is left in `dest`."""
    created = not Path(dest).exists()
    folder = safe_unpack(archive, dest, max_bytes=max_bytes, max_files=max_files)
    try:
        info = validate_adapter(
            folder,
            base_model_name=base_model_name,
            base_model_dir=base_model_dir,
            max_rank=max_rank,
            max_bytes=max_bytes,
        )
    except BaseException:
        clear_folder(Path(dest), created)
        raise
    return folder, info


def _check_files(folder: Path, max_bytes: int | None, fail) -> int:
    size = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise fail(
                "link_in_folder",
                f"{rel} is a link or special file; an adapter folder may hold only regular files",
            )
        if path.is_file():
            size += path.stat().st_size
            if path.suffix.lower() in PICKLE_SUFFIXES:
                raise fail(
                    "pickle_not_allowed",
                    f"found {rel}: pickle-based files ({', '.join(sorted(PICKLE_SUFFIXES))}) "
                    "can run code when loaded, so this server accepts weights only as "
                    f"{WEIGHTS_NAME}. Remove the file, or re-save with "
                    "save_pretrained(..., safe_serialization=True)",
                )
    if max_bytes is not None and size > max_bytes:
        raise fail(
            "adapter_too_large",
            f"the adapter folder holds {size} bytes, more than this server's limit of {max_bytes}",
        )
    return size
