"""The deployment files, checked offline: the Helm chart (linted and rendered by Helm itself, as a
library), every rendered manifest against the Kubernetes 1.33 schemas (strict: unknown fields
fail), the compose files against the compose spec, yamllint, and the Dockerfile.

Each check has a negative twin where the tool could pass vacuously (a validator that accepts
anything would fail those).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ragtune"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
YAMLLINT_CONFIG = ROOT / "deploy" / "yamllint.yml"
BIN = Path(sys.executable).parent  # the venv's console scripts
KUBE_VERSION = "1.33"
RELEASE, NAMESPACE = "rt", "ml"
EXTERNAL_QDRANT = "http://qdrant.search.svc:6333"
SETTINGS_GROUP_BEING_ADDED = "adapters"  # RAGTUNE_ADAPTERS__*: allowed until Settings has it


def _tool(module: str, dist: str):
    try:
        return __import__(module)
    except Exception as exc:  # noqa: BLE001 - an unloadable native library is a skip too
        pytest.skip(f"{dist} is not importable ({type(exc).__name__}: {exc}); "
                    f"install the dev extra: pip install -e '.[dev]'")


def _script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"`{name}` not found in {BIN} or on PATH; install the dev extra")
        return found
    return str(path)


# ---- Helm -------------------------------------------------------------------------------------

SCENARIOS: dict[str, tuple[list[str], dict]] = {
    "default": ([], {}),
    "gpu": (["values-gpu.yaml"], {}),
    # Qdrant outside the release, the chart's own database Secret, monitoring on, 3 engines.
    "external": (
        [],
        {
            "qdrant": {"enabled": False},
            "externalQdrant": {"url": EXTERNAL_QDRANT},
            "qdrantApiKey": {"existingSecret": "qdrant-key"},
            "database": {"url": "postgresql://ragtune:pw@db.example:5432/ragtune"},
            "networkPolicy": {"enabled": True},
            "serviceMonitor": {"enabled": True},
            "vllm": {"replicas": 3},
            "api": {"autoscaling": {"enabled": False}},
        },
    ),
    "no-netpol": ([], {"networkPolicy": {"enabled": False}}),
    # The base model on a claim, the adapter store on a CSI volume (object storage).
    "volumes": (
        ["values-gpu.yaml"],
        {
            "model": {"source": "pvc", "existingClaim": "models", "subPath": "llama"},
            "adapters": {"volume": {"csi": {"driver": "example.csi.k8s.io",
                                            "volumeAttributes": {"bucket": "adapters"}}}},
        },
    ),
}


def _merge(base: dict, override: dict) -> dict:
    """Helm's coalescing of values files: maps merge, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _values(scenario: str) -> dict:
    files, overrides = SCENARIOS[scenario]
    values: dict = {}
    for name in files:
        values = _merge(values, yaml.safe_load((CHART / name).read_text()))
    return _merge(values, overrides)


def _render_raw(values: dict) -> dict[str, str]:
    helm = _tool("helm_python", "helm-python-sdk")
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


@functools.cache
def _rendered(scenario: str) -> tuple[dict[str, str], list[dict]]:
    """(template path -> manifest text, every object), as `helm template` would print them."""
    raw = _render_raw(_values(scenario))
    texts = {path: text.strip() + "\n" for path, text in raw.items()
             if not path.endswith("NOTES.txt") and text.strip()}
    docs = [doc for text in texts.values() for doc in yaml.safe_load_all(text) if doc]
    return texts, docs


def render(scenario: str) -> list[dict]:
    return copy.deepcopy(_rendered(scenario)[1])


def one(docs: list[dict], kind: str, component: str) -> dict:
    found = [d for d in docs if d["kind"] == kind
             and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"{len(found)} {kind}/{component} rendered"
    return found[0]


def workloads(docs: list[dict]) -> list[dict]:
    """ragtune's own (not those of a fetched Qdrant subchart)."""
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
            and d["metadata"]["labels"].get("app.kubernetes.io/part-of") == "ragtune"]


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", {})
    assert match, "a selector with no matchLabels selects every pod"
    return all(labels.get(k) == v for k, v in match.items())


