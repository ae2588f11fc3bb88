"""Train a LoRA adapter the way it will be served.

The base model's own chat template builds every sample; the loss counts only the answer's tokens
(and the end-of-turn token, so the model learns to stop). With `context_docs`, a share of the
samples carries retrieved context exactly as the adapter+RAG path serves it: the chunks come from
ingestion's own splitter and `with_context` (ingest/context.py) is the one format both sides use.
The relevant passage comes with distractors (RAFT), because an adapter trained without context is
disturbed by context.

Chunking and embedding are the server's own settings groups (`Settings.chunking`,
`Settings.embedding`), passed in by the caller: context built with other chunk sizes or another
embedding model would not look like the context the adapter is served with.

The output folder holds adapter_config.json (naming the served base model) and
adapter_model.safetensors, nothing else, and is validated before returning.

Torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.base_layout import base_layout
from adapters.datacheck import DataReport, Sample, check_training_data, normalise_rows
from adapters.peft_files import CONFIG_NAME, WEIGHTS_NAME
from adapters.validation import AdapterInfo, validate_adapter
from core.settings import ChunkingSettings, EmbeddingSettings
from ingest.context import CONTEXT_HEADER, with_context

IGNORE_INDEX = -100

EmbedTexts = Callable[[list[str]], Any]  # texts -> L2-normalised vectors (n, d)


# ---- context: the serving side's format (ingest/context.py) and chunks (ingest/) ----------


def load_context_chunks(
    context_docs: Sequence[str] | Path | str,
    *,
    chunking: ChunkingSettings,
    embedding: EmbeddingSettings,
) -> list[str]:
    """The chunks retrieval would serve from these documents: a list of texts, or the files
    under a folder, read by ingestion's readers and split as the server's ingestion pipeline
    splits them (its chunk settings, sized in its embedding model's tokens), so training
    context looks like serving context."""
    from transformers import AutoTokenizer

    from ingest.embedding import default_model_path
    from ingest.pipeline import ChunkPipeline
    from ingest.readers import TYPES, Section, content_type_for, read_sections

    if isinstance(context_docs, str | Path):
        folder = Path(context_docs)
        if not folder.is_dir():
            raise FileNotFoundError(f"context docs folder {folder} does not exist")
        sections = [
            s
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix.lower() in TYPES
            for s in read_sections(p.read_bytes(), content_type_for(p.name), p.name)
        ]
    else:
        sections = [Section(text, {}) for text in context_docs if text.strip()]
    # The embedding model's own tokenizer, as ChunkPipeline(embedder, chunking) sizes chunks,
    # without loading the model itself.
    tokenizer = AutoTokenizer.from_pretrained(
        embedding.model_path or default_model_path(), local_files_only=True
    )
    splitter = ChunkPipeline.splitter_for(chunking, tokenizer)
    documents = ChunkPipeline.documents(sections)
    chunks = [n.get_content() for n in splitter.get_nodes_from_documents(documents)]
    if not chunks:
        raise ValueError("the context documents hold no text")
    return chunks


def embedder_for(embedding: EmbeddingSettings) -> EmbedTexts:
    """The server's embedding model for these settings (ingest/embedding.py), normalised."""

    def embed_texts(texts: list[str]):
        import numpy as np

        from ingest.embedding import shared_embedder

        return np.asarray(shared_embedder(embedding).texts(list(texts)))

    return embed_texts


def select_context(
    queries: Sequence[str],
    chunks: Sequence[str],
    *,
    distractors: int = 1,
    rng: random.Random,
    embed: EmbedTexts,
) -> list[list[str]]:
    """For each query: the most similar chunk plus `distractors` random others, shuffled, so the
    model learns to find the relevant passage rather than trust the first one."""
    import numpy as np

    q = np.asarray(embed(list(queries)))
    c = np.asarray(embed(list(chunks)))
    best = (q @ c.T).argmax(axis=1)
    out = []
    for b in best.tolist():
        others = [i for i in range(len(chunks)) if i != b]
        picked = [b, *rng.sample(others, min(distractors, len(others)))]
        rng.shuffle(picked)
        out.append([chunks[i] for i in picked])
    return out


def plan_context(
    samples: Sequence[Sample],
    chunks: Sequence[str],
    *,
    fraction: float,
    distractors: int,
    rng: random.Random,
    embed: EmbedTexts,
) -> list[list[dict]]:
    """Prompt messages per sample; `round(fraction * n)` randomly chosen samples get context
    (the rest stay as they are, as prompts served without retrieval are)."""
    chosen = sorted(rng.sample(range(len(samples)), round(fraction * len(samples))))
    contexts = (
        select_context(
            [samples[i].instruction for i in chosen],
            chunks,
            distractors=distractors,
            rng=rng,
            embed=embed,
        )
        if chosen
        else []
    )
    by_index = dict(zip(chosen, contexts, strict=True))
    return [with_context(s.messages, by_index.get(i, [])) for i, s in enumerate(samples)]


# ---- tokenisation and loss masking ----------------------------------------------------------


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


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, labels, mask


def _loss_sum(model, batch, device):
    """Summed cross-entropy over answer tokens, and how many there were."""
    import torch.nn.functional as F

    ids, labels, mask = (t.to(device) for t in batch)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, int((target != IGNORE_INDEX).sum())


def _mean_loss(model, examples, pad_id, device, micro: int) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), micro):
            loss, n = _loss_sum(model, collate(examples[i : i + micro], pad_id), device)
            total, count = total + float(loss), count + n
    model.train()
    return total / max(count, 1)


