"""The chart's two layouts (issue 23 item 5).

- ``placement.layout: separate`` (the default) renders exactly what it rendered before the
  colocated layout existed: golden renders, masked only where a render is random.
- ``placement.layout: colocated`` renders one Deployment per GPU group: one container that
  requests the group's GPUs once and runs its workers as processes under files/colocate.py, each
  with its own settings. The manifests validate against the Kubernetes schemas; the processes'
  environments are the settings classes' fields and build them; probes, shutdown, KEDA, metrics
  and NetworkPolicy are wired to every process; and the schema and the templates refuse a bad
  layout or group.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.conftest import CHART, RELEASE, TEST_KEY, Render, find, helm_template
from tests.deploy.contract import (
    PROCESSES,
    build_settings,
    container_env,
    load_values,
    secret_values,
    settings_field,
)

P = f"{RELEASE}-seedx"
COLOCATED = CHART / "ci" / "colocated-values.yaml"
GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("SEEDX_REGEN_GOLDENS") == "1"
K8S_VERSIONS = ("1.29.0", "1.33.0")
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
KEDA_AND_MONITORING = [
    "keda.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
]

# The separate layout's renders, saved before the colocated layout was added.
SEPARATE_GOLDENS: dict[str, tuple[list[Path], list[str]]] = {
    "separate-defaults": ([], [f"apiKeys.keys={{{TEST_KEY}}}"]),
    "separate-keda": ([CHART / "ci" / "keda-values.yaml"], []),
}


def masked(text: str) -> str:
    """A render with its random parts (the generated URL-signing key, the bundled Redis's
    password and the URL holding it, and their checksum) masked."""
    text = re.sub(r"(?m)^(  url-signing-key: ).*$", r"\1<random>", text)
    text = re.sub(r"(?m)^(  (?:password|url): )[A-Za-z0-9+/]{40,}=*$", r"\1<random>", text)
    return re.sub(r"(?m)^( *checksum/secrets: ).*$", r"\1<random>", text)


@pytest.mark.parametrize("name", sorted(SEPARATE_GOLDENS))
def test_the_separate_layout_renders_what_it_rendered_before(helm: str, name: str) -> None:
    """After an intended change of the separate layout: ``SEEDX_REGEN_GOLDENS=1 pytest <this>``."""
    files, sets = SEPARATE_GOLDENS[name]
    text = masked(helm_template(helm, files, sets).stdout)
    path = GOLDEN / f"{name}.yaml"
    if REGEN:
        path.write_text(text)
    assert path.exists(), f"missing golden {path.name}; run with SEEDX_REGEN_GOLDENS=1"
    assert text == path.read_text(), f"the separate layout's render changed ({path.name})"


def test_the_separate_layout_ignores_placement_groups(helm: str, tmp_path: Path) -> None:
    groups = load_values(COLOCATED)["placement"]["groups"]
    with_groups = helm_template(
        helm,
        sets=[f"apiKeys.keys={{{TEST_KEY}}}", "placement.layout=separate"],
        files=[_values_file(tmp_path, {"placement": {"groups": groups}})],
    )
    plain = helm_template(helm, sets=[f"apiKeys.keys={{{TEST_KEY}}}"])
    assert masked(with_groups.stdout) == masked(plain.stdout)


def _values_file(folder: Path, values: dict[str, Any]) -> Path:
    import yaml

    path = folder / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# --- the colocated render -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colocated(render: Render) -> list[dict[str, Any]]:
    return render([COLOCATED], KEDA_AND_MONITORING)


def _groups(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"].startswith(f"{P}-group-")
    }


def _children(container: dict[str, Any]) -> list[dict[str, Any]]:
    args = container["args"]
    assert container["command"] == ["python", "/etc/seedx/colocate/colocate.py"]
    assert args[0] == "run"
    return [json.loads(args[i + 1]) for i, a in enumerate(args) if a == "--child"]


def _process_env(
    docs: list[dict[str, Any]], container: dict[str, Any], child: dict[str, Any]
) -> dict[str, str]:
    """The environment colocate.py gives a child: the container's, then the child's own."""
    return {**container_env(container, secret_values(docs)), **child["env"]}


def _process(child: dict[str, Any]) -> str:
    return {"llm": "llm", "diffusion": "diffusion"}[child["argv"][2]]


@pytest.mark.parametrize("sets", [[], KEDA_AND_MONITORING], ids=["plain", "keda-monitoring"])
def test_colocated_manifests_lint_and_validate(helm: str, render: Render, sets: list[str]) -> None:
    command = [helm, "lint", str(CHART), "--strict", "-f", str(COLOCATED)]
    for s in sets:
        command += ["--set", s]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for doc in render([COLOCATED], sets):
        if doc["kind"] in CUSTOM_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = f"{doc['kind']}/{doc['metadata']['name']} (k8s {version})"
                pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


def test_groups_replace_the_per_stage_deployments(colocated: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"] for d in colocated if d["kind"] == "Deployment"}
    assert deployments == {f"{P}-gateway", f"{P}-group-g0", f"{P}-group-g1"}
    job = find(colocated, "Job", f"{P}-convert")["spec"]["template"]["spec"]["containers"][0]
    models = [job["command"][i + 1] for i, a in enumerate(job["command"]) if a == "--model"]
    assert models == ["seed-x-i", "seed-x-edit"]  # the groups' LLMs are converted


def test_one_container_requests_the_groups_gpus_once(colocated: list[dict[str, Any]]) -> None:
    gpus = {"g0": 1, "g1": 2}
    for name, deployment in _groups(colocated).items():
        spec = deployment["spec"]["template"]["spec"]
        assert [c["name"] for c in spec["containers"]] == ["workers"]
        container = spec["containers"][0]
        group = name.removeprefix(f"{P}-group-")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus[group]
        assert "nvidia.com/gpu" not in str(container["resources"].get("requests", {}))
        assert "nvidia.com/gpu" not in str(spec.get("initContainers", []))
        names = [child["name"] for child in _children(container)]
        assert names == ["llm", {"g0": "first_stage", "g1": "second_stage"}[group]]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]


def test_each_process_gets_its_own_budget_and_settings(colocated: list[dict[str, Any]]) -> None:
    expected = {
        "g0": {"SEEDX_LLM_TENSOR_PARALLEL_SIZE": "1", "SEEDX_LLM_KV_CACHE_BYTES": "24546115584",
               "SEEDX_LLM_CAPACITY": "16", "SEEDX_LLM_MODEL": "/models/serving/seed-x-i"},
        "g1": {"SEEDX_LLM_TENSOR_PARALLEL_SIZE": "2", "SEEDX_LLM_KV_CACHE_BYTES": "26843545600",
               "SEEDX_LLM_CAPACITY": "32", "SEEDX_LLM_MODEL": "/models/serving/seed-x-edit"},
    }  # fmt: skip
    detokenizer = {"g0": "first_stage", "g1": "second_stage"}
    for name, deployment in _groups(colocated).items():
        group = name.removeprefix(f"{P}-group-")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        llm, diffusion = _children(container)
        for key, value in expected[group].items():
            assert llm["env"][key] == value, (group, key)
        assert "SEEDX_LLM_QUANTIZATION" not in llm["env"]  # quantization: null
        assert diffusion["env"]["SEEDX_DIFFUSION_MAX_BATCH"] == "2"
        assert diffusion["env"]["SEEDX_DIFFUSION_DETOKENIZER"] == detokenizer[group]
        assert not any(k.startswith("SEEDX_DIFFUSION_") for k in llm["env"])
        assert not any(k.startswith("SEEDX_LLM_") for k in diffusion["env"])
        # distinct metrics ports, each the process's setting and a named container port
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"llm-metrics": 9101, "diff-metrics": 9102}
        assert (llm["port"], diffusion["port"]) == (9101, 9102)
        assert llm["env"]["SEEDX_LLM_METRICS_PORT"] == "9101"
        assert diffusion["env"]["SEEDX_DIFFUSION_METRICS_PORT"] == "9102"


def test_every_process_environment_is_its_settings_class(
    colocated: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Each SEEDX_* variable a process gets names a field of its class, and the class builds
    from it (what start-up does); the container's shared part is transport only."""
    for deployment in _groups(colocated).values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        for entry in container["env"]:
            assert (
                entry["name"] == "HOME"
                or "_REDIS__" in entry["name"]
                or ("_QUEUE__" in entry["name"])
            ), entry["name"]
        for child in _children(container):
            process = _process(child)
            env = _process_env(colocated, container, child)
            for name in env:  # the other stage's transport variables are not read by it
                if name.startswith(PROCESSES[process].prefix):
                    settings_field(process, name)  # KeyError names the unknown variable
            settings = build_settings(process, env)
            assert settings.redis.url.startswith("redis://")  # type: ignore[attr-defined]
            assert settings.queue.shutdown_grace_s == 60.0  # type: ignore[attr-defined]
            if process == "llm":
                assert settings.kv_cache_bytes in (24_546_115_584, 26_843_545_600)  # type: ignore[attr-defined]
            else:
                assert settings.max_batch == 2  # type: ignore[attr-defined]


