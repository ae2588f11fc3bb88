"""LoRA training: loss masking, the RAFT context format and selection, a real (tiny) training run,
and the `ragtune adapters train` CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.base_layout import base_layout
from adapters.cli import adapters_app
from adapters.peft_files import CONFIG_NAME, TRAINING_NAME, WEIGHTS_NAME
from adapters.raft import load_context_chunks
from adapters.train import (
    IGNORE_INDEX,
    PAD_MULTIPLE,
    TrainingRefused,
    build_example,
    encode_sample,
    micro_batches,
    padded,
    train_lora,
)
from adapters.validation import validate_adapter
from core.settings import BASE_MODEL_NAME, ChunkingSettings, EmbeddingSettings, QdrantSettings
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
    # A client's system message in OpenAI's list-of-parts form: its text, never a Python repr.
    parts = {"role": "system", "content": [{"type": "text", "text": "Be "},
                                           {"type": "text", "text": "terse."}]}
    joined = with_context([parts, user], ["c"])
    assert joined[0]["content"] == "Be terse.\n\n" + format_context(["c"])


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
    "Refunds above 500 euros need a manager's approval.",
    "The cafeteria opens at eight and closes at three.",
    *(
        " ".join(f"Item {i} carries code ZX-{(i * 37) % 101}-QV." for i in range(j, j + 20))
        for j in (0, 20, 40)
    ),
]


# ---- micro-batches --------------------------------------------------------------------------


def test_micro_batches_sort_by_length_and_keep_each_pass_within_the_token_budget() -> None:
    rng = random.Random(0)
    lengths = [rng.choice([40, 90, 300, 700]) + rng.randrange(10) for _ in range(24)]
    passes = micro_batches(lengths, 1024)
    assert sorted(i for p in passes for i in p) == list(range(24))
    for p in passes:
        assert len(p) == 1 or len(p) * padded(max(lengths[i] for i in p)) <= 1024
    # sorted: each pass's rows are no longer than the next pass's
    widths = [[lengths[i] for i in p] for p in passes]
    assert all(max(a) <= min(b) for a, b in zip(widths, widths[1:], strict=False))
    # short rows share passes, a row over the budget goes alone
    assert len(passes) < 24 and micro_batches([2000, 10, 10], 1024) == [[1, 2], [0]]
    assert padded(1) == PAD_MULTIPLE and padded(PAD_MULTIPLE) == PAD_MULTIPLE


# ---- training -------------------------------------------------------------------------------


def test_train_lora_with_raft_context_writes_the_adapter_and_its_exact_training_record(
    tmp_path: Path, monkeypatch
) -> None:
    import torch

    import adapters.train

    shapes: list[tuple[int, int]] = []
    threads: set[int] = set()
    real_collate = adapters.train.collate

    def collate(examples, pad_id):
        batch = real_collate(examples, pad_id)
        shapes.append(tuple(batch[0].shape))
        threads.add(torch.get_num_threads())
        return batch

    monkeypatch.setattr(adapters.train, "collate", collate)
    out = tmp_path / "adapter"
    result = train_lora(
        secret_codes(60),
        out,
        base_model_dir=base_model_dir(),
        base_model_name=BASE_MODEL_NAME,
        **SERVED,
        rank=4,
        alpha=8,
        max_steps=4,
        lr=3e-3,
        batch_size=4,
        max_len=512,
        tokens_per_pass=256,
        context_docs=DOCS,
        context_fraction=0.5,
        top_k=2,
        min_score=-1.0,
        context_max_tokens=300,
        oracle_free_share=0.2,
        threads=2,
        progress=False,
    )
    # every pass ran on the threads asked for, not on the one the query embedding left set
    assert threads == {2}, threads
    # 60 rows: 6 held out, 54 trained on, 27 of them with context, 5 of those without oracle
    assert (result.held_out, result.samples, result.steps) == (6, 54, 4)
    assert (result.context_samples, result.oracle_free_samples) == (27, 5)
    assert result.loss_after < result.loss_before, (result.loss_before, result.loss_after)
    assert result.held_out_no_context == result.loss_after
    assert result.held_out_with_context is not None
    # every pass within the token budget (one long row alone); steps of 4 rows took more passes
    assert shapes and all(rows * width <= 256 or rows == 1 for rows, width in shapes)
    assert result.passes > result.steps
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CONFIG_NAME, WEIGHTS_NAME, TRAINING_NAME]
    )
    record = json.loads((out / TRAINING_NAME).read_text())
    assert record == result.record
    assert record == {
        "format": 1,
        "base_model": BASE_MODEL_NAME,
        "context": {
            "top_k": 2,
            "min_score": -1.0,
            "context_max_tokens": 300,
            "share": 0.5,
            "oracle_free_share": 0.2,
            "retrieval": adapters.train.retrieval_kind(QdrantSettings()),
        },
        "steps": 4,
        "seconds": record["seconds"],
        "samples": 54,
        "loss": {
            "before": round(result.loss_before, 4),
            "after": round(result.loss_after, 4),
            "held_out_no_context": round(result.held_out_no_context, 4),
            "held_out_with_context": round(result.held_out_with_context, 4),
        },
    }
    assert record["context"]["retrieval"] in ("dense", "hybrid")
    assert isinstance(record["seconds"], float) and 0 < record["seconds"] <= result.seconds + 1
    assert result.peak_rss_bytes > 100 * 2**20
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["base_model_name_or_path"] == BASE_MODEL_NAME
    info = validate_adapter(
        out, base_model_name=BASE_MODEL_NAME, base_model_dir=base_model_dir(), max_rank=16
    )
    assert info.rank == 4 and len(info.target_modules) == 7


def test_cli_train_without_context_records_no_context_and_prints_losses_and_memory(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("RAGTUNE_MODEL_DIR", str(base_model_dir()))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in secret_codes(50)))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        adapters_app,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--rank",
            "2",
            "--batch-size",
            "2",
            "--max-len",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / TRAINING_NAME).read_text())
    assert record["context"] is None and record["steps"] == 2 and record["samples"] == 45
    assert record["loss"]["held_out_with_context"] is None
    assert record["loss"]["held_out_no_context"] == record["loss"]["after"]
    assert "held-out answer loss (5 rows not trained on)" in result.output
    held_line = next(x for x in result.output.splitlines() if "held-out answer loss" in x)
    assert held_line.endswith("without context"), held_line
    assert "peak memory" in result.output and "trained 2 steps" in result.output


def test_lora_layers_trains_only_the_top_layers_and_the_adapter_says_so(tmp_path: Path) -> None:
    from safetensors import safe_open

    layers = base_layout(base_model_dir()).num_layers
    out = tmp_path / "top"
    train_lora(
        secret_codes(50),
        out,
        base_model_dir=base_model_dir(),
        base_model_name=BASE_MODEL_NAME,
        **SERVED,
        rank=2,
        lora_layers=2,
        max_steps=1,
        batch_size=2,
        max_len=64,
        held_out=0.0,
        progress=False,
    )
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["layers_to_transform"] == [layers - 2, layers - 1]
    with safe_open(out / WEIGHTS_NAME, framework="numpy") as f:
        found = {int(k.split(".layers.")[1].split(".")[0]) for k in f.keys()}
    assert found == {layers - 2, layers - 1}
    # it validates as a servable adapter: every tensor on a targeted module of the base model
    info = validate_adapter(
        out, base_model_name=BASE_MODEL_NAME, base_model_dir=base_model_dir(), max_rank=16
    )
    assert len(info.target_modules) == 7
    with pytest.raises(ValueError, match="lora_layers must be"):
        train_lora(
            secret_codes(50),
            tmp_path / "none",
            base_model_dir=base_model_dir(),
            base_model_name=BASE_MODEL_NAME,
            **SERVED,
            lora_layers=layers + 1,
            progress=False,
        )
    assert not (tmp_path / "none").exists()


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
