"""Every value feeds exactly one env var that the process reads (STYLE.md §3), or is structural.

- Each leaf of values.yaml (and of the ci value sets) is classified: a settings block entry, a
  named wiring value, or structural (with its reason). An unclassified leaf is a knob that only
  exists in YAML: a bug.
- A settings entry appears, with the same value, as SEEDX_<PROCESS>_<FIELD> in every container
  of that process, and nowhere else; a named value changes exactly its env var(s) when perturbed.
- Every SEEDX_* variable the chart renders resolves to a field of the settings class, and the
  class builds from the rendered environment without error (what start-up would do).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import CHART, TEST_KEY, VALUE_SETS, Render
from tests.deploy.contract import (
    OTHER_ENV,
    PROCESSES,
    build_settings,
    container_env,
    load_values,
    process_containers,
    same_value,
    secret_values,
    settings_field,
)

Path_ = tuple[str, ...]

# settings blocks: values path -> (processes, group inside the settings class or None)
SETTINGS_BLOCKS: dict[Path_, tuple[tuple[str, ...], str | None]] = {
    ("gateway", "settings"): (("gateway",), None),
    ("llm", "settings"): (("llm",), None),
    ("llm", "models", "*", "settings"): (("llm",), None),
    ("diffusion", "settings"): (("diffusion",), None),
    ("diffusion", "detokenizers", "*", "settings"): (("diffusion",), None),
    ("placement", "groups", "*", "llm", "settings"): (("llm",), None),
    ("placement", "groups", "*", "diffusion", "*", "settings"): (("diffusion",), None),
    ("transport", "redis"): (("gateway", "llm", "diffusion"), "redis"),
    ("transport", "queue"): (("gateway", "llm", "diffusion"), "queue"),
}

# named wiring values -> the env vars they feed (perturbed below)
NAMED: dict[Path_, str] = {
    ("gateway", "port"): "SEEDX_GATEWAY_PORT",
    ("llm", "metricsPort"): "SEEDX_LLM_METRICS_PORT",
    ("diffusion", "metricsPort"): "SEEDX_DIFFUSION_METRICS_PORT",
    ("models", "mountPath"): "SEEDX_LLM_MODEL SEEDX_DIFFUSION_MODEL",  # the path, per worker
    ("models", "servingDir"): "SEEDX_LLM_MODEL SEEDX_DIFFUSION_MODEL",
    ("llm", "models", "*", "name"): "SEEDX_LLM_MODEL",
    ("diffusion", "detokenizers", "*", "name"): "SEEDX_DIFFUSION_DETOKENIZER",
    ("redis", "external", "url"): "SEEDX_*_REDIS__URL (Secret <release>-redis)",
    ("redis", "external", "sentinel", "passwordSecret"): "SEEDX_*_REDIS__SENTINEL_PASSWORD",
    ("redis", "external", "sentinel", "passwordSecretKey"): "SEEDX_*_REDIS__SENTINEL_PASSWORD",
    ("apiKeys", "keys"): "SEEDX_GATEWAY_API_KEYS_FILE (Secret <release>-api-keys, mounted)",
    ("gateway", "logLevel"): "`seedx gateway --log-level` (GatewaySettings has no log_level)",
    # a colocated GPU group's processes (tests/deploy/test_colocated.py checks each)
    ("placement", "groups", "*", "llm", "model"): "SEEDX_LLM_MODEL",
    ("placement", "groups", "*", "llm", "tensorParallelSize"): "SEEDX_LLM_TENSOR_PARALLEL_SIZE",
    ("placement", "groups", "*", "llm", "kvCacheBytes"): "SEEDX_LLM_KV_CACHE_BYTES",
    ("placement", "groups", "*", "llm", "quantization"): "SEEDX_LLM_QUANTIZATION",
    ("placement", "groups", "*", "diffusion", "*", "detokenizer"): "SEEDX_DIFFUSION_DETOKENIZER",
    ("placement", "groups", "*", "diffusion", "*", "maxBatch"): "SEEDX_DIFFUSION_MAX_BATCH",
}

# structural prefixes -> why they are not process settings
STRUCTURAL: dict[Path_, str] = {
    ("nameOverride",): "names",
    ("fullnameOverride",): "names",
    ("images",): "container images",
    ("imagePullSecrets",): "registry credentials",
    ("gpu",): "GPU resource requests and tolerations",
    ("serviceAccount",): "pod identity",
    ("podSecurityContext",): "security",
    ("containerSecurityContext",): "security",
    ("redis", "bundled"): "which Redis: selects the URL",
    ("redis", "external", "existingSecret"): "where the URL is",
    ("redis", "external", "existingSecretKey"): "where the URL is",
    ("redis", "external", "address"): "KEDA's host:port",
    ("redis", "external", "egressCIDR"): "NetworkPolicy",
    ("redis", "external", "port"): "NetworkPolicy",
    ("redis", "external", "database"): "KEDA",
    ("redis", "external", "tls"): "KEDA",
    ("redis", "external", "sentinel", "enabled"): "checks the URL names sentinels; NetworkPolicy",
    ("redis", "external", "sentinel", "port"): "NetworkPolicy (egress to the sentinels)",
    ("redis", "statefulset"): "the bundled Valkey",
    ("shutdown",): "terminationGracePeriodSeconds and preStop",
    ("apiKeys", "existingSecret"): "where the keys are",
    ("apiKeys", "existingSecretKey"): "where the keys are",
    ("urlSigning",): "where SEEDX_GATEWAY_URL_SIGNING_KEY comes from",
    ("models", "cache"): "the PVC",
    ("models", "convert"): "the convert Job (a CLI, no settings class)",
    ("models", "tiny"): "the demo's init containers (CLIs, no settings class)",
    ("gateway", "replicas"): "scale",
    ("gateway", "service"): "Service",
    ("gateway", "ingress"): "Ingress",
    ("gateway", "hpa"): "HPA",
    ("gateway", "pdb"): "PDB",
    ("keda",): "ScaledObjects",
    ("monitoring",): "ServiceMonitor, PrometheusRule, dashboard",
    ("networkPolicy",): "NetworkPolicies",
    ("placement", "layout"): "which Deployments: one per model/de-tokenizer or one per GPU group",
    ("placement", "resources"): "pod spec",
}
for key in ("name", "gpus", "replicas", "resources", "nodeSelector", "tolerations"):
    STRUCTURAL[("placement", "groups", "*", key)] = "scheduling and scale of one GPU group"
EMPTY: dict[Path_, str] = {("placement", "groups"): "no GPU groups (the separate layout)"}
"""Paths whose value may be an empty list: nothing under them to classify."""
for stage, items in (("llm", "models"), ("diffusion", "detokenizers")):
    for key in ("replicas", "gpus", "resources", "nodeSelector", "tolerations"):
        STRUCTURAL[(stage, items, "*", key)] = "scheduling and scale of one Deployment"
for stage in ("gateway", "llm", "diffusion"):
    for key in ("resources", "probes", "nodeSelector", "tolerations", "affinity", "podAnnotations"):
        STRUCTURAL[(stage, key)] = "pod spec"
for stage in ("llm", "diffusion"):
    STRUCTURAL[(stage, "pdb")] = "the PDB of each of the stage's Deployments"

VALUE_FILES = [
    CHART / "values.yaml",
    *{f for files, _ in VALUE_SETS.values() for f in files},
    CHART / "ci" / "colocated-values.yaml",
]


def _matches(path: Path_, pattern: Path_) -> bool:
    return len(path) >= len(pattern) and all(
        p == "*" or p == q for p, q in zip(pattern, path, strict=False)
    )


def leaves(node: Any, path: Path_ = ()) -> list[tuple[Path_, Any]]:
    """Leaf values; list items of maps get index "*"; a settings block stops at its fields."""
    for pattern, (_, group) in SETTINGS_BLOCKS.items():
        if _matches(path, pattern) and len(path) == len(pattern):
            return settings_entries(node, path, top_is_group=group is None)
    if isinstance(node, dict) and node:
        return [leaf for k, v in node.items() for leaf in leaves(v, (*path, k))]
    if isinstance(node, list) and node and all(isinstance(i, dict) for i in node):
        return [leaf for item in node for leaf in leaves(item, (*path, "*"))]
    return [(path, node)]


def settings_entries(
    node: dict[str, Any], path: Path_, top_is_group: bool
) -> list[tuple[Path_, Any]]:
    """Entries of a settings block as the chart renders them: top-level maps are groups."""
    out: list[tuple[Path_, Any]] = []
    for key, value in (node or {}).items():
        if top_is_group and isinstance(value, dict):
            out += [((*path, key, k2), v2) for k2, v2 in value.items()]
        else:
            out.append(((*path, key), value))
    return out


def classify(path: Path_) -> str:
    if path in EMPTY:
        return "structural"
    for pattern in SETTINGS_BLOCKS:
        if _matches(path, pattern):
            return "settings"
    for pattern in NAMED:
        if path == pattern or (_matches(path, pattern) and len(path) == len(pattern)):
            return "named"
    for pattern in STRUCTURAL:
        if _matches(path, pattern):
            return "structural"
    return "unclassified"


@pytest.mark.parametrize("values_file", VALUE_FILES, ids=lambda p: Path(p).name)
def test_every_value_is_a_setting_a_named_wire_or_structural(values_file: Path) -> None:
    unclassified = [
        ".".join(p) for p, _ in leaves(load_values(values_file)) if classify(p) == "unclassified"
    ]
    assert not unclassified, f"knobs that feed no env var: {unclassified}"


def _expected_env(path: Path_) -> list[tuple[str, str, str | None]]:
    """(process, env name, item name or None) that a settings leaf feeds."""
    for pattern, (processes, group) in SETTINGS_BLOCKS.items():
        if _matches(path, pattern):
            fields = path[len(pattern) :]
            if group:
                fields = (group, *fields)
            item = None if "*" not in pattern else path[pattern.index("*")]
            return [
                (p, PROCESSES[p].prefix + "__".join(f.upper() for f in fields), item)
                for p in processes
            ]
    raise AssertionError(path)


def _merged_values(name: str) -> dict[str, Any]:
    values = load_values(CHART / "values.yaml")
    for f in VALUE_SETS[name][0]:
        values = _merge(values, load_values(f))
    return values


def _item_settings(values: dict[str, Any]) -> Iterator[tuple[str, str, Path_, Any]]:
    """(stage, item name, settings path, value) of each worker item, stage block merged in."""
    for stage, items in (("llm", "models"), ("diffusion", "detokenizers")):
        for item in values[stage][items]:
            merged = {**values[stage]["settings"], **(item.get("settings") or {})}
            for path, value in settings_entries(merged, (stage, "settings"), top_is_group=True):
                if value is not None:
                    yield stage, item["name"], path, value


def _shared_settings(values: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(process, env name, value) of the gateway's and the transport's settings."""
    for block in (("gateway", "settings"), ("transport", "redis"), ("transport", "queue")):
        node = values
        for key in block:
            node = node[key]
        for path, value in leaves(node, block):
            if value is not None:
                for process, env_name, _ in _expected_env(path):
                    yield process, env_name, value


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_each_setting_reaches_its_env_var_in_every_container_of_its_process(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    docs = rendered[name]
    secrets = secret_values(docs)
    envs = [(p, d, container_env(c, secrets)) for p, d, c in process_containers(docs)]
    values = _merged_values(name)
    for stage, item, path, value in _item_settings(values):
        field_env = PROCESSES[stage].prefix + "__".join(s.upper() for s in path[2:])
        model = [
            e
            for p, d, e in envs
            if p == stage and d["metadata"]["labels"]["seedx.io/model"] == item
        ]
        assert model, item
        for env in model:
            assert same_value(env[field_env], value), (field_env, env[field_env], value)
    for process, env_name, value in _shared_settings(values):
        for env in (e for p, _, e in envs if p == process):
            assert same_value(env[env_name], value), (env_name, env[env_name], value)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


PERTURBATIONS: list[tuple[str, set[str]]] = [
    ("gateway.port=8123", {"SEEDX_GATEWAY_PORT"}),
    ("llm.metricsPort=9191", {"SEEDX_LLM_METRICS_PORT"}),
    ("diffusion.metricsPort=9192", {"SEEDX_DIFFUSION_METRICS_PORT"}),
    ("models.mountPath=/srv/weights", {"SEEDX_LLM_MODEL", "SEEDX_DIFFUSION_MODEL"}),
    ("models.servingDir=converted", {"SEEDX_LLM_MODEL", "SEEDX_DIFFUSION_MODEL"}),
    ("llm.models[0].name=seed-x", {"SEEDX_LLM_MODEL"}),
    ("diffusion.detokenizers[0].name=second_stage", {"SEEDX_DIFFUSION_DETOKENIZER"}),
    ("gateway.settings.chat_timeout_s=42", {"SEEDX_GATEWAY_CHAT_TIMEOUT_S"}),
    ("llm.settings.capacity=7", {"SEEDX_LLM_CAPACITY"}),
    (
        "transport.queue.lease_s=40",
        {
            "SEEDX_GATEWAY_QUEUE__LEASE_S",
            "SEEDX_LLM_QUEUE__LEASE_S",
            "SEEDX_DIFFUSION_QUEUE__LEASE_S",
        },
    ),
    (
        "redis.bundled=false,redis.external.url=redis://elsewhere:6379/3",
        {"SEEDX_GATEWAY_REDIS__URL", "SEEDX_LLM_REDIS__URL", "SEEDX_DIFFUSION_REDIS__URL"},
    ),
]


def _env_by_process(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """process -> merged env of its containers (a value set with one item per stage)."""
    secrets = secret_values(docs)
    out: dict[str, dict[str, str]] = {}
    for process, _, container in process_containers(docs):
        out.setdefault(process, {}).update(container_env(container, secrets))
    return out


def _unrandom(value: str | None) -> str | None:
    """``value`` with the bundled Redis's generated password (random per render) masked."""
    return None if value is None else re.sub(r"^redis://:[^@]*@", "redis://:<password>@", value)


@pytest.mark.parametrize(("setting", "expected"), PERTURBATIONS, ids=[p[0] for p in PERTURBATIONS])
def test_a_named_value_changes_exactly_its_env_var(
    render: Render, setting: str, expected: set[str]
) -> None:
    base = _env_by_process(render(sets=[f"apiKeys.keys={{{TEST_KEY}}}"]))
    changed_env = _env_by_process(render(sets=[f"apiKeys.keys={{{TEST_KEY}}}", setting]))
    changed = {
        name
        for process in base
        for name in set(base[process]) | set(changed_env[process])
        if _unrandom(base[process].get(name)) != _unrandom(changed_env[process].get(name))
        and name != "SEEDX_GATEWAY_URL_SIGNING_KEY"  # random per render
    }
    assert changed == expected


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_env_var_is_a_settings_field(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    for process, workload, container in process_containers(rendered[name]):
        for entry in container.get("env", []):
            env_name = entry["name"]
            if env_name.startswith("SEEDX_"):
                settings_field(process, env_name)  # KeyError names the unknown variable
            else:
                assert env_name in OTHER_ENV, f"{workload['metadata']['name']}: {env_name}"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_settings_build_from_the_rendered_environment(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    docs = rendered[name]
    secrets = secret_values(docs)
    keys = tmp_path / "keys"
    keys.write_text(TEST_KEY + "\n")
    for process, workload, container in process_containers(docs):
        env = container_env(container, secrets)
        overrides: dict[str, Any] = {}
        if process == "gateway":
            assert env["SEEDX_GATEWAY_API_KEYS_FILE"] == "/etc/seedx/api-keys/keys"
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/etc/seedx/api-keys" in mounts
            overrides["api_keys_file"] = keys  # the mounted Secret, here
            if env["SEEDX_GATEWAY_URL_SIGNING_KEY"].startswith("<secret"):
                overrides["url_signing_key"] = "x" * 32  # from the user's existing Secret
        settings = build_settings(process, env, **overrides)
        assert settings.redis.url == env[PROCESSES[process].prefix + "REDIS__URL"]  # type: ignore[attr-defined]
        if process == "llm":
            assert str(settings.model).endswith(workload["metadata"]["labels"]["seedx.io/model"])  # type: ignore[attr-defined]
        if process == "diffusion":
            assert settings.detokenizer == workload["metadata"]["labels"]["seedx.io/model"]  # type: ignore[attr-defined]