def test_named_values_reach_their_env_vars(render: Render) -> None:
    docs = render(
        [COLOCATED],
        [
            "placement.groups[0].llm.quantization=fp8",
            "placement.groups[0].diffusion[0].maxBatch=3",
            "placement.groups[1].llm.tensorParallelSize=null",  # default: the group's gpus
            "placement.groups[0].diffusion[0].settings.device=cuda:0",
            "placement.groups[1].replicas=0",  # parked, not defaulted to 1
            "llm.metricsPort=9201",
            "diffusion.metricsPort=9202",
        ],
    )
    groups = _groups(docs)
    g0 = _children(groups[f"{P}-group-g0"]["spec"]["template"]["spec"]["containers"][0])
    g1 = _children(groups[f"{P}-group-g1"]["spec"]["template"]["spec"]["containers"][0])
    assert g0[0]["env"]["SEEDX_LLM_QUANTIZATION"] == "fp8"
    assert g0[1]["env"]["SEEDX_DIFFUSION_MAX_BATCH"] == "3"
    assert g0[1]["env"]["SEEDX_DIFFUSION_DEVICE"] == "cuda:0"
    assert g1[0]["env"]["SEEDX_LLM_TENSOR_PARALLEL_SIZE"] == "2"
    assert (g0[0]["port"], g0[1]["port"]) == (9201, 9202)
    assert g0[0]["env"]["SEEDX_LLM_METRICS_PORT"] == "9201"
    assert groups[f"{P}-group-g0"]["spec"]["replicas"] == 1
    assert groups[f"{P}-group-g1"]["spec"]["replicas"] == 0


