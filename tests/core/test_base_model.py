"""Where the base model is found or prepared (serve and `adapters train` share it)."""

from __future__ import annotations

import pytest

from core.base_model import ModelPreparationError, ensure_base_model


def test_a_folder_with_a_model_is_taken_as_it_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert ensure_base_model(tmp_path, log=lambda *_: None) == tmp_path


def test_a_folder_holding_something_else_is_refused_and_left_alone(tmp_path):
    # Preparing replaces the folder: a mistyped --base-model-dir must not lose its files.
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ModelPreparationError, match="no config.json"):
        ensure_base_model(tmp_path, log=lambda *_: None)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
