"""LoRA training: loss masking, the RAFT context format and selection, a real (tiny) training run,
and the `ragtune adapters train` CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.cli import adapters_app
from adapters.datacheck import normalise_rows
from adapters.train import (
    IGNORE_INDEX,
    TrainingRefused,
    build_example,
    embedder_for,
    encode_sample,
    load_context_chunks,
    plan_context,
    select_context,
    train_lora,
)
from adapters.validation import validate_adapter
from core.settings import BASE_MODEL_NAME, ChunkingSettings, EmbeddingSettings
from ingest.context import CONTEXT_HEADER, format_context, with_context
from tests.helpers.adapter_files import base_model_dir

# The serving settings' groups (defaults here): training is always given the server's own.
SERVED = {"chunking": ChunkingSettings(), "embedding": EmbeddingSettings()}


def secret_codes(n: int) -> list[dict]:
    return [
        {"prompt": f"Code for item {i}?", "completion": f"ZX-{(i * 37) % 101}-QV"} for i in range(n)
    ]


# ---- masking --------------------------------------------------------------------------------


def test_build_example_masks_the_prompt() -> None:
    ids, labels = build_example([1, 2, 3], [7, 8, 2], max_len=10)
    assert ids == [1, 2, 3, 7, 8, 2]
    assert labels == [IGNORE_INDEX] * 3 + [7, 8, 2]


def test_build_example_cuts_the_answer_and_drops_prompts_that_do_not_fit() -> None:
    assert build_example([1, 2, 3], [7, 8, 9, 2], max_len=5) == (
        [1, 2, 3, 7, 8],
        [IGNORE_INDEX] * 3 + [7, 8],
    )
    assert build_example([1, 2, 3], [7], max_len=3) is None
    assert build_example([1], [], max_len=3) is None


def test_encode_sample_learns_only_the_answer_and_the_end_of_turn() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model_dir())
    messages = [{"role": "user", "content": "Code for item 3?"}]
    ids, labels = encode_sample(tok, messages, "ZX-10-QV", max_len=512)
    learned = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(learned) == "ZX-10-QV<|im_end|>"
    first = labels.index(learned[0])
    # everything before the answer is the prompt exactly as serving renders it
    served = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tok.decode(ids[:first]) == served
    assert all(t == IGNORE_INDEX for t in labels[:first])


# ---- RAFT context ---------------------------------------------------------------------------


def test_format_context_is_numbered_blocks() -> None:
    text = format_context([" Zones are named A-F. ", "SKUs have 6 digits."])
    assert text == f"{CONTEXT_HEADER}\n\n[1] Zones are named A-F.\n\n[2] SKUs have 6 digits."


def test_with_context_joins_a_system_prompt_or_adds_one() -> None:
    user = {"role": "user", "content": "q"}
    added = with_context([user], ["c"])
    assert added == [{"role": "system", "content": format_context(["c"])}, user]
    joined = with_context([{"role": "system", "content": "Be terse."}, user], ["c"])
    assert joined[0]["content"] == "Be terse.\n\n" + format_context(["c"])
    assert with_context([user], []) == [user]


def test_context_chunks_are_the_ingestion_splitters_chunks(tmp_path: Path) -> None:
    from ingest.pipeline import ChunkPipeline

    text = "Para one.\n\nPara two is here.\n\n" + "A long sentence goes on. " * 120
    (tmp_path / "manual.md").write_text(text)
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    chunks = load_context_chunks(tmp_path, **SERVED)
    splitter = ChunkPipeline.splitter_for(ChunkingSettings())
    count = lambda t: len(splitter._tokenizer(t))  # noqa: E731
    assert len(chunks) > 2
    assert all(count(c) <= ChunkingSettings().chunk_tokens for c in chunks)
    assert chunks[0].startswith("Para one.")
    words = set(" ".join(chunks).split())
    assert {"Para", "one.", "two", "sentence"} <= words
    assert load_context_chunks([text], **SERVED) == chunks
    with pytest.raises(ValueError):
        load_context_chunks(["  "], **SERVED)


DOCS = [
    "Warehouse zones are named after birds: heron, kite, wren.",
    "Every SKU has six digits and a checksum letter.",
    "Refunds above 500 euros need a manager's approval.",
    "The cafeteria opens at eight and closes at three.",
    "Shipping to islands takes two extra days.",
]


def test_select_context_puts_the_relevant_chunk_among_distractors() -> None:
    queries = ["Which zone names are used in the warehouse?", "Who approves a big refund?"]
    embed = embedder_for(EmbeddingSettings())
    picked = select_context(queries, DOCS, distractors=2, rng=random.Random(0), embed=embed)
    assert [len(p) for p in picked] == [3, 3]
    assert DOCS[0] in picked[0] and DOCS[2] in picked[1]
    assert all(len(set(p)) == 3 for p in picked)
    # shuffled: over many draws the relevant chunk is not always first
    fake = lambda texts: [[1.0, 0.0] if "zone" in t else [0.0, 1.0] for t in texts]  # noqa: E731
    firsts = {
        select_context(
            ["zone?"], ["zone a", "b", "c"], distractors=2, rng=random.Random(s), embed=fake
        )[0].index("zone a")
        for s in range(20)
    }
    assert len(firsts) > 1


def test_plan_context_gives_context_to_the_chosen_fraction() -> None:
    samples, _ = normalise_rows(secret_codes(10))
    fake = lambda texts: [[1.0, float(i)] for i, _ in enumerate(texts)]  # noqa: E731
    prompts = plan_context(
        samples, DOCS, fraction=0.3, distractors=1, rng=random.Random(1), embed=fake
    )
    with_ctx = [p for p in prompts if p[0]["role"] == "system"]
    assert len(with_ctx) == 3
    assert all(
        p[0]["content"].startswith(CONTEXT_HEADER)
        and "[2] " in p[0]["content"]
        and "[3] " not in p[0]["content"]
        for p in with_ctx
    )
    assert all(p[-1]["role"] == "user" for p in prompts)


# ---- training -------------------------------------------------------------------------------


def test_train_lora_lowers_the_loss_and_writes_a_valid_adapter(tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    result = train_lora(
        secret_codes(60),
        out,
        base_model_dir=base_model_dir(),
        base_model_name=BASE_MODEL_NAME,
        **SERVED,
        rank=4,
        alpha=8,
        max_steps=6,
        lr=3e-3,
        batch_size=4,
        max_len=96,
        eval_samples=8,
        context_docs=DOCS,
        context_fraction=0.1,
        progress=False,
    )
    assert result.loss_after < result.loss_before, (result.loss_before, result.loss_after)
    assert result.steps == 6 and result.samples == 60 and result.context_samples == 6
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_MODEL_NAME
    info = validate_adapter(
        out, base_model_name=BASE_MODEL_NAME, base_model_dir=base_model_dir(), max_rank=16
    )
    assert info.rank == 4 and len(info.target_modules) == 7


def test_train_lora_refuses_bad_data(tmp_path: Path) -> None:
    with pytest.raises(TrainingRefused) as exc:
        train_lora(
            secret_codes(10),
            tmp_path / "a",
            base_model_dir=base_model_dir(),
            base_model_name=BASE_MODEL_NAME,
            **SERVED,
            progress=False,
        )
    assert not exc.value.report.passes and "at least 50" in str(exc.value)
    assert not (tmp_path / "a").exists()


def test_cli_train_prints_the_report_and_refuses(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAGTUNE_MODEL_DIR", str(base_model_dir()))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in secret_codes(10) * 2))
    result = CliRunner().invoke(
        adapters_app, ["train", "--data", str(data), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    assert "DOES NOT PASS" in result.output and "exact duplicates" in result.output
    assert "refusing to train" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_train_reports_bad_json_by_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAGTUNE_MODEL_DIR", str(base_model_dir()))
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{bad\n')
    result = CliRunner().invoke(
        adapters_app, ["train", "--data", str(data), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "train.jsonl line 2" in result.output


def test_register_examples_from_a_json_list_a_training_file_or_lines(tmp_path: Path) -> None:
    from adapters.cli import parse_examples

    long_list = [f"Write a Skerry rule number {i} for zone heron" for i in range(40)]
    assert parse_examples(json.dumps(long_list)) == long_list  # ~2 KB: not a file name
    rows = tmp_path / "train.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in secret_codes(30)))
    assert parse_examples(str(rows))[:2] == ["Code for item 0?", "Code for item 1?"]
    lines = tmp_path / "prompts.txt"
    lines.write_text("first\n\nsecond\n")
    assert parse_examples(str(lines)) == ["first", "second"]
    with pytest.raises(ValueError):
        parse_examples("not json and no such file")