def test_chart_lints_with_only_the_absent_dependency_warned():
    helm = _tool("helm_python", "helm-python-sdk")
    for scenario in ("default", "gpu", "external"):
        report = helm.lint(str(CHART), _values(scenario), kube_version=f"v{KUBE_VERSION}.0")
        assert report["errors"] == [], (scenario, report)
        serious = [m["error"] for m in report["messages"] if m["severity"] >= 2]
        # The optional Qdrant chart is not vendored (no Chart.lock, no charts/): a warning only,
        # unless `helm dependency build` fetched it here.
        fetched = any((CHART / "charts").glob("qdrant-*.tgz"))
        missing = [] if fetched else ["chart directory is missing these dependencies: qdrant"]
        assert serious == missing, (scenario, report)


def test_lint_reports_a_broken_template(tmp_path):
    helm = _tool("helm_python", "helm-python-sdk")
    broken = tmp_path / "ragtune"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope.missing }\n")
    report = helm.lint(str(broken))
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_manifests_validate_strictly_against_kubernetes(scenario):
    kv = _tool("kubernetes_validate", "kubernetes-validate")
    docs = render(scenario)
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap"} <= {d["kind"] for d in docs}
    for doc in docs:
        try:
            assert kv.validate(doc, KUBE_VERSION, strict=True) == KUBE_VERSION
        except kv.SchemaNotFoundError:
            # A CRD: Kubernetes ships no schema for it.
            assert doc["kind"] == "ServiceMonitor", doc["kind"]
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["spec"]["endpoints"][0]["port"] == "http"
        except kv.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_strict_validation_rejects_typos_and_wrong_types():
    kv = _tool("kubernetes_validate", "kubernetes-validate")
    api = one(render("default"), "Deployment", "api")
    kv.validate(api, KUBE_VERSION, strict=True)
    typo = copy.deepcopy(api)
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    wrong_type = copy.deepcopy(api)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    for bad in (typo, wrong_type):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, KUBE_VERSION, strict=True)


