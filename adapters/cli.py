"""`ragtune adapters`: train a LoRA adapter from a JSONL file; register a folder with a server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer

from adapters.raft import (
    DEFAULT_CONTEXT_FRACTION,
    DEFAULT_CONTEXT_MAX_TOKENS,
    DEFAULT_COUNTERFACTUAL_SHARE,
    DEFAULT_MIN_SCORE,
    DEFAULT_ORACLE_FREE_SHARE,
    DEFAULT_TOP_K,
)
from adapters.train import DEFAULT_LR, DEFAULT_MAX_LEN, DEFAULT_TOKENS_PER_PASS, HELD_OUT_SHARE

adapters_app = typer.Typer(no_args_is_help=True, help="Train and register LoRA adapters.")

# Tests swap in an httpx.MockTransport; None is the network.
_TRANSPORT: httpx.BaseTransport | None = None
MAX_EXAMPLES_FROM_TRAINING_FILE = 20


def _settings(**overrides):
    """The settings `ragtune serve` reads (environment, .env), with the options given."""
    from core.settings import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


@adapters_app.command()
def train(
    data: Annotated[
        Path, typer.Option("--data", help="Training rows (JSONL): messages or prompt/completion.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Empty or new folder for the adapter.")],
    rank: Annotated[int, typer.Option(help="LoRA rank r.")] = 16,
    lora_layers: Annotated[
        int | None,
        typer.Option(
            help="LoRA on the top N decoder layers only (faster: no backward pass below them); "
            "default: every layer."
        ),
    ] = None,
    alpha: Annotated[int | None, typer.Option(help="lora_alpha (default: 2 x rank).")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the data (unless --max-steps).")] = 3,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = DEFAULT_LR,
    batch_size: Annotated[int, typer.Option(help="Samples per optimizer step.")] = 8,
    tokens_per_pass: Annotated[
        int,
        typer.Option(help="Padded tokens per forward pass (memory); a step is split into passes."),
    ] = DEFAULT_TOKENS_PER_PASS,
    max_len: Annotated[
        int, typer.Option(help="Tokens per sample, context included; longer answers are cut.")
    ] = DEFAULT_MAX_LEN,
    context_docs: Annotated[
        Path | None,
        typer.Option(help="Folder of documents: train with retrieved context (RAFT)."),
    ] = None,
    context_fraction: Annotated[
        float, typer.Option(help="Share of samples given context.")
    ] = DEFAULT_CONTEXT_FRACTION,
    top_k: Annotated[
        int, typer.Option(help="Chunks retrieved per query, as the adapter_rag path serves.")
    ] = DEFAULT_TOP_K,
    min_score: Annotated[
        float, typer.Option(help="Score floor: retrieved chunks below it are not shown.")
    ] = DEFAULT_MIN_SCORE,
    context_max_tokens: Annotated[
        int, typer.Option(help="Context budget, in the embedding model's tokens.")
    ] = DEFAULT_CONTEXT_MAX_TOKENS,
    oracle_free_share: Annotated[
        float,
        typer.Option(help="Share of context samples given distractors only (retrieval missed)."),
    ] = DEFAULT_ORACLE_FREE_SHARE,
    counterfactual_share: Annotated[
        float,
        typer.Option(
            help="Share of oracle samples whose looked-up facts (codes, numbers) are replaced by "
            "fresh ones in context and answer alike, so the answer must be read from the context."
        ),
    ] = DEFAULT_COUNTERFACTUAL_SHARE,
    held_out: Annotated[
        float, typer.Option(help="Share of rows kept out to measure held-out loss (max 32).")
    ] = HELD_OUT_SHARE,
    seed: Annotated[int, typer.Option()] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Train even if the data check fails.")
    ] = False,
    base_model_dir: Annotated[
        Path | None,
        typer.Option(
            help="Base model folder (RAGTUNE_MODEL_DIR; default: the one serve uses, prepared "
            "there when missing)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data folder (RAGTUNE_DATA_DIR).")
    ] = None,
) -> None:
    """Check the data, then train a LoRA adapter on the base model (adapter_config.json,
    adapter_model.safetensors and ragtune_training.json in --out). The base model, chunking and
    embedding are the server's own (the same settings `ragtune serve` reads)."""
    from transformers import AutoTokenizer

    from adapters.datacheck import check_training_data, load_jsonl
    from adapters.train import TrainingRefused, train_lora
    from core.base_model import ModelPreparationError, ensure_base_model
    from core.errors import TrainingDataError

    settings = _settings(data_dir=data_dir, model_dir=base_model_dir)
    try:
        rows = load_jsonl(data)
    except (TrainingDataError, OSError) as e:
        raise _fail(f"cannot read {data}: {getattr(e, 'message', e)}", 2) from None
    try:
        base_dir = ensure_base_model(settings.resolved_model_dir, log=typer.echo)
    except (ModelPreparationError, OSError) as e:
        raise _fail(f"no base model at {settings.resolved_model_dir}: {e}") from None
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    report = check_training_data(rows, tokenizer=tokenizer, max_tokens=max_len)
    typer.echo(report.summary())
    if not report.passes and not force:
        raise _fail("refusing to train on this data (fix it, or pass --force)")
    try:
        result = train_lora(
            rows,
            out,
            base_model_dir=base_dir,
            base_model_name=settings.base_model_name,
            chunking=settings.chunking,
            embedding=settings.embedding,
            qdrant=settings.qdrant,
            rank=rank,
            alpha=alpha or 2 * rank,
            lora_layers=lora_layers,
            epochs=epochs,
            max_steps=max_steps,
            lr=lr,
            batch_size=batch_size,
            tokens_per_pass=tokens_per_pass,
            max_len=max_len,
            context_docs=context_docs,
            context_fraction=context_fraction,
            top_k=top_k,
            min_score=min_score,
            context_max_tokens=context_max_tokens,
            oracle_free_share=oracle_free_share,
            counterfactual_share=counterfactual_share,
            held_out=held_out,
            seed=seed,
            force=force,
            log=typer.echo,
        )
    except TrainingRefused as e:  # pragma: no cover - the check above refuses first
        raise _fail(str(e)) from None
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    typer.echo(
        f"trained {result.steps} steps ({result.passes} passes) on {result.samples} samples "
        f"({result.context_samples} with context, {result.oracle_free_samples} of them "
        f"distractors only) in {result.seconds:.0f}s on {result.device} "
        f"({result.threads} threads); peak memory {result.peak_rss_bytes / 2**30:.1f} GiB"
    )
    typer.echo(f"answer loss {result.loss_before:.3f} -> {result.loss_after:.3f}")
    if result.held_out:
        with_ctx = result.held_out_with_context
        typer.echo(
            f"held-out answer loss ({result.held_out} rows not trained on): "
            f"{result.held_out_no_context:.3f} without context"
            + (f", {with_ctx:.3f} with context" if with_ctx is not None else "")
        )
    typer.echo(f"adapter (rank {result.info.rank}, {result.info.size_bytes} bytes) in {out}")
    typer.echo(f"register it: ragtune adapters register {out} --name NAME --examples {data}")