def test_a_group_with_both_detokenizers_gets_two_ports(render: Render, tmp_path: Path) -> None:
    groups = [
        {
            "name": "images",
            "gpus": 1,
            "diffusion": [
                {"detokenizer": "first_stage", "maxBatch": 2},
                {"detokenizer": "second_stage", "maxBatch": 1},
            ],
        }
    ]
    docs = render(
        [_values_file(tmp_path, {"placement": {"layout": "colocated", "groups": groups}})],
        [f"apiKeys.keys={{{TEST_KEY}}}"],
    )
    spec = find(docs, "Deployment", f"{P}-group-images")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    children = _children(container)
    assert [c["env"]["SEEDX_DIFFUSION_DETOKENIZER"] for c in children] == [
        "first_stage",
        "second_stage",
    ]
    assert [c["port"] for c in children] == [9102, 9103]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "diff-metrics": 9102,
        "diff-metrics-2": 9103,
    }
    assert not any(e["name"].startswith("SEEDX_LLM_") for e in container["env"])
    assert container["livenessProbe"]["exec"]["command"][-2:] == ["9102", "9103"]
    # no LLM: the diffusion stage's probes and scheduling lead
    assert container["livenessProbe"]["periodSeconds"] == 15


def test_probes_cover_every_process_and_their_sequential_start(
    colocated: list[dict[str, Any]],
) -> None:
    values = load_values(CHART / "values.yaml")
    llm, diffusion = values["llm"]["probes"]["startup"], values["diffusion"]["probes"]["startup"]
    budget = (
        llm["periodSeconds"] * llm["failureThreshold"]
        + diffusion["periodSeconds"] * diffusion["failureThreshold"]
    )
    for deployment in _groups(colocated).values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = [str(p["containerPort"]) for p in container["ports"]]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = container[kind]["exec"]["command"]
            assert command == ["python", "/etc/seedx/colocate/colocate.py", "probe", *ports]
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= budget


