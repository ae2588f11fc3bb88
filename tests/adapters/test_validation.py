"""validate_adapter against the real base model folder: a real peft adapter passes, each broken
one fails with its own code before anything is loaded, and nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.base_layout import _introspected_layout, base_layout
from adapters.validation import AdapterInfo, validate_adapter, validate_archive
from core.errors import AdapterError
from core.settings import BASE_MODEL_NAME
from tests.helpers import adapter_files as f

MAX_RANK = 64


@pytest.fixture(scope="module")
def base_dir() -> Path:
    return f.base_model_dir()


def check(folder: Path, base_dir: Path, **kw) -> AdapterInfo:
    return validate_adapter(
        folder, base_model_name=BASE_MODEL_NAME, base_model_dir=base_dir, max_rank=MAX_RANK, **kw
    )


def test_valid_peft_adapter(tmp_path: Path, base_dir: Path) -> None:
    info = check(f.valid_adapter(tmp_path / "a"), base_dir)
    assert info.rank == 8 and info.alpha == 16.0
    assert info.target_modules == sorted(f.TARGET_MODULES)
    assert info.base_model == BASE_MODEL_NAME
    assert info.num_tensors == 30 * 7 * 2
    assert info.size_bytes > 30 * 7 * 8 * (576 + 192) * 4 // 2


def test_valid_archive_round_trip(tmp_path: Path, base_dir: Path) -> None:
    src = f.valid_adapter(tmp_path / "src")
    archive = f.tar_gz_of(src, tmp_path / "up.tgz", top="sql-v2")
    folder, info = validate_archive(
        archive,
        tmp_path / "dest",
        max_bytes=50 << 20,
        max_files=16,
        base_model_name=BASE_MODEL_NAME,
        base_model_dir=base_dir,
        max_rank=MAX_RANK,
    )
    assert folder == tmp_path / "dest" / "sql-v2" and info.rank == 8


@pytest.mark.parametrize(
    "changes",
    [
        {"base_model_name_or_path": "SmolLM2-135M-Instruct"},  # bare basename: accepted
        {"target_modules": "all-linear"},
        {"target_modules": r".*\.(q|k|v|o|gate|up|down)_proj"},  # PEFT's regex form
        {"use_rslora": True, "init_lora_weights": "gaussian"},
        {"rank_pattern": {"q_proj": 8}, "alpha_pattern": {"q_proj": 4}},
    ],
)
def test_accepted_config_variants(tmp_path: Path, base_dir: Path, changes: dict) -> None:
    folder = f.valid_adapter(tmp_path / "a")
    f.edit_config(folder, **changes)
    assert check(folder, base_dir).rank == 8


@pytest.mark.parametrize("name", list(f.BAD_ADAPTERS))
def test_bad_adapters_are_refused_and_leave_nothing(
    tmp_path: Path, base_dir: Path, name: str
) -> None:
    mutate, code = f.BAD_ADAPTERS[name]
    src = f.valid_adapter(tmp_path / "src")
    mutate(src)
    archive = f.tar_gz_of(src, tmp_path / "upload.tar", top="adapter", mode="w")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(AdapterError) as exc:
        validate_archive(
            archive,
            work / "unpacked",
            max_bytes=50 << 20,
            max_files=16,
            base_model_name=BASE_MODEL_NAME,
            base_model_dir=base_dir,
            max_rank=MAX_RANK,
        )
    err = exc.value
    assert (err.code, err.status, err.param) == (code, 422, "file"), err.message
    assert list(work.iterdir()) == []
    # pickles are refused by name: never unpickled
    assert not f.pickle_marker(src).exists()
    assert not f.pickle_marker(work / "unpacked" / "adapter").exists()


def test_regex_target_reaching_vocabulary_is_refused(tmp_path: Path, base_dir: Path) -> None:
    folder = f.valid_adapter(tmp_path / "a")
    f.edit_config(folder, target_modules=r".*(q_proj|embed_tokens)")
    with pytest.raises(AdapterError) as exc:
        check(folder, base_dir)
    assert exc.value.code == "unsupported_target_modules"
    assert "embed_tokens" in exc.value.message and "q_proj" in exc.value.message


def test_registered_folder_with_symlink_is_refused(tmp_path: Path, base_dir: Path) -> None:
    folder = f.valid_adapter(tmp_path / "a")
    f.symlink_in_folder(folder)
    with pytest.raises(AdapterError) as exc:
        check(folder, base_dir, param="uri")
    assert (exc.value.code, exc.value.param) == ("link_in_folder", "uri")


def test_folder_size_limit(tmp_path: Path, base_dir: Path) -> None:
    with pytest.raises(AdapterError) as exc:
        check(f.valid_adapter(tmp_path / "a"), base_dir, max_bytes=1 << 20)
    assert exc.value.code == "adapter_too_large"


def test_messages_say_what_was_found_and_what_is_accepted(tmp_path: Path, base_dir: Path) -> None:
    folder = f.valid_adapter(tmp_path / "a")
    f.wrong_base_model(folder)
    with pytest.raises(AdapterError) as exc:
        check(folder, base_dir)
    assert "SmolLM2-360M-Instruct" in exc.value.message
    assert BASE_MODEL_NAME in exc.value.message


def test_config_layout_matches_the_model_built_by_transformers(base_dir: Path) -> None:
    """The llama table (sizes from config.json) equals the linear layers transformers builds."""
    import json

    config = json.loads((base_dir / "config.json").read_text())
    table = base_layout(base_dir)
    built = _introspected_layout(base_dir, config)
    assert table.modules == built.modules
    assert table.leaves == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert table.num_layers == 30