def parse_examples(value: str | None) -> list[str]:
    """A JSON list of prompts, or a file: a JSON list, a training JSONL (its first prompts), or
    one prompt per line."""
    if not value:
        return []
    path = Path(value)
    # A JSON list is never taken for a path (a long one is "File name too long" to the OS).
    is_file = not value.lstrip().startswith("[") and path.is_file()
    text = path.read_text(encoding="utf-8") if is_file else value
    if text.lstrip().startswith("["):
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError("examples must be a JSON list of strings")
        return items
    if not is_file:
        raise ValueError("--examples takes a JSON list or a file")
    if path.suffix == ".jsonl":
        from adapters.datacheck import normalise_rows, parse_jsonl

        samples, _ = normalise_rows(parse_jsonl(text, source=path.name))
        prompts = list(dict.fromkeys(s.instruction for s in samples if s.instruction.strip()))
        return prompts[:MAX_EXAMPLES_FROM_TRAINING_FILE]
    return [line.strip() for line in text.splitlines() if line.strip()]


def post_adapter(
    folder: Path,
    *,
    name: str,
    description: str,
    examples: list[str],
    url: str,
    key: str,
    timeout: float = 600.0,
    transport: httpx.BaseTransport | None = None,
    gate: dict | None = None,
) -> httpx.Response:
    """POST the folder, packed as a .tar.gz in memory, to /v1/adapters (multipart)."""
    from adapters.pack import pack_adapter

    data = pack_adapter(folder)
    fields = {"name": name, "description": description, "examples": json.dumps(examples)}
    if gate is not None:
        fields["gate"] = json.dumps(gate)
    with httpx.Client(base_url=url, timeout=timeout, transport=transport) as client:
        return client.post(
            "/v1/adapters",
            headers={"Authorization": f"Bearer {key}"},
            files={"file": (f"{name}.tar.gz", data, "application/gzip")},
            data=fields,
        )


@adapters_app.command()
def register(
    folder: Annotated[
        Path, typer.Argument(help="Adapter folder (adapter_config.json + safetensors).")
    ],
    name: Annotated[
        str, typer.Option("--name", help="Adapter name; an existing name gets a new version.")
    ],
    description: Annotated[str, typer.Option(help="What the adapter is for.")] = "",
    examples: Annotated[
        str | None,
        typer.Option(
            help="Prompts it is for: a JSON list, or a file (JSON list, training JSONL, lines)."
        ),
    ] = None,
    url: Annotated[
        str, typer.Option(envvar="RAGTUNE_URL", help="The ragtune server.")
    ] = "http://127.0.0.1:8000",
    key: Annotated[
        str | None, typer.Option(envvar="RAGTUNE_API_KEY", help="Tenant API key.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait (the server loads it first, and runs the gate).")
    ] = 600.0,
    gate_set: Annotated[
        str | None,
        typer.Option(
            help="Gate the release on this eval set: traffic moves to the new version only if "
            "it is not worse than the current one there."
        ),
    ] = None,
    gate_min_delta: Annotated[
        float, typer.Option(help="How much lower its pass rate may be (0.05 = 5 points).")
    ] = 0.0,
) -> None:
    """Upload an adapter folder to a ragtune server; prints the server's JSON answer."""
    if not key:
        raise _fail("no API key: pass --key or set RAGTUNE_API_KEY", 2)
    gate = {"eval_set": gate_set, "min_delta": gate_min_delta} if gate_set else None
    try:
        prompts = parse_examples(examples)
        resp = post_adapter(
            folder,
            name=name,
            description=description,
            examples=prompts,
            url=url,
            key=key,
            timeout=timeout,
            transport=_TRANSPORT,
            gate=gate,
        )
    except (OSError, ValueError) as e:
        raise _fail(f"cannot register {folder}: {e}", 2) from None
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}") from None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.is_success and body is not None:
        typer.echo(json.dumps(body, indent=2))
        return
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        raise _fail(f"error {resp.status_code} ({err.get('code')}): {err.get('message')}")
    raise _fail(f"error {resp.status_code}: {resp.text[:500]}")


if __name__ == "__main__":  # pragma: no cover
    adapters_app(sys.argv[1:])