# ---- the training run -----------------------------------------------------------------------


class TrainingRefused(Exception):
    """The data check failed; `report` says why. Pass force=True to train anyway."""

    def __init__(self, report: DataReport) -> None:
        super().__init__("training data check failed: " + "; ".join(report.reasons))
        self.report = report


@dataclass
class TrainResult:
    out_dir: Path
    loss_before: float  # mean answer-token loss on a fixed evaluation subset
    loss_after: float
    steps: int
    samples: int
    context_samples: int
    skipped: int  # samples whose prompt alone exceeded max_len
    seconds: float
    device: str
    info: AdapterInfo
    report: DataReport


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
    epochs: int = 3,
    max_steps: int | None = None,
    lr: float = 2e-4,
    batch_size: int = 8,
    grad_accum: int = 1,
    max_len: int = 512,
    context_docs: Sequence[str] | Path | str | None = None,
    context_fraction: float = 0.5,
    distractors: int = 1,
    seed: int = 0,
    progress: bool = True,
    force: bool = False,
    eval_samples: int = 32,
    embed: EmbedTexts | None = None,
) -> TrainResult:
    """Train a LoRA on all linear projections of the base model's decoder layers.

    `chunking` and `embedding` are the serving settings' groups: the RAFT context is split and
    picked with them (`embed`, when given, stands in for the embedding model in the picking).
    `batch_size` is the number of samples per optimizer step; `grad_accum` splits it into that
    many forward/backward passes (same result, less memory).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    out_dir, base_model_dir = Path(out_dir), Path(base_model_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"output folder {out_dir} is not empty")
    if batch_size % grad_accum:
        raise ValueError(f"batch_size {batch_size} is not a multiple of grad_accum {grad_accum}")
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir, local_files_only=True)
    report = check_training_data(train_rows, tokenizer=tokenizer, max_tokens=max_len)
    if not report.passes and not force:
        raise TrainingRefused(report)

    rng = random.Random(seed)
    torch.manual_seed(seed)
    samples = [s for s in normalise_rows(train_rows)[0] if s.completion.strip()]
    if not samples:
        raise ValueError("no usable training samples")
    prompts = [list(s.messages) for s in samples]
    if context_docs is not None and context_fraction > 0:
        chunks = load_context_chunks(context_docs, chunking=chunking, embedding=embedding)
        prompts = plan_context(
            samples,
            chunks,
            fraction=context_fraction,
            distractors=distractors,
            rng=rng,
            embed=embed or embedder_for(embedding),
        )
    context_samples = sum(1 for p in prompts if CONTEXT_HEADER in p[0]["content"])
    encoded = [
        encode_sample(tokenizer, p, s.completion, max_len)
        for p, s in zip(prompts, samples, strict=True)
    ]
    examples = [e for e in encoded if e is not None]
    if not examples:
        raise ValueError(f"every sample's prompt is longer than max_len={max_len}")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        base_model_dir, dtype=dtype, local_files_only=True
    ).to(device)
    targets = sorted(base_layout(base_model_dir).leaves)
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.05,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)  # adapter weights stay fp32 over a bf16 base
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    micro = batch_size // grad_accum
    eval_set = examples[:eval_samples]
    loss_before = _mean_loss(model, eval_set, pad_id, device, micro)

    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = max_steps or epochs * steps_per_epoch
    warmup = max(1, total // 20)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    model.train()
    step = 0
    bar = tqdm(total=total, desc="training LoRA", unit="step", disable=not progress)
    while step < total:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start : start + batch_size]]
            parts = [collate(batch[j : j + micro], pad_id) for j in range(0, len(batch), micro)]
            tokens = sum(int((p[1][:, 1:] != IGNORE_INDEX).sum()) for p in parts)
            step_loss = 0.0
            for part in parts:  # token-weighted mean over the whole step
                loss, _ = _loss_sum(model, part, device)
                (loss / tokens).backward()
                step_loss += loss.item() / tokens
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
    loss_after = _mean_loss(model, eval_set, pad_id, device, micro)

    # Name the base model as clients and the registry know it, not the local folder.
    model.peft_config["default"].base_model_name_or_path = base_model_name
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True, save_embedding_layers=False)
    for extra in out_dir.iterdir():  # peft also writes a model card
        if extra.name not in (CONFIG_NAME, WEIGHTS_NAME):
            extra.unlink()
    info = validate_adapter(
        out_dir, base_model_name=base_model_name, base_model_dir=base_model_dir, max_rank=rank
    )
    return TrainResult(
        out_dir=out_dir,
        loss_before=loss_before,
        loss_after=loss_after,
        steps=step,
        samples=len(examples),
        context_samples=context_samples,
        skipped=len(encoded) - len(examples),
        seconds=time.monotonic() - started,
        device=device,
        info=info,
        report=report,
    )
