"""Adapter folders and archives for tests: one valid peft adapter, and each way to break it."""

from __future__ import annotations

import atexit
import functools
import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from core.settings import BASE_MODEL_NAME

ROOT = Path(__file__).resolve().parents[2]

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


# ---- archives -------------------------------------------------------------------------------


def tar_gz_of(folder: Path, dest: Path, *, top: str | None = None, mode: str = "w:gz") -> Path:
    """An archive of the folder's files, at top level or under one folder `top`."""
    with tarfile.open(dest, mode) as tf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            tf.add(path, arcname=f"{top}/{rel}" if top else rel, recursive=False)
    return dest


def zip_of(folder: Path, dest: Path, *, top: str | None = None) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                zf.write(path, f"{top}/{rel}" if top else rel)
    return dest


def _tar(dest: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode="w:gz") -> Path:
    with tarfile.open(dest, mode, format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    return info, None


CONFIG = b'{"peft_type": "LORA"}'


def tar_dotdot(dest: Path) -> Path:
    return _tar(dest, [_file("adapter_config.json", CONFIG), _file("../evil.txt", b"x")])


def tar_absolute(dest: Path) -> Path:
    return _tar(dest, [_file("/tmp/evil.txt", b"x"), _file("adapter_config.json", CONFIG)])


def tar_symlink(dest: Path) -> Path:
    return _tar(dest, [_special("adapter_config.json", tarfile.SYMTYPE, "/etc/passwd")])


def tar_hardlink(dest: Path) -> Path:
    return _tar(
        dest,
        [_file("adapter_config.json", CONFIG), _special("x", tarfile.LNKTYPE, "/etc/passwd")],
    )


def tar_device(dest: Path) -> Path:
    return _tar(dest, [_file("adapter_config.json", CONFIG), _special("dev", tarfile.CHRTYPE)])


def tar_declared_bomb(dest: Path, size: int) -> Path:
    """A few KB compressed, `size` bytes of zeros declared and unpacked."""
    info = tarfile.TarInfo("adapter_model.safetensors")
    info.size = size

    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b):  # tarfile copies in blocks; never hold `size` bytes
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(dest, "w:gz") as tf:
        tf.addfile(_file("adapter_config.json", CONFIG)[0], io.BytesIO(CONFIG))
        tf.addfile(info, io.BufferedReader(Zeros()))
    return dest


def tar_pax_bomb(dest: Path, size: int) -> Path:
    """A member whose PAX header alone expands to `size` bytes: no file size to check."""
    info, data = _file("adapter_config.json", CONFIG)
    info.pax_headers = {"comment": "A" * size}
    return _tar(dest, [(info, data)])


def tar_many_files(dest: Path, n: int) -> Path:
    return _tar(
        dest, [_file("adapter_config.json", CONFIG)] + [_file(f"f{i}.txt", b"x") for i in range(n)]
    )


def tar_duplicate_member(dest: Path) -> Path:
    return _tar(dest, [_file("adapter_config.json", CONFIG), _file("adapter_config.json", b"{}")])


def zip_dotdot(dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("adapter_config.json", CONFIG)
        zf.writestr("../../evil.txt", b"x")
    return dest


def zip_absolute(dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("/etc/evil.txt", b"x")
    return dest


def zip_symlink(dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        info = zipfile.ZipInfo("adapter_config.json")
        info.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    return dest


def zip_bomb(dest: Path, size: int) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("adapter_config.json", CONFIG)
        with zf.open("adapter_model.safetensors", "w") as w:
            chunk = bytes(1 << 20)
            for _ in range(0, size, len(chunk)):
                w.write(chunk)
    return dest


def zip_lying_sizes(dest: Path, real: int, declared: int) -> Path:
    """Deflated `real` zero bytes whose headers claim only `declared` bytes."""
    import struct

    zip_bomb(dest, real)
    with zipfile.ZipFile(dest) as zf:
        info = zf.getinfo("adapter_model.safetensors")
    data = bytearray(dest.read_bytes())
    struct.pack_into("<I", data, info.header_offset + 22, declared)  # local file header
    central = data.rindex(b"PK\x01\x02")  # the last central directory entry is this member
    struct.pack_into("<I", data, central + 24, declared)
    dest.write_bytes(bytes(data))
    return dest


def zip_many_files(dest: Path, n: int) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("adapter_config.json", CONFIG)
        for i in range(n):
            zf.writestr(f"f{i}.txt", b"x")
    return dest


def not_an_archive(dest: Path) -> Path:
    dest.write_bytes(b"this is a plain text file named like an archive\n" * 20)
    return dest


def gzip_not_tar(dest: Path) -> Path:
    import gzip

    dest.write_bytes(gzip.compress(b"plain text, not a tar stream\n" * 50))
    return dest


def truncated_tar_gz(dest: Path, folder: Path) -> Path:
    tar_gz_of(folder, dest)
    data = dest.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest
