"""The Helm chart, checked offline: linted and rendered by Helm itself (as a library), every
rendered manifest validated against the Kubernetes 1.33 schemas (strict: unknown fields fail), and
what the manifests promise (non-root pods, the vLLM engines and who may reach them, the engine URL
list, scaling, shared volumes, secrets, settings names).

Each check has a negative twin where the tool could pass vacuously (a validator that accepts
anything would fail those).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.helpers.app import ROOT
from tests.helpers.deploy_files import CHART, require_module, require_script
from tests.helpers.helm_chart import (
    EXTERNAL_QDRANT,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    render,
    render_values,
    rendered,
    scenario_values,
)
from tests.helpers.settings_names import unknown_settings

KUBE_VERSION = "1.33"


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
    helm = require_module("helm_python", "helm-python-sdk")
    for scenario in ("default", "gpu", "external"):
        report = helm.lint(str(CHART), scenario_values(scenario), kube_version=f"v{KUBE_VERSION}.0")
        assert report["errors"] == [], (scenario, report)
        serious = [m["error"] for m in report["messages"] if m["severity"] >= 2]
        # The optional Qdrant chart is not vendored (no Chart.lock, no charts/): a warning only,
        # unless `helm dependency build` fetched it here.
        fetched = any((CHART / "charts").glob("qdrant-*.tgz"))
        missing = [] if fetched else ["chart directory is missing these dependencies: qdrant"]
        assert serious == missing, (scenario, report)


def test_lint_reports_a_broken_template(tmp_path):
    helm = require_module("helm_python", "helm-python-sdk")
    broken = tmp_path / "ragtune"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope.missing }\n")
    report = helm.lint(str(broken))
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_manifests_validate_strictly_against_kubernetes(scenario):
    kv = require_module("kubernetes_validate", "kubernetes-validate")
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
    kv = require_module("kubernetes_validate", "kubernetes-validate")
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
    texts, _ = rendered("gpu")
    path = tmp_path / "manifests.yaml"
    path.write_text("---\n".join(texts.values()))
    cli = require_script("kubernetes-validate")
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
    assert "--max-cpu-loras=32" in args
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
    helm = require_module("helm_python", "helm-python-sdk")
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render_values(overrides)


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


def test_the_grafana_dashboard_ships_in_the_chart_as_in_deploy():
    """The chart carries a copy of deploy/grafana's dashboard (Helm reads no file outside the
    chart): the same JSON, in a ConfigMap Grafana's sidecar picks up, when asked for."""
    dashboard = ROOT / "deploy" / "grafana" / "dashboards" / "ragtune.json"
    copy = ROOT / "helm" / "ragtune" / "dashboards" / "ragtune.json"
    assert json.loads(copy.read_text()) == json.loads(dashboard.read_text()), (
        "helm/ragtune/dashboards/ragtune.json differs from deploy/grafana: copy it again")
    assert not [d for d in render("default") if d["metadata"]["name"].endswith("grafana-dashboard")]
    raw = render_values({**scenario_values("default"), "grafanaDashboard": {"enabled": True}})
    docs = [d for path, text in raw.items() if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    (cm,) = [d for d in docs
             if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("grafana-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["ragtune.json"]) == json.loads(dashboard.read_text())


@pytest.mark.parametrize("scenario", ["default", "external"])
def test_rendered_ragtune_settings_are_real_settings(scenario):
    docs = render(scenario)
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    names = set(config["data"])
    for component in ("api", "worker"):
        spec = one(docs, "Deployment", component)["spec"]["template"]["spec"]
        names |= {e["name"] for e in spec["containers"][0]["env"]}
    assert unknown_settings(names) == []


def test_settings_name_check_catches_unknown_names():
    assert unknown_settings(["RAGTUNE_ENGINE__URLS", "RAGTUNE_ADMIN_KEY", "OTHER"]) == []
    assert unknown_settings(["RAGTUNE_ENGINE__URLZ", "RAGTUNE_NOPE", "RAGTUNE_PORT__X"]) == [
        "RAGTUNE_ENGINE__URLZ", "RAGTUNE_NOPE", "RAGTUNE_PORT__X"]