def test_graceful_shutdown_reaches_every_process(colocated: list[dict[str, Any]]) -> None:
    for deployment in _groups(colocated).values():
        spec = deployment["spec"]["template"]["spec"]
        args = spec["containers"][0]["args"]
        grace = float(args[args.index("--grace-s") + 1])
        assert 60.0 <= grace < spec["terminationGracePeriodSeconds"]  # drain, then SIGKILL
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {
            "maxSurge": 0,
            "maxUnavailable": 1,
        }


def test_security_context_and_the_supervisor_volume(colocated: list[dict[str, Any]]) -> None:
    script = (CHART / "files" / "colocate.py").read_text()
    config_map = find(colocated, "ConfigMap", f"{P}-colocate")
    assert config_map["data"]["colocate.py"] == script.rstrip("\n")
    for deployment in _groups(colocated).values():
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        ctx = spec["containers"][0]["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["colocate"]["configMap"]["name"] == f"{P}-colocate"
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["colocate"]["readOnly"] is True
        assert "checksum/colocate" in deployment["spec"]["template"]["metadata"]["annotations"]


def test_keda_scales_each_group_as_a_unit_on_all_its_streams(
    colocated: list[dict[str, Any]],
) -> None:
    scaled = {d["metadata"]["name"]: d["spec"] for d in colocated if d["kind"] == "ScaledObject"}
    assert set(scaled) == {f"{P}-group-g0", f"{P}-group-g1"}
    # Per stream: its lag against the stage's lagCount, its pending entries against the
    # capacity of the worker serving it (its merged settings).
    targets = {
        name: [
            (t["metadata"]["stream"], t["metadata"].get("lagCount"),
             t["metadata"].get("pendingEntriesCount"))
            for t in spec["triggers"]
        ]
        for name, spec in scaled.items()
    }  # fmt: skip
    assert targets == {
        f"{P}-group-g0": [
            ("seedx:jobs:llm:seed-x-i", "16", None),
            ("seedx:jobs:llm:seed-x-i", None, "16"),  # capacity: 16 in the group's settings
            ("seedx:jobs:diffusion:first_stage", "4", None),
            ("seedx:jobs:diffusion:first_stage", None, "4"),  # held_jobs: 2 x maxBatch 2
        ],
        f"{P}-group-g1": [
            ("seedx:jobs:llm:seed-x-edit", "16", None),
            ("seedx:jobs:llm:seed-x-edit", None, "32"),
            ("seedx:jobs:diffusion:second_stage", "4", None),
            ("seedx:jobs:diffusion:second_stage", None, "4"),
        ],
    }
    for name, spec in scaled.items():
        assert spec["scaleTargetRef"]["name"] == name
        assert "replicas" not in find(colocated, "Deployment", name)["spec"]  # KEDA owns it
        assert spec["minReplicaCount"] == 1


def test_metrics_services_monitor_and_network_policy_find_every_process(
    colocated: list[dict[str, Any]],
) -> None:
    pod_ports: set[str] = set()
    for deployment in _groups(colocated).values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        pod_ports |= {p["name"] for p in container["ports"]}
        for stage in ("llm", "diffusion"):
            service = find(colocated, "Service", f"{P}-{stage}-metrics")
            assert service["metadata"]["labels"]["app.kubernetes.io/component"] == stage
            selector = service["spec"]["selector"]
            assert all(labels.get(k) == v for k, v in selector.items())
        policy = find(colocated, "NetworkPolicy", f"{P}-workers")["spec"]
        match = policy["podSelector"]["matchExpressions"]
        component = next(e for e in match if e["key"] == "app.kubernetes.io/component")
        assert labels["app.kubernetes.io/component"] in component["values"]
        assert labels["seedx.io/redis-client"] == "true"  # egress to Redis
    targets = {
        p["targetPort"]
        for stage in ("llm", "diffusion")
        for p in find(colocated, "Service", f"{P}-{stage}-metrics")["spec"]["ports"]
    }
    assert pod_ports <= targets
    allowed = {
        p["port"]
        for rule in find(colocated, "NetworkPolicy", f"{P}-workers")["spec"]["ingress"]
        for p in rule["ports"]
    }
    assert pod_ports <= allowed
    monitor = find(colocated, "ServiceMonitor", P)["spec"]
    assert monitor["targetLabels"] == ["app.kubernetes.io/component"]  # the stage, per Service
    assert {e["port"] for e in monitor["endpoints"]} == {"http", "metrics", "metrics-2"}


# --- what the schema and the templates refuse ----------------------------------------------------
GOOD_LLM: dict[str, Any] = {"model": "seed-x-i", "kvCacheBytes": 1 << 30}
GOOD_GROUP: dict[str, Any] = {"name": "g0", "gpus": 1, "llm": GOOD_LLM}


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ({"layout": "together"}, "layout"),  # not a layout
        ({"layout": "colocated", "groups": [{"name": "g0", "llm": GOOD_LLM}]}, "gpus"),
        ({"layout": "colocated", "groups": [{**GOOD_GROUP, "gpus": 0}]}, "gpus"),
        ({"layout": "colocated", "groups": []}, "placement.groups"),
        ({"layout": "colocated", "groups": [{"name": "g0", "gpus": 1}]}, "llm"),  # no worker
        (
            {"layout": "colocated",
             "groups": [{**GOOD_GROUP, "llm": {"model": "seed-x-i"}}]},
            "kvCacheBytes",
        ),
        (
            {"layout": "colocated",
             "groups": [{**GOOD_GROUP, "llm": {**GOOD_LLM, "tensorParallelSize": 2}}]},
            "tensorParallelSize=2",
        ),
        (
            {"layout": "colocated",
             "groups": [{**GOOD_GROUP, "llm": {**GOOD_LLM, "quantization": "int4"}}]},
            "quantization",
        ),
        (
            {"layout": "colocated",
             "groups": [{**GOOD_GROUP, "llm": {**GOOD_LLM,
                                              "settings": {"kv_cache_bytes": 1 << 30}}}]},
            "kv_cache_bytes",  # one value per env var: kvCacheBytes is the group's
        ),
        (
            {"layout": "colocated",
             "groups": [{**GOOD_GROUP, "diffusion": [{"detokenizer": "first_stage"},
                                                     {"detokenizer": "first_stage"}]}]},
            "listed twice",
        ),
        (
            {"layout": "colocated",
             "groups": [{**GOOD_GROUP, "diffusion": [{"detokenizer": "third_stage"}]}]},
            "detokenizer",
        ),
        ({"layout": "colocated", "groups": [GOOD_GROUP, GOOD_GROUP]}, "used twice"),
    ],
)  # fmt: skip
def test_bad_placements_fail_to_render(
    helm: str, placement: dict[str, Any], message: str, tmp_path: Path
) -> None:
    result = helm_template(
        helm,
        [_values_file(tmp_path, {"placement": placement})],
        [f"apiKeys.keys={{{TEST_KEY}}}"],
        check=False,
    )
    assert result.returncode != 0, f"rendered: {placement}"
    assert message in result.stderr, result.stderr


def test_the_group_keys_are_typed_by_the_settings_fields() -> None:
    """tensorParallelSize, kvCacheBytes, quantization, detokenizer and maxBatch feed settings
    fields: the schema takes their types and bounds from the classes."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    group = schema["properties"]["placement"]["properties"]["groups"]["items"]["properties"]
    llm_fields = PROCESSES["llm"].load().model_fields
    assert "tensor_parallel_size" in llm_fields
    assert group["llm"]["properties"]["kvCacheBytes"]["minimum"] == 1 << 20
    assert group["llm"]["properties"]["quantization"]["anyOf"][0] == {"enum": ["fp8"]}
    assert group["diffusion"]["items"]["properties"]["detokenizer"] == {
        "enum": ["first_stage", "second_stage"],
        "description": PROCESSES["diffusion"].load().model_fields["detokenizer"].description,
    }
    assert group["diffusion"]["items"]["properties"]["maxBatch"]["anyOf"][0]["maximum"] == 64
