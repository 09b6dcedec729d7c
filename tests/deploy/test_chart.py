"""helm lint and template for every value set; each rendered manifest validates against the
Kubernetes schemas; the wiring details the issue asks for are present."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.conftest import (
    CHART,
    RELEASE,
    ROOT,
    TEST_KEY,
    VALUE_SETS,
    find,
    helm_template,
    workloads,
)

K8S_VERSIONS = ("1.29.0", "1.33.0")
# Custom resources (KEDA, prometheus-operator) have no schema in kubernetes-validate: their
# shape is asserted below instead.
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
P = f"{RELEASE}-seedx"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint(helm: str, name: str) -> None:
    files, sets = VALUE_SETS[name]
    command = [helm, "lint", str(CHART), "--strict"]
    for f in files:
        command += ["-f", str(f)]
    for s in sets:
        command += ["--set", s]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_manifests_validate_against_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    docs = rendered[name]
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = f"{doc['kind']}/{doc['metadata']['name']} (k8s {version})"
                pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


def test_schema_is_generated_from_the_settings_classes() -> None:
    result = subprocess.run(
        ["python", str(ROOT / "scripts" / "gen_helm_schema.py"), "--check"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "gateway.settings.chat_timeout=5",
            "chat_timeout",
        ),  # misspelt: the field is chat_timeout_s
        ("llm.settings.capacity=0", "capacity"),  # ge=1 in LLMWorkerSettings
        ("diffusion.settings.dtype=fp8", "dtype"),  # not one of the Literal's values
        ("transport.redis.url=redis://x", "url"),  # the chart owns the URL (a Secret)
    ],
)
def test_schema_refuses_what_the_settings_class_would(
    helm: str, setting: str, message: str
) -> None:
    result = helm_template(helm, sets=[f"apiKeys.keys={{{TEST_KEY}}}", setting], check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_no_api_keys_is_refused(helm: str) -> None:
    result = helm_template(helm, check=False)
    assert result.returncode != 0
    assert "apiKeys" in result.stderr


def test_scale_to_zero_without_the_gateway_setting_is_refused(helm: str) -> None:
    """KEDA at zero needs the gateway to queue jobs for a stage with no live worker."""
    result = helm_template(
        helm, sets=["apiKeys.keys[0]=sk-test-0123456789", "keda.enabled=true",
                    "keda.diffusion.minReplicas=0"], check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "gateway.settings.admission.scale_to_zero" in result.stderr


def _kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def test_defaults_render_every_stage_with_gpus_and_probes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["defaults"]
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    expected |= {"StatefulSet", "NetworkPolicy", "Secret", "PersistentVolumeClaim"}
    assert expected <= _kinds(docs)
    llm = find(docs, "Deployment", f"{P}-llm-seed-x-i")["spec"]["template"]["spec"]
    container = llm["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in llm[
        "tolerations"
    ]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800  # long model loads
    diffusion = find(docs, "Deployment", f"{P}-diffusion-first-stage")["spec"]["template"]
    assert diffusion["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    gateway = find(docs, "Deployment", f"{P}-gateway")["spec"]["template"]["spec"]
    assert gateway["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "nvidia.com/gpu" not in str(gateway)


def test_graceful_shutdown_outlasts_the_drain(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    for workload in workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for c in spec["containers"] for e in c.get("env", [])}
        for key, value in env.items():  # the worker loop's drain (workers/worker.py)
            if key in (
                "SEEDX_LLM_QUEUE__SHUTDOWN_GRACE_S",
                "SEEDX_DIFFUSION_QUEUE__SHUTDOWN_GRACE_S",
            ):
                assert spec["terminationGracePeriodSeconds"] > float(value), workload["metadata"]
    gateway = find(docs, "Deployment", f"{P}-gateway")["spec"]["template"]["spec"]
    pre_stop = gateway["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert gateway["terminationGracePeriodSeconds"] > int(pre_stop[-1]) + 30  # + uvicorn's 30 s


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_runs_as_non_root_with_a_read_only_root(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    for workload in workloads(rendered[name]):
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]


def test_tiny_demo_has_no_gpu_and_builds_its_checkpoint(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["tiny-demo"]
    assert "nvidia.com/gpu" not in str(docs)
    assert "PersistentVolumeClaim" not in _kinds(docs)
    llm = find(docs, "Deployment", f"{P}-llm-seed-x-i")["spec"]["template"]["spec"]
    init = [c["command"][:2] for c in llm["initContainers"]]
    assert init == [["seedx", "make-tiny"], ["seedx", "convert"]]
    assert llm["containers"][0]["image"].endswith("-cpu")


def test_external_redis_uses_the_existing_secrets(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["external-redis"]
    assert "StatefulSet" not in _kinds(docs)
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    assert names == {f"{P}-redis"}  # api keys and signing key come from the user's Secrets
    for workload in workloads(docs):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            refs = [e for e in container["env"] if e["name"].endswith("_REDIS__URL")]
            assert refs[0]["valueFrom"]["secretKeyRef"]["name"] == f"{P}-redis"
    egress = find(docs, "NetworkPolicy", f"{P}-redis-clients")["spec"]["egress"]
    assert egress == [{"ports": [{"port": 6380, "protocol": "TCP"}],
                       "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}]  # fmt: skip


def test_keda_scales_each_stage_on_its_own_stream(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["keda"]
    scaled = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "ScaledObject"}
    assert set(scaled) == {
        f"{P}-llm-seed-x-i", f"{P}-llm-seed-x-edit",
        f"{P}-diffusion-first-stage", f"{P}-diffusion-second-stage",
    }  # fmt: skip
    for name, spec in scaled.items():
        assert spec["scaleTargetRef"]["name"] == name
        find(docs, "Deployment", name)  # the target exists
        assert "replicas" not in find(docs, "Deployment", name)["spec"]  # KEDA owns replicas
        lag, pending = spec["triggers"]  # KEDA's HPA follows the larger of the two
        for trigger in (lag, pending):
            assert trigger["type"] == "redis-streams"
            assert trigger["metadata"]["consumerGroup"] == "workers"  # keys.WORKER_GROUP
            assert trigger["metadata"]["address"] == f"{P}-redis.seedx.svc:6379"
            assert trigger["metadata"]["stream"] == lag["metadata"]["stream"]
            assert trigger["authenticationRef"]["name"] == f"{P}-redis"
        assert "pendingEntriesCount" not in lag["metadata"]
        assert "lagCount" not in pending["metadata"]  # KEDA reads one count per trigger
    streams = {n: s["triggers"][0]["metadata"]["stream"] for n, s in scaled.items()}
    assert streams[f"{P}-llm-seed-x-edit"] == "seedx:jobs:llm:seed-x-edit"
    assert streams[f"{P}-diffusion-second-stage"] == "seedx:jobs:diffusion:second_stage"
    targets = {
        n: (s["triggers"][0]["metadata"]["lagCount"], s["triggers"][1]["metadata"][
            "pendingEntriesCount"]) for n, s in scaled.items()
    }  # fmt: skip
    assert targets == {
        f"{P}-llm-seed-x-i": ("16", "32"),  # lagCount; the worker's capacity
        f"{P}-llm-seed-x-edit": ("16", "16"),  # its own capacity: 16
        f"{P}-diffusion-first-stage": ("4", "8"),  # held_jobs: 2 x max_batch
        f"{P}-diffusion-second-stage": ("4", "8"),
    }
    assert scaled[f"{P}-diffusion-first-stage"]["minReplicaCount"] == 0  # scale to zero
    gateway_env = find(docs, "Deployment", f"{P}-gateway")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in gateway_env["containers"][0]["env"]}
    assert env["SEEDX_GATEWAY_ADMISSION__SCALE_TO_ZERO"] == '["diffusion"]'
    redis_policy = find(docs, "NetworkPolicy", f"{P}-redis")["spec"]["ingress"][0]["from"]
    assert len(redis_policy) == 2  # the release's Redis clients and the KEDA operator


def test_keda_on_prometheus_scales_on_the_gateways_queue_load(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "prometheus.yaml"
    values.write_text(
        "keda: {prometheus: {serverAddress: 'http://prometheus.monitoring:9090'},"
        " diffusion: {targetLoad: 0.75}}\n"
    )
    docs = _docs(helm_template(helm, [CHART / "ci" / "keda-values.yaml", values]).stdout)
    scaled = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "ScaledObject"}
    assert len(scaled) == 4
    (trigger,) = scaled[f"{P}-llm-seed-x-edit"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "Value"  # a ratio: the HPA multiplies it by ready pods
    metadata = trigger["metadata"]
    assert metadata["serverAddress"] == "http://prometheus.monitoring:9090"
    assert metadata["query"] == (
        'max(seedx_queue_load{namespace="seedx", service="demo-seedx-gateway", stage="llm",'
        ' model="seed-x-edit"})'
    )  # fleet.QUEUE_LOAD, max over the gateway replicas (each exports the same figure)
    assert (metadata["threshold"], metadata["activationThreshold"]) == ("1", "0")
    assert metadata["ignoreNullValues"] == "false"  # an unscraped gateway is not a load of 0
    (diffusion,) = scaled[f"{P}-diffusion-first-stage"]["triggers"]
    assert diffusion["metadata"]["threshold"] == "0.75"
    assert 'stage="diffusion", model="first_stage"' in diffusion["metadata"]["query"]
    assert not [d for d in docs if d["kind"] == "TriggerAuthentication"]  # no Redis trigger


def test_the_charts_capacity_defaults_are_the_workers() -> None:
    """seedx.workerCapacity (the pending-entries target) repeats two settings defaults."""
    from workers.diffusion.settings import DiffusionWorkerSettings
    from workers.llm.worker import LLMWorkerSettings

    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    llm = LLMWorkerSettings.model_fields["capacity"].default
    max_batch = DiffusionWorkerSettings.model_fields["max_batch"].default
    assert f"default {llm} .settings.capacity" in helpers
    assert f"mul 2 (default {max_batch} .settings.max_batch)" in helpers
    held = DiffusionWorkerSettings.model_construct(max_batch=3, capacity=None).held_jobs
    assert held == 6  # held_jobs: 2 x max_batch when capacity is not set


@pytest.mark.parametrize("name", ["defaults", "keda", "colocated"])
def test_every_worker_deployment_has_a_disruption_budget(
    helm: str, rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    docs = (
        _docs(helm_template(helm, [CHART / "ci" / "colocated-values.yaml"]).stdout)
        if name == "colocated"
        else rendered[name]
    )
    deployments = {
        d["metadata"]["name"]: d["spec"]["selector"]["matchLabels"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    budgets = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert set(budgets) == set(deployments)  # gateway and every worker Deployment, no other
    for deployment, selector in deployments.items():
        assert budgets[deployment]["selector"]["matchLabels"] == selector
        assert budgets[deployment]["maxUnavailable"] == 1
        if not deployment.endswith("-gateway"):
            assert budgets[deployment]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_worker_disruption_budgets_can_be_tuned_or_disabled(helm: str) -> None:
    sets = [
        f"apiKeys.keys={{{TEST_KEY}}}",
        "llm.pdb.enabled=false",
        "diffusion.pdb.maxUnavailable=0",
    ]
    docs = _docs(helm_template(helm, sets=sets).stdout)
    budgets = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert set(budgets) == {f"{P}-gateway", f"{P}-diffusion-first-stage"}
    assert budgets[f"{P}-diffusion-first-stage"]["maxUnavailable"] == 0


def _docs(text: str) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(text) if d]


def test_stream_names_match_the_transport() -> None:
    from workers import keys

    assert keys.job_stream("llm", "seed-x-i") == "seedx:jobs:llm:seed-x-i"
    assert keys.WORKER_GROUP == "workers"


def test_monitoring_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    import json

    docs = rendered["keda"]
    monitor = find(docs, "ServiceMonitor", f"{P}")["spec"]
    assert {e["port"] for e in monitor["endpoints"]} == {"http", "metrics"}
    selected = [d for d in docs if d["kind"] == "Service"
                and d["metadata"]["labels"].get("seedx.io/metrics") == "true"]  # fmt: skip
    assert len(selected) == 3  # gateway, llm, diffusion
    rules = find(docs, "PrometheusRule", f"{P}")["spec"]["groups"][0]["rules"]
    alerts = {r["alert"] for r in rules}
    assert {"SeedxQueueLagHigh", "SeedxErrorRateHigh", "SeedxNoLiveLLMWorkers",
            "SeedxNoLiveDiffusionWorkers"} <= alerts  # fmt: skip
    assert "{{ $labels.stage }}" in str(rules)  # Prometheus templates survive Helm
    dashboard = find(docs, "ConfigMap", f"{P}-dashboard")
    panels = json.loads(dashboard["data"]["seedx.json"])["panels"]
    assert len([p for p in panels if p["type"] == "timeseries"]) >= 12
    # Queue load and Redis full (issue 24): alerts and panels on what the processes export.
    new_alerts = {"SeedxQueueLoadHigh", "SeedxRedisFull", "SeedxRedisFullRefusals"}
    assert new_alerts <= alerts
    by_title = {p["title"]: p for p in panels}
    new_panels = ["Queue load by stage and model", "Queued and running jobs", "Redis full refusals"]
    exprs = [r["expr"] for r in rules if r["alert"] in new_alerts]
    exprs += [t["expr"] for title in new_panels for t in by_title[title]["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bseedx_\w+", expr)}
    assert {"seedx_queue_load", "seedx_fleet_jobs", "seedx_gateway_redis_full",
            "seedx_redis_full_refusals_total"} <= used  # fmt: skip
    assert used <= _exported_metric_names()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    _assert_no_overlap([p["gridPos"] for p in panels])


def _exported_metric_names() -> set[str]:
    """Sample names the gateway and the workers' shared modules register."""
    import importlib

    from prometheus_client import REGISTRY

    for module in ("server.fleet", "server.metrics", "workers.connection", "workers.metrics"):
        importlib.import_module(module)  # registers its collectors
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def _assert_no_overlap(boxes: list[dict[str, int]]) -> None:
    cells: set[tuple[int, int]] = set()
    for box in boxes:
        mine = {(box["x"] + i, box["y"] + j) for i in range(box["w"]) for j in range(box["h"])}
        assert not cells & mine, f"dashboard panel at {box} overlaps another"
        cells |= mine


