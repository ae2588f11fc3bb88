"""Train a LoRA adapter the way it will be served.

The base model's own chat template builds every sample (SmolLM2's inserts its default system
prompt when a prompt has none, and vLLM renders served prompts the same way); the loss counts
only the answer's tokens and the end-of-turn token, so the model learns to stop. Only the answer
positions go through the output head: on a 135M model the head is a fifth of the weights, and
full-sequence logits of long context prompts were what ran training out of memory.

With `context_docs`, a share of the samples carries retrieved context exactly as the adapter_rag
path serves it (RAFT): the ORACLE passages are the chunks holding what the answer uses (its rare
codes, names and numbers, IDF-weighted), the DISTRACTORS are what the served retriever returns
for the instruction (a real search of a temporary embedded store filled by ingestion's chunking
and the server's embedder), cut to the serving top_k, score floor and token budget, in retrieval
order, formatted by `with_context` (adapters/raft.py). A share of the context rows keeps only
the distractors, so the adapter still writes valid answers when retrieval misses.

Chunking and embedding are the server's own settings groups (`Settings.chunking`,
`Settings.embedding`), passed in by the caller: context built with other chunk sizes or another
embedding model would not look like the context the adapter is served with.

Memory: each optimizer step's samples are sorted by length and split into forward passes of at
most `tokens_per_pass` padded tokens (gradients accumulate over them), so a step of long context
prompts never needs more than one pass's activations.

The output folder holds adapter_config.json (naming the served base model),
adapter_model.safetensors and the training record (TRAINING_NAME), nothing else, and is validated
before returning. Torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.base_layout import base_layout
from adapters.datacheck import DataReport, check_training_data, normalise_rows
from adapters.peft_files import CONFIG_NAME, TRAINING_NAME, WEIGHTS_NAME
from adapters.raft import (
    DEFAULT_CONTEXT_FRACTION,
    DEFAULT_CONTEXT_MAX_TOKENS,
    DEFAULT_COUNTERFACTUAL_SHARE,
    DEFAULT_MIN_SCORE,
    DEFAULT_ORACLE_FREE_SHARE,
    DEFAULT_TOP_K,
    ServedRetriever,
    load_context_chunks,
    plan_context,
)
from adapters.validation import AdapterInfo, validate_adapter
from core.settings import ChunkingSettings, EmbeddingSettings, QdrantSettings

IGNORE_INDEX = -100

DEFAULT_LR = 1e-3
DEFAULT_MAX_LEN = 1024  # a sample's tokens, context included (~600 context tokens fit)
# A forward pass holds at most this many padded tokens. Measured on SmolLM2-135M in fp32 (LoRA
# r=16 on every projection, answer-only head): a 2048-token pass peaked at +2.9 GB over the
# loaded model, ~1.4 MB a token; 2048 keeps training near 4 GB beside a vLLM engine on a 24 GB
# machine. Gradient checkpointing (saved activations ~10x smaller, ~30% more compute) turns on
# by itself when a pass could exceed ACTIVATION_BUDGET_BYTES.
DEFAULT_TOKENS_PER_PASS = 2048
ACTIVATION_BYTES_PER_TOKEN = 1_500_000
ACTIVATION_BUDGET_BYTES = 3_500_000_000
PAD_MULTIPLE = 16  # fewer distinct tensor shapes for the allocator to keep
HELD_OUT_SHARE = 0.1
MAX_HELD_OUT = 32
MIN_ROWS_FOR_HELD_OUT = 40

# ---- tokenisation, loss masking and micro-batches -------------------------------------------


def build_example(
    prompt_ids: Sequence[int], answer_ids: Sequence[int], max_len: int
) -> tuple[list[int], list[int]] | None:
    """input_ids and labels (-100 over the prompt, so only the answer is learned); an answer
    that does not fit is cut at max_len; None when the prompt alone leaves no room."""
    room = max_len - len(prompt_ids)
    if room <= 0 or not answer_ids:
        return None
    answer = list(answer_ids[:room])
    return [*prompt_ids, *answer], [IGNORE_INDEX] * len(prompt_ids) + answer


def encode_sample(tokenizer, messages: Sequence[dict], completion: str, max_len: int):
    # The prompt is rendered with the generation prompt, as vLLM renders it when serving; the
    # answer is tokenised on its own, as the model generates it.
    prompt = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    answer_ids = tokenizer.encode(completion + tokenizer.eos_token, add_special_tokens=False)
    return build_example(prompt_ids, answer_ids, max_len)


def padded(length: int) -> int:
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


def micro_batches(lengths: Sequence[int], tokens_per_pass: int) -> list[list[int]]:
    """One optimizer step's samples (their lengths) as forward passes: sorted by length, so
    similar lengths share a pass and padding is small; each pass's padded size (rows x longest,
    rounded up to PAD_MULTIPLE) stays within `tokens_per_pass` (a longer sample goes alone)."""
    passes: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if current and padded(lengths[i]) * (len(current) + 1) > tokens_per_pass:
            passes.append(current)
            current = []
        current.append(i)
    if current:
        passes.append(current)
    return passes


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int):
    import torch

    width = padded(max(len(ids) for ids, _ in examples))
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, labels, mask


def _loss_sum(model, batch, device):
    """Summed cross-entropy over answer tokens, and how many there were. The decoder runs over
    every position; the output head only over the positions that predict an answer token."""
    import torch.nn.functional as F

    ids, labels, mask = (t.to(device) for t in batch)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
    loss = F.cross_entropy(logits, target[keep], reduction="sum")
    return loss, int(keep.sum())


def _mean_loss(model, examples, pad_id, device, tokens_per_pass: int) -> float | None:
    import torch

    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for part in micro_batches([len(x) for x, _ in examples], tokens_per_pass):
            loss, n = _loss_sum(model, collate([examples[i] for i in part], pad_id), device)
            total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


def available_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ---- the training run -----------------------------------------------------------------------


class TrainingRefused(Exception):
    """The data check failed; `report` says why. Pass force=True to train anyway."""

    def __init__(self, report: DataReport) -> None:
        super().__init__("training data check failed: " + "; ".join(report.reasons))
        self.report = report


@dataclass
class TrainResult:
    out_dir: Path
    loss_before: float  # mean answer-token loss on the held-out rows (no context), untrained
    loss_after: float
    held_out_no_context: float | None  # after training; None without held-out rows
    held_out_with_context: float | None  # the same rows with oracle context; None without docs
    held_out: int  # rows kept out of training for these losses
    steps: int
    samples: int
    context_samples: int
    oracle_free_samples: int
    skipped: int  # samples whose prompt alone exceeded max_len
    passes: int  # forward/backward passes (micro-batches) over the run
    seconds: float
    peak_rss_bytes: int
    device: str
    threads: int
    gradient_checkpointing: bool
    info: AdapterInfo
    report: DataReport
    record: dict = field(default_factory=dict)  # what TRAINING_NAME holds


def training_record(
    *,
    base_model: str,
    context: dict | None,
    steps: int,
    seconds: float,
    samples: int,
    loss: dict,
) -> dict:
    """The training record (format 1), checked against the one schema registration reads
    (adapters/training_record.py): a record this writes is one the server accepts."""
    from adapters.training_record import TrainingRecord

    record = {
        "format": 1,
        "base_model": base_model,
        "context": context,
        "steps": steps,
        "seconds": round(seconds, 1),
        "samples": samples,
        "loss": loss,
    }
    return TrainingRecord.model_validate(record).model_dump(mode="json")


def _split_held_out(n: int, share: float, rng: random.Random) -> set[int]:
    if n < MIN_ROWS_FOR_HELD_OUT or share <= 0:
        return set()
    return set(rng.sample(range(n), min(MAX_HELD_OUT, max(1, round(share * n)))))


def train_lora(
    train_rows: list[Any],
    out_dir: Path,
    *,
    base_model_dir: Path,
    base_model_name: str,
    chunking: ChunkingSettings,
    embedding: EmbeddingSettings,
    rank: int = 16,
    alpha: int = 32,
    lora_layers: int | None = None,
    dropout: float = 0.0,
    epochs: int = 3,
    max_steps: int | None = None,
    lr: float = DEFAULT_LR,
    batch_size: int = 8,
    tokens_per_pass: int = DEFAULT_TOKENS_PER_PASS,
    max_len: int = DEFAULT_MAX_LEN,
    context_docs: Sequence[str] | Path | str | None = None,
    context_fraction: float = DEFAULT_CONTEXT_FRACTION,
    top_k: int = DEFAULT_TOP_K,
    min_score: float = DEFAULT_MIN_SCORE,
    context_max_tokens: int = DEFAULT_CONTEXT_MAX_TOKENS,
    oracle_free_share: float = DEFAULT_ORACLE_FREE_SHARE,
    counterfactual_share: float = DEFAULT_COUNTERFACTUAL_SHARE,
    held_out: float = HELD_OUT_SHARE,
    gradient_checkpointing: bool | None = None,
    threads: int | None = None,
    qdrant: QdrantSettings | None = None,
    seed: int = 0,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a LoRA on all linear projections of the base model's decoder layers (with
    `lora_layers`, of the top that many layers only: the backward pass then stops there).

    `chunking` and `embedding` are the serving settings' groups: the RAFT context is split,
    embedded and searched with them. `batch_size` is the number of samples per optimizer step;
    each step runs as forward passes of at most `tokens_per_pass` padded tokens.
    `gradient_checkpointing` None: on when a pass's activations could exceed
    ACTIVATION_BUDGET_BYTES (a `tokens_per_pass` above ~2300). `held_out`: the share of
    rows (at most MAX_HELD_OUT, none under MIN_ROWS_FOR_HELD_OUT rows) kept out of training to
    measure the answer loss with and without context.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    say = log or (lambda _m: None)
    out_dir, base_model_dir = Path(out_dir), Path(base_model_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"output folder {out_dir} is not empty")
    if not all(0 <= x <= 1 for x in (context_fraction, oracle_free_share, counterfactual_share)):
        raise ValueError(
            "context_fraction, oracle_free_share and counterfactual_share are shares between 0 "
            "and 1"
        )
    layout = base_layout(base_model_dir)
    if lora_layers is not None and not 0 < lora_layers <= layout.num_layers:
        raise ValueError(f"lora_layers must be 1-{layout.num_layers} (the base model's layers)")
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir, local_files_only=True)
    report = check_training_data(train_rows, tokenizer=tokenizer, max_tokens=max_len)
    if not report.passes and not force:
        raise TrainingRefused(report)

    qdrant = qdrant or QdrantSettings()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    threads = threads or available_cores()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        samples = [s for s in normalise_rows(train_rows)[0] if s.completion.strip()]
        if not samples:
            raise ValueError("no usable training samples")
        held = _split_held_out(len(samples), held_out, rng)
        train_samples = [s for i, s in enumerate(samples) if i not in held]
        held_samples = [s for i, s in enumerate(samples) if i in held]

        use_context = context_docs is not None and context_fraction > 0
        prompts = [list(s.messages) for s in train_samples]
        completions = [s.completion for s in train_samples]
        held_prompts: list[list[dict]] = []
        oracle_free = context_samples = 0
        if use_context:
            chunks = load_context_chunks(context_docs, chunking=chunking, embedding=embedding)
            with ServedRetriever(chunks, embedding, qdrant) as retriever:
                plan = plan_context(
                    train_samples,
                    chunks,
                    retriever,
                    fraction=context_fraction,
                    oracle_free_share=oracle_free_share,
                    top_k=top_k,
                    min_score=min_score,
                    max_tokens=context_max_tokens,
                    rng=rng,
                    counterfactual_share=counterfactual_share,
                )
                held_plan = plan_context(
                    held_samples,
                    chunks,
                    retriever,
                    fraction=1.0,
                    oracle_free_share=0.0,
                    top_k=top_k,
                    min_score=min_score,
                    max_tokens=context_max_tokens,
                    rng=rng,
                )
            prompts, held_prompts = plan.prompts, held_plan.prompts
            completions = plan.completions
            context_samples = sum(1 for c in plan.contexts if c)
            oracle_free = plan.count("oracle_free")
            say(
                f"context: {len(chunks)} chunks; {context_samples} of {len(train_samples)} "
                f"samples with context ({plan.count('oracle')} with oracle, {oracle_free} "
                f"distractors only, {plan.count('retrieved')} retrieved, no oracle found; "
                f"{plan.counterfactual} counterfactual)"
            )
        encoded = [
            encode_sample(tokenizer, p, c, max_len)
            for p, c in zip(prompts, completions, strict=True)
        ]
        examples = [e for e in encoded if e is not None]
        if not examples:
            raise ValueError(f"every sample's prompt is longer than max_len={max_len}")

        def encode_all(prompt_list, sample_list):
            pairs = zip(prompt_list, sample_list, strict=True)
            return [
                e for p, s in pairs if (e := encode_sample(tokenizer, p, s.completion, max_len))
            ]

        held_plain = encode_all([list(s.messages) for s in held_samples], held_samples)
        held_context = encode_all(held_prompts, held_samples) if use_context else []
        # Without held-out rows, before/after is measured on (seen) training rows, without context.
        eval_plain = held_plain or encode_all(
            [list(s.messages) for s in train_samples[:32]], train_samples[:32]
        )

        # Set again here: the retriever's query embedding sets torch's thread count for its
        # own calling thread (EmbeddingSettings.query_threads, 1 by default), and the
        # planning above ran it on this one; training on one thread took twice as long.
        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(
            base_model_dir, dtype=dtype, local_files_only=True
        ).to(device)
        # The largest pass the plan can make; checkpointing when its activations pass the budget.
        largest = min(tokens_per_pass, batch_size * padded(max(len(x) for x, _ in examples)))
        checkpointing = (
            gradient_checkpointing
            if gradient_checkpointing is not None
            else largest * ACTIVATION_BYTES_PER_TOKEN > ACTIVATION_BUDGET_BYTES
        )
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        targets = sorted(layout.leaves)
        top = (
            {"layers_to_transform": list(range(layout.num_layers - lora_layers, layout.num_layers))}
            if lora_layers is not None and lora_layers < layout.num_layers
            else {}
        )
        lora = LoraConfig(
            **top,
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)  # adapter weights stay fp32 over a bf16 base
        pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        loss_before = _mean_loss(model, eval_plain, pad_id, device, tokens_per_pass)

        steps_per_epoch = math.ceil(len(examples) / batch_size)
        total = max_steps or epochs * steps_per_epoch
        warmup = max(1, total // 10)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: (
                (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
            ),
        )
        model.train()
        step = passes = 0
        bar = tqdm(total=total, desc="training LoRA", unit="step", disable=not progress)
        while step < total:
            order = list(range(len(examples)))
            rng.shuffle(order)
            for start in range(0, len(order), batch_size):
                batch = [examples[i] for i in order[start : start + batch_size]]
                tokens = sum(sum(1 for t in y[1:] if t != IGNORE_INDEX) for _, y in batch)
                step_loss = 0.0
                for part in micro_batches([len(x) for x, _ in batch], tokens_per_pass):
                    loss, _ = _loss_sum(model, collate([batch[i] for i in part], pad_id), device)
                    (loss / tokens).backward()  # token-weighted mean over the whole step
                    step_loss += loss.item() / tokens
                    passes += 1
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}")
                if step >= total:
                    break
        bar.close()
        loss_after = _mean_loss(model, eval_plain, pad_id, device, tokens_per_pass)
        held_no_context = loss_after if held_plain else None
        held_with_context = _mean_loss(model, held_context, pad_id, device, tokens_per_pass)

        # Name the base model as clients and the registry know it, not the local folder.
        model.peft_config["default"].base_model_name_or_path = base_model_name
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir), safe_serialization=True, save_embedding_layers=False)
        for extra in out_dir.iterdir():  # peft also writes a model card
            if extra.name not in (CONFIG_NAME, WEIGHTS_NAME, TRAINING_NAME):
                extra.unlink()
        seconds = time.monotonic() - started
        record = training_record(
            base_model=base_model_name,
            context={
                "top_k": top_k,
                "min_score": float(min_score),
                "context_max_tokens": context_max_tokens,
                "share": float(context_fraction),
                "oracle_free_share": float(oracle_free_share),
                "retrieval": retrieval_kind(qdrant),
            }
            if use_context
            else None,
            steps=step,
            seconds=seconds,
            samples=len(examples),
            loss={
                "before": round(loss_before, 4),
                "after": round(loss_after, 4),
                "held_out_no_context": _round(held_no_context),
                "held_out_with_context": _round(held_with_context),
            },
        )
        (out_dir / TRAINING_NAME).write_text(json.dumps(record, indent=2) + "\n")
        info = validate_adapter(
            out_dir, base_model_name=base_model_name, base_model_dir=base_model_dir, max_rank=rank
        )
        return TrainResult(
            out_dir=out_dir,
            loss_before=loss_before,
            loss_after=loss_after,
            held_out_no_context=held_no_context,
            held_out_with_context=held_with_context,
            held_out=len(held_samples),
            steps=step,
            samples=len(examples),
            context_samples=context_samples,
            oracle_free_samples=oracle_free,
            skipped=len(encoded) - len(examples),
            passes=passes,
            seconds=seconds,
            peak_rss_bytes=peak_rss_bytes(),
            device=device,
            threads=threads,
            gradient_checkpointing=bool(checkpointing),
            info=info,
            report=report,
            record=record,
        )

    finally:
        torch.set_num_threads(previous_threads)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def retrieval_kind(qdrant: QdrantSettings) -> str:
    """How the served store searches with these settings: "hybrid" (dense candidates fused with
    term matches of `text=`) or "dense"; the training store searched the same way."""
    return getattr(qdrant, "retrieval", "dense")
