"""Adapter folders for tests: the test base model, one valid peft adapter, and each way to break
it (BAD_ADAPTERS: mutation and the code validation answers)."""

from __future__ import annotations

import atexit
import functools
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.settings import BASE_MODEL_NAME

ROOT = Path(__file__).resolve().parents[3]

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PREFIX = "base_model.model.model.layers"


@functools.cache
def base_model_dir() -> Path:
    from core.base_model import prepare_model

    target = Path(os.environ.get("RAGTUNE_TEST_MODEL_DIR", ROOT / ".data" / "models" / "base"))
    return prepare_model(target, log=lambda *_: None)


@functools.cache
def _valid_template(rank: int) -> Path:
    """Built once per test process with peft on the real base model; copied for each use."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(tempfile.mkdtemp(prefix="ragtune-lora-")) / "adapter"
    atexit.register(shutil.rmtree, out.parent, True)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir(), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = BASE_MODEL_NAME
    peft_model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
    (out / "README.md").unlink(missing_ok=True)
    return out


def valid_adapter(dest: Path, rank: int = 8) -> Path:
    shutil.copytree(_valid_template(rank), dest)
    return dest


# ---- mutations: each takes a valid folder and breaks one rule --------------------------------


def edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_tensors(folder: Path, change: Callable[[dict], None]) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def wrong_base_model(f: Path) -> None:
    edit_config(f, base_model_name_or_path="HuggingFaceTB/SmolLM2-360M-Instruct")


def local_path_base_model(f: Path) -> None:
    edit_config(f, base_model_name_or_path="/home/me/models/base")


def rank_too_high(f: Path) -> None:
    edit_config(f, r=128)  # the server under test allows 64


def rank_pattern_too_high(f: Path) -> None:
    edit_config(f, rank_pattern={"q_proj": 128})


def not_lora(f: Path) -> None:
    edit_config(f, peft_type="IA3")


def dora(f: Path) -> None:
    edit_config(f, use_dora=True)


def dora_tensor(f: Path) -> None:
    import torch

    def add(t: dict) -> None:
        t[f"{PREFIX}.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(576)

    edit_tensors(f, add)


def modules_to_save(f: Path) -> None:
    edit_config(f, modules_to_save=["lm_head"])


def bias_all(f: Path) -> None:
    edit_config(f, bias="all")


def pissa_init(f: Path) -> None:
    edit_config(f, init_lora_weights="pissa")


def embed_target(f: Path) -> None:
    edit_config(f, target_modules=[*TARGET_MODULES, "embed_tokens"])


def foreign_target(f: Path) -> None:
    edit_config(f, target_modules=["c_attn"])


def missing_config(f: Path) -> None:
    (f / "adapter_config.json").unlink()


def bad_json_config(f: Path) -> None:
    (f / "adapter_config.json").write_text("{not json")


def missing_weights(f: Path) -> None:
    (f / "adapter_model.safetensors").unlink()


def garbage_weights(f: Path) -> None:
    (f / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")


class _TouchOnLoad:
    """Unpickling this creates a marker file: proof that a .bin was (wrongly) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickle_marker(f: Path) -> Path:
    return f.parent / f"{f.name}.unpickled"


def pickle_bin(f: Path) -> None:
    (f / "adapter_model.bin").write_bytes(pickle.dumps(_TouchOnLoad(pickle_marker(f))))


def training_args_bin(f: Path) -> None:
    sub = f / "checkpoint-10"
    sub.mkdir()
    (sub / "training_args.bin").write_bytes(pickle.dumps(_TouchOnLoad(pickle_marker(f))))


def wrong_shape(f: Path) -> None:
    import torch

    def change(t: dict) -> None:
        t[f"{PREFIX}.3.self_attn.k_proj.lora_B.weight"] = torch.zeros(576, 8)  # k_proj out is 192

    edit_tensors(f, change)


def unexpected_tensor(f: Path) -> None:
    import torch

    def add(t: dict) -> None:
        t["base_model.model.model.norm.lora_A.weight"] = torch.zeros(8, 576)

    edit_tensors(f, add)


def layer_out_of_range(f: Path) -> None:
    import torch

    def add(t: dict) -> None:
        t[f"{PREFIX}.30.self_attn.q_proj.lora_A.weight"] = torch.zeros(8, 576)
        t[f"{PREFIX}.30.self_attn.q_proj.lora_B.weight"] = torch.zeros(576, 8)

    edit_tensors(f, add)


def lonely_lora_a(f: Path) -> None:
    edit_tensors(f, lambda t: t.pop(f"{PREFIX}.5.mlp.up_proj.lora_B.weight"))


def rank_pattern_disagrees(f: Path) -> None:
    edit_config(f, rank_pattern={"q_proj": 4})  # the q_proj tensors are rank 8


def symlink_in_folder(f: Path) -> None:
    (f / "notes.txt").symlink_to("/etc/hostname")


# name -> (mutation, expected code)
BAD_ADAPTERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "wrong base model": (wrong_base_model, "base_model_mismatch"),
    "local path as base model": (local_path_base_model, "base_model_mismatch"),
    "rank too high": (rank_too_high, "rank_too_high"),
    "rank_pattern too high": (rank_pattern_too_high, "rank_too_high"),
    "not lora": (not_lora, "not_lora"),
    "dora in config": (dora, "dora_not_supported"),
    "dora magnitude tensor": (dora_tensor, "dora_not_supported"),
    "modules_to_save": (modules_to_save, "modules_to_save_not_supported"),
    "bias": (bias_all, "bias_not_supported"),
    "pissa init": (pissa_init, "unsupported_lora_feature"),
    "embed_tokens target": (embed_target, "unsupported_target_modules"),
    "gpt2 target": (foreign_target, "unsupported_target_modules"),
    "missing config": (missing_config, "missing_config"),
    "config not json": (bad_json_config, "invalid_config"),
    "missing weights": (missing_weights, "missing_weights"),
    "garbage safetensors": (garbage_weights, "invalid_weights"),
    ".bin pickle": (pickle_bin, "pickle_not_allowed"),
    "training_args.bin": (training_args_bin, "pickle_not_allowed"),
    "wrong tensor shape": (wrong_shape, "tensor_shape_mismatch"),
    "rank_pattern disagrees with tensors": (rank_pattern_disagrees, "tensor_shape_mismatch"),
    "unexpected tensor": (unexpected_tensor, "unexpected_tensors"),
    "layer out of range": (layer_out_of_range, "unexpected_tensors"),
    "lora_A without lora_B": (lonely_lora_a, "missing_weights"),
}