def test_network_policy_exposes_only_the_gateway(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["defaults"]
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    deny = policies[f"{P}-default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny
    gateway = policies[f"{P}-gateway"]["ingress"]
    assert gateway == [{"ports": [{"port": "http", "protocol": "TCP"}]}]  # from anywhere
    workers = policies[f"{P}-workers"]["ingress"]
    assert all(rule.get("from") for rule in workers)  # only the metrics scrapers
    redis_egress = policies[f"{P}-redis-clients"]["egress"]
    assert redis_egress[0]["ports"] == [{"port": 6379, "protocol": "TCP"}]


def test_prometheus_still_scrapes_a_gateway_limited_to_some_clients(helm: str) -> None:
    """With networkPolicy.gatewayFrom set, the scrapers (monitoring.scrapeFrom) are let in to
    the gateway's http port too: the alerts and seedx_queue_load (KEDA) depend on it."""
    clients = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
    sets = [f"apiKeys.keys={{{TEST_KEY}}}", "networkPolicy.gatewayFrom[0].namespaceSelector"
            ".matchLabels.kubernetes\\.io/metadata\\.name=ingress"]  # fmt: skip
    docs = _docs(helm_template(helm, sets=sets).stdout)
    (rule,) = find(docs, "NetworkPolicy", f"{P}-gateway")["spec"]["ingress"]
    scrapers = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert rule["from"] == [clients, scrapers]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_convert_job_runs_once_before_the_workers(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    job = find(rendered["keda"], "Job", f"{P}-convert")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["seedx", "convert", "/models/SEED-X-17B", "/models/serving"]
    assert command.count("--model") == 2
    assert "float16" in command


def test_values_files_exist() -> None:
    for files, _ in VALUE_SETS.values():
        for f in files:
            assert Path(f).is_file()
