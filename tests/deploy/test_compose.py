"""The compose files, checked offline: docker-compose.yml and its CPU override merged into it
against the compose spec, and what they promise (the engine on an internal network, the API and
worker wiring, one adapter path, required secrets, healthchecks, settings names), with the
Prometheus config compose mounts.

The schema check has a negative twin (a validator that accepts anything would fail it).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.helpers.deploy_files import COMPOSE, COMPOSE_CPU, PROMETHEUS, require_script
from tests.helpers.settings_names import unknown_settings


class _Reset:
    pass


class _Override:
    def __init__(self, value) -> None:
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (!reset, !override)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())
_ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: _Override(
        loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode)
        else loader.construct_scalar(node)
    ),
)


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - SafeLoader subclass


def compose_merge(base, override):
    """`docker compose -f a -f b`: maps merge, !reset drops, !override and the rest replace."""
    if isinstance(override, _Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, _Reset):
                out.pop(key, None)
            elif key in out:
                out[key] = compose_merge(out[key], value)
            else:
                out[key] = compose_merge(None, value)
        return out
    return override


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def check_compose_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_script("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_compose_file_follows_the_compose_spec():
    proc = check_compose_schema(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_cpu_override_merges_into_a_valid_file(tmp_path):
    merged = compose_merge(load_compose(COMPOSE), load_compose(COMPOSE_CPU))
    path = tmp_path / "merged.json"
    path.write_text(json.dumps(merged))
    proc = check_compose_schema(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    vllm = merged["services"]["vllm"]
    assert "deploy" not in vllm, "no GPU reservation on CPU hosts"
    assert vllm["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile",
                             "target": "engine-cpu"}
    # Everything else of the engine stays as on GPU hosts.
    gpu = load_compose(COMPOSE)["services"]["vllm"]
    assert vllm["command"] == gpu["command"] and vllm["networks"] == gpu["networks"]
    assert compose_env(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_compose_schema_check_rejects_unknown_keys(tmp_path):
    bad = load_compose(COMPOSE)
    bad["services"]["api"]["enviroment"] = {"A": "b"}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    proc = check_compose_schema(path)
    assert proc.returncode != 0 and "enviroment" in proc.stdout + proc.stderr


def test_compose_vllm_is_the_official_image_on_an_internal_network():
    compose = load_compose(COMPOSE)
    vllm = compose["services"]["vllm"]
    assert vllm["image"].split(":-", 1)[-1].startswith("vllm/vllm-openai:v")
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "--enable-lora" in vllm["command"]
    assert "--max-lora-rank=${MAX_LORA_RANK:-64}" in vllm["command"]
    assert any(a.startswith("--max-loras=") for a in vllm["command"])
    assert "--max-cpu-loras=${MAX_CPU_LORAS:-32}" in vllm["command"]  # = adapters.max_resident
    env = compose_env(vllm)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_API_KEY"].startswith("${VLLM_API_KEY:?")
    assert "ports" not in vllm and "expose" not in vllm
    for net in vllm["networks"]:
        assert compose["networks"][net].get("internal") is True, net
    # Who shares a network with the engine: the API (and Prometheus for /metrics), nobody else.
    neighbours = {name for name, svc in compose["services"].items() if name != "vllm"
                  and set(svc.get("networks", [])) & set(vllm["networks"])}
    assert neighbours == {"api", "prometheus"}


def test_compose_api_and_worker_wiring():
    services = load_compose(COMPOSE)["services"]
    api, worker = services["api"], services["worker"]
    env = compose_env(api)
    assert json.loads(env["RAGTUNE_ENGINE__URLS"]) == ["http://vllm:8000"]
    assert env["RAGTUNE_WORKER__EMBEDDED"] == "false"
    assert env["RAGTUNE_ADMIN_KEY"].startswith("${RAGTUNE_ADMIN_KEY:?")
    assert env["RAGTUNE_QDRANT__URL"] == "http://qdrant:6333"
    assert env["RAGTUNE_DATABASE_URL"].startswith("postgresql://")
    assert api["command"] == ["serve"] and worker["command"] == ["worker"]
    for name in ("postgres", "qdrant", "vllm"):
        assert api["depends_on"][name]["condition"] == "service_healthy", name
    for name in ("postgres", "qdrant"):
        assert worker["depends_on"][name]["condition"] == "service_healthy", name
    # Uploads wait in the data dir until a worker takes them: one volume, one path.
    data_dir = env["RAGTUNE_DATA_DIR"]
    assert compose_env(worker)["RAGTUNE_DATA_DIR"] == data_dir
    assert f"data:{data_dir}" in api["volumes"] and f"data:{data_dir}" in worker["volumes"]


def test_compose_adapter_volume_has_one_path_in_api_and_vllm():
    services = load_compose(COMPOSE)["services"]
    root = compose_env(services["api"])["RAGTUNE_ADAPTERS__ROOT"]
    assert f"adapters:{root}" in services["api"]["volumes"]
    assert f"adapters:{root}:ro" in services["vllm"]["volumes"]


def test_compose_secrets_are_required_variables():
    services = load_compose(COMPOSE)["services"]
    seen = 0
    for name, svc in services.items():
        for key, value in compose_env(svc).items():
            if re.search(r"KEY|PASSWORD|SECRET|DATABASE_URL", key):
                seen += 1
                # `${VAR:?message}`: compose refuses to start without it; no default secret.
                refs = re.findall(r"\$\{([A-Z_]+)(:?[-?])", value)
                assert refs and all(op == ":?" for _, op in refs), (name, key, value)
    assert seen >= 6


def test_compose_healthchecks():
    services = load_compose(COMPOSE)["services"]
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "/readyz" in " ".join(services["qdrant"]["healthcheck"]["test"])
    assert "/health'" in " ".join(services["vllm"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert services["qdrant"]["image"].split(":-", 1)[-1].startswith("qdrant/qdrant:v")
    assert any(v.endswith(":/qdrant/storage") for v in services["qdrant"]["volumes"])


def test_compose_api_settings_are_real_settings():
    services = load_compose(COMPOSE)["services"]
    names = set(compose_env(services["api"])) | set(compose_env(services["worker"]))
    assert {"RAGTUNE_ENGINE__URLS", "RAGTUNE_ADMIN_KEY", "RAGTUNE_ADAPTERS__ROOT"} <= names
    assert unknown_settings(names) == []


def test_prometheus_scrapes_api_and_vllm():
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets[job["job_name"]] = (sd["names"], sd["port"])
    assert targets["ragtune-api"] == (["api"], 8000)
    assert targets["vllm"] == (["vllm"], 8000)
    prom = load_compose(COMPOSE)["services"]["prometheus"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