def test_kubernetes_validate_cli_accepts_the_rendered_chart(tmp_path):
    texts, _ = _rendered("gpu")
    path = tmp_path / "manifests.yaml"
    path.write_text("---\n".join(texts.values()))
    cli = _script("kubernetes-validate")
    proc = subprocess.run([cli, "-k", KUBE_VERSION, "--strict", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout and "passed" in proc.stdout


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_pod_runs_non_root_with_a_read_only_root(scenario):
    for workload in workloads(render(scenario)):
        name = workload["metadata"]["name"]
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in containers(spec):
            ctx = c["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert ctx["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert ctx["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert "add" not in ctx["capabilities"], (name, c["name"])
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], (name, c["name"])


def test_gpu_values_give_each_vllm_replica_a_gpu_on_gpu_nodes():
    vllm = one(render("gpu"), "StatefulSet", "vllm")
    spec = vllm["spec"]["template"]["spec"]
    (engine,) = spec["containers"]
    assert engine["image"].startswith("vllm/vllm-openai:v")
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert engine["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        spec["tolerations"])
    # The CPU default asks for no GPU (it would never schedule on CPU nodes).
    cpu = one(render("default"), "StatefulSet", "vllm")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(cpu)


@pytest.mark.parametrize("scenario", ["default", "gpu"])
def test_vllm_runs_with_runtime_lora_and_probes(scenario):
    spec = one(render(scenario), "StatefulSet", "vllm")["spec"]["template"]["spec"]
    (engine,) = spec["containers"]
    args = engine["args"]
    assert "--enable-lora" in args
    assert "--max-lora-rank=64" in args
    assert any(a.startswith("--max-loras=") for a in args)
    assert "--host=0.0.0.0" in args
    env = {e["name"]: e for e in engine["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert "secretKeyRef" in env["VLLM_API_KEY"]["valueFrom"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert engine[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = engine["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600, "model loading takes time"


@pytest.mark.parametrize("scenario", ["default", "external"])
def test_network_policy_lets_only_api_pods_reach_vllm(scenario):
    docs = render(scenario)
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    labels = {c: one(docs, kind, c)["spec"]["template"]["metadata"]["labels"]
              for kind, c in (("Deployment", "api"), ("Deployment", "worker"),
                              ("StatefulSet", "vllm"))}
    spec = policy["spec"]
    assert selects(spec["podSelector"], labels["vllm"])
    assert not selects(spec["podSelector"], labels["api"])
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "no namespace or IP peers by default"
    assert selects(peer["podSelector"], labels["api"])
    assert not selects(peer["podSelector"], labels["worker"])
    assert not selects(peer["podSelector"], labels["vllm"])
    engine = one(docs, "StatefulSet", "vllm")["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in engine["ports"]}
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}] and "http" in port_names


def test_network_policy_can_be_turned_off():
    assert not [d for d in render("no-netpol") if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("scenario,replicas", [("default", 1), ("gpu", 2), ("external", 3)])
def test_engine_url_list_names_every_vllm_replica(scenario, replicas):
    docs = render(scenario)
    sts = one(docs, "StatefulSet", "vllm")
    assert sts["spec"]["replicas"] == replicas
    headless = [d for d in docs if d["kind"] == "Service"
                and d["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert len(headless) == 1, "the StatefulSet's serviceName is a rendered Service"
    assert headless[0]["spec"]["clusterIP"] == "None"
    assert selects({"matchLabels": headless[0]["spec"]["selector"]},
                   sts["spec"]["template"]["metadata"]["labels"])
    port = sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    urls = json.loads(config["data"]["RAGTUNE_ENGINE__URLS"])
    name, svc = sts["metadata"]["name"], headless[0]["metadata"]["name"]
    assert urls == [f"http://{name}-{i}.{svc}.{NAMESPACE}.svc.cluster.local:{port}"
                    for i in range(replicas)]


def test_api_scales_with_an_hpa_and_keeps_a_pdb():
    docs = render("default")
    api = one(docs, "Deployment", "api")
    hpa = one(docs, "HorizontalPodAutoscaler", "api")
    pdb = one(docs, "PodDisruptionBudget", "api")
    assert "replicas" not in api["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": api["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2
    assert selects(pdb["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"])
    (c,) = api["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["serve"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    fixed = one(render("external"), "Deployment", "api")
    assert fixed["spec"]["replicas"] == 2
    assert not [d for d in render("external") if d["kind"] == "HorizontalPodAutoscaler"]


@pytest.mark.parametrize("scenario", ["default", "volumes"])
def test_api_and_vllm_share_the_adapter_store_at_one_path(scenario):
    docs = render(scenario)
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    root = config["data"]["RAGTUNE_ADAPTERS__ROOT"]
    mounts = {}
    for kind, component in (("Deployment", "api"), ("StatefulSet", "vllm")):
        spec = one(docs, kind, component)["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == root]
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        mounts[component] = (mount, {k: v for k, v in volume.items() if k != "name"})
    assert mounts["api"][1] == mounts["vllm"][1], "the same volume source"
    assert mounts["vllm"][0].get("readOnly") is True
    assert not mounts["api"][0].get("readOnly")
    source = mounts["api"][1]
    if scenario == "default":
        claim = source["persistentVolumeClaim"]["claimName"]
        (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"
                  and d["metadata"]["name"] == claim]
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    else:
        assert source["csi"]["driver"] == "example.csi.k8s.io"
        assert not [d for d in docs if d["metadata"]["name"].endswith("-adapters")]


def test_uploads_folder_is_shared_by_api_and_worker():
    docs = render("default")
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    data_dir = config["data"]["RAGTUNE_DATA_DIR"]
    claims = set()
    for component in ("api", "worker"):
        spec = one(docs, "Deployment", component)["spec"]["template"]["spec"]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == data_dir]
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        claims.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1


def test_qdrant_from_the_subchart_or_an_external_url():
    def cfg(scenario):
        return next(d for d in render(scenario) if d["kind"] == "ConfigMap")["data"]

    assert cfg("default")["RAGTUNE_QDRANT__URL"] == f"http://{RELEASE}-qdrant:6333"
    assert cfg("external")["RAGTUNE_QDRANT__URL"] == EXTERNAL_QDRANT
    env = one(render("external"), "Deployment", "worker")["spec"]["template"]["spec"][
        "containers"][0]["env"]
    assert {"name": "RAGTUNE_QDRANT__API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "qdrant-key", "key": "api-key"}}} in env


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"qdrant": {"enabled": False}}, "externalQdrant.url"),
        ({"externalQdrant": {"url": EXTERNAL_QDRANT}}, "not both"),
        ({"model": {"source": "pvc"}}, "model.existingClaim"),
        ({"database": {"existingSecret": ""}}, "database.existingSecret"),
        ({"vllm": {"enabled": False}}, "externalEngine.urls"),
        ({"adapters": {"persistence": {"enabled": False}}}, "adapter store"),
    ],
)
def test_inconsistent_values_fail_to_render(overrides, message):
    helm = _tool("helm_python", "helm-python-sdk")
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        _render_raw(overrides)


def test_secrets_stay_out_of_the_configmap_and_values():
    for scenario in ("default", "external"):
        docs = render(scenario)
        (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
        assert not [k for k in config["data"] if re.search(r"KEY|PASSWORD|DATABASE_URL", k)]
        api = one(docs, "Deployment", "api")["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in api["env"]}
        for name in ("RAGTUNE_ADMIN_KEY", "RAGTUNE_ENGINE__API_KEY", "RAGTUNE_DATABASE_URL"):
            assert "secretKeyRef" in env[name]["valueFrom"], (scenario, name)
    (secret,) = [d for d in render("external") if d["kind"] == "Secret"]
    assert set(secret["data"]) == {"admin-key", "engine-api-key", "database-url"}


def test_service_monitor_is_off_by_default():
    assert not [d for d in render("default") if d["kind"] == "ServiceMonitor"]
    monitors = [d for d in render("external") if d["kind"] == "ServiceMonitor"]
    assert sorted(m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors) == [
        "api", "vllm"]


@pytest.mark.parametrize("scenario", ["default", "external"])
def test_rendered_ragtune_settings_are_real_settings(scenario):
    docs = render(scenario)
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    names = set(config["data"])
    for component in ("api", "worker"):
        spec = one(docs, "Deployment", component)["spec"]["template"]["spec"]
        names |= {e["name"] for e in spec["containers"][0]["env"]}
    assert unknown_settings(names) == []


# ---- settings names ---------------------------------------------------------------------------

def unknown_settings(names) -> list[str]:
    """RAGTUNE_* names that no Settings field reads (nested groups through `__`)."""
    from core.settings import Settings

    bad = []
    for name in sorted(names):
        if not name.startswith("RAGTUNE_"):
            continue
        parts = name[len("RAGTUNE_"):].lower().split("__")
        if parts[0] == SETTINGS_GROUP_BEING_ADDED and parts[0] not in Settings.model_fields:
            continue
        model: type[BaseModel] = Settings
        for i, part in enumerate(parts):
            field = model.model_fields.get(part)
            if field is None:
                bad.append(name)
                break
            if i < len(parts) - 1:
                nested = field.annotation
                if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                    bad.append(name)
                    break
                model = nested
    return bad


def test_settings_name_check_catches_unknown_names():
    assert unknown_settings(["RAGTUNE_ENGINE__URLS", "RAGTUNE_ADMIN_KEY", "OTHER"]) == []
    assert unknown_settings(["RAGTUNE_ENGINE__URLZ", "RAGTUNE_NOPE", "RAGTUNE_PORT__X"]) == [
        "RAGTUNE_ENGINE__URLZ", "RAGTUNE_NOPE", "RAGTUNE_PORT__X"]


# ---- compose ----------------------------------------------------------------------------------

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
        [_script("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
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


# ---- yamllint ---------------------------------------------------------------------------------

# Rendered manifests carry toYaml output, which does not indent sequences under their key, and
# data lines as long as the data (the engine URL list grows with the replica count).
RENDERED_YAMLLINT = """
extends: default
rules:
  line-length: disable
  document-start: disable
  indentation: {spaces: 2, indent-sequences: whatever}
  truthy: {check-keys: false}
"""


def _lint(text: str, config, name: str) -> list[str]:
    from yamllint import linter

    return [f"{name}:{p.line}:{p.column} {p.level} {p.message}"
            for p in linter.run(text, config) if p.level == "error"]


def test_yamllint_hand_written_files():
    _tool("yamllint", "yamllint")
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(YAMLLINT_CONFIG))
    files = [COMPOSE, COMPOSE_CPU, PROMETHEUS, YAMLLINT_CONFIG, CHART / "Chart.yaml",
             CHART / "values.yaml", CHART / "values-gpu.yaml"]
    problems = [p for f in files for p in _lint(f.read_text(), config, f.name)]
    assert problems == []
    assert _lint("a:  1\nb: [1,2]\n", config, "bad"), "yamllint must flag bad spacing"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_yamllint_rendered_manifests(scenario):
    _tool("yamllint", "yamllint")
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(RENDERED_YAMLLINT)
    texts, _ = _rendered(scenario)
    problems = [p for path, text in texts.items() for p in _lint(text, config, path)]
    assert problems == []


# ---- Dockerfile -------------------------------------------------------------------------------

def _stages() -> dict[str, list]:
    dockerfile = _tool("dockerfile", "dockerfile")
    stages: dict[str, list] = {}
    current = None
    for cmd in dockerfile.parse_file(str(DOCKERFILE)):
        if cmd.cmd.upper() == "FROM":
            value = list(cmd.value)
            current = value[2] if len(value) >= 3 and value[1].upper() == "AS" else value[0]
            stages[current] = [cmd]
        elif current is not None:
            stages[current].append(cmd)
    return stages


def _last(commands: list, name: str):
    found = [c for c in commands if c.cmd.upper() == name]
    return found[-1] if found else None


def test_dockerfile_final_stage_is_ragtune_non_root_with_healthcheck():
    stages = _stages()
    assert len(stages) >= 3, "multi-stage: build, engine-cpu, runtime"
    final_name = list(stages)[-1]
    assert final_name == "ragtune", "the default target is the API/worker image"
    for name in ("ragtune", "engine-cpu"):
        commands = stages[name]
        user = _last(commands, "USER")
        assert user is not None, f"{name}: no USER"
        uid = user.value[0].split(":")[0]
        assert uid not in ("root", "0") and uid.isdigit(), f"{name}: USER {uid}"
        health = _last(commands, "HEALTHCHECK")
        assert health is not None and "CMD" in health.value, f"{name}: no HEALTHCHECK"
    final = stages["ragtune"]
    assert "/healthz" in " ".join(_last(final, "HEALTHCHECK").value)
    entry, cmd = _last(final, "ENTRYPOINT"), _last(final, "CMD")
    assert entry.json and list(entry.value) == ["ragtune"]
    assert cmd.json and list(cmd.value) == ["serve"]


def test_dockerfile_base_is_pinned_slim_python():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    for line in re.findall(r"^FROM\s+(\S+)", text, re.M):
        assert line in ("${PYTHON_IMAGE}", "base", "build") or ":" in line, line
        assert not line.endswith(":latest"), line
    assert re.search(r"^ARG TORCH_SPEC=torch==[\d.]+\+cpu$", text, re.M)
    assert "deploy/install_engine.py --engine cpu" in text


def test_dockerfile_passes_hadolint():
    hadolint = _script("hadolint")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And it does flag what it should (a root image on :latest), so the pass above means something.
    bad = subprocess.run([hadolint, "-"], input="FROM python:latest\nRUN apt-get install -y x\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "DL3007" in bad.stdout


def test_dockerignore_admits_only_what_the_image_needs():
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split("\n")
    patterns = [p for p in ignore if p and not p.startswith("#")]
    assert patterns[0] == "**", "everything is excluded first"
    admitted = {p[1:] for p in patterns if p.startswith("!")}
    assert {"pyproject.toml", "README.md", "service/**", "ingest/**", "adapters/**"} <= admitted
    assert not [p for p in admitted if ".venv" in p or p.startswith("tests")]
