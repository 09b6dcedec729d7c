"""Writes deploy/helm/seedx/values.schema.json from the processes' settings classes.

The settings classes are the source of truth (STYLE.md §3): each ``settings`` block of the chart
accepts exactly the fields of its class that the chart does not own itself (ports, paths, the
Redis URL, secrets: those are wired by the templates), typed and bounded as the class declares
them, so a misspelt or out-of-range setting fails at ``helm install`` rather than at pod start.
The structural part of the schema (images, resources, probes, policies) is declared here too.

    python scripts/gen_helm_schema.py           # rewrite the schema
    python scripts/gen_helm_schema.py --check   # exit 1 when the committed schema is stale

``tests/deploy`` runs the check, and uses :data:`PROCESSES` as the env-var contract.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import AnyHttpUrl, BaseModel, SecretStr
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "deploy" / "helm" / "seedx" / "values.schema.json"


@dataclass(frozen=True)
class Process:
    """One process the chart runs: its settings class, env prefix and the fields the chart owns."""

    name: str
    settings_class: str  # "module:Class"
    prefix: str
    chart_owned: tuple[str, ...]

    def load(self) -> type[BaseModel]:
        module, cls = self.settings_class.split(":")
        return getattr(__import__(module, fromlist=[cls]), cls)  # type: ignore[no-any-return]


# Fields set by the templates (not from a `settings` block), with what sets them.
PROCESSES: dict[str, Process] = {
    "gateway": Process(
        "gateway",
        "server.settings:GatewaySettings",
        "SEEDX_GATEWAY_",
        # host: 0.0.0.0 in a pod; port: gateway.port; api_keys(_file): the apiKeys Secret;
        # url_signing_key: the urlSigning Secret; redis/queue: transport.*
        ("host", "port", "api_keys", "api_keys_file", "url_signing_key", "redis", "queue"),
    ),
    "llm": Process(
        "llm",
        "workers.llm.worker:LLMWorkerSettings",
        "SEEDX_LLM_",
        ("model", "metrics_port", "redis", "queue"),  # models.* paths, llm.metricsPort
    ),
    "diffusion": Process(
        "diffusion",
        "workers.diffusion.settings:DiffusionWorkerSettings",
        "SEEDX_DIFFUSION_",
        # models.* path, diffusion.detokenizers[].name, diffusion.metricsPort
        ("model", "detokenizer", "metrics_port", "redis", "queue"),
    ),
}
TRANSPORT = {
    "redis": ("workers.settings:RedisSettings", ("url",)),  # the URL comes from a Secret
    "queue": ("workers.settings:QueueSettings", ()),
}


# --- settings class -> JSON schema ---------------------------------------------------------------
def _constraints(field: FieldInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            out["minimum"] = meta.ge
        elif isinstance(meta, annotated_types.Gt):
            out["exclusiveMinimum"] = meta.gt
        elif isinstance(meta, annotated_types.Le):
            out["maximum"] = meta.le
        elif isinstance(meta, annotated_types.Lt):
            out["exclusiveMaximum"] = meta.lt
        elif isinstance(meta, annotated_types.MinLen):
            out["minItems"] = meta.min_length
        elif hasattr(meta, "pattern") and getattr(meta, "pattern", None):
            out["pattern"] = meta.pattern
    return out


def type_schema(annotation: Any) -> dict[str, Any]:
    """The JSON schema of a values entry that pydantic-settings parses as ``annotation``."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [type_schema(a) for a in args if a is not type(None)]
        schema = inner[0] if len(inner) == 1 else {"anyOf": inner}
        return {"anyOf": [schema, {"type": "null"}]} if type(None) in args else schema
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (tuple, list, set, frozenset):
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1])}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_schema(annotation)
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer"}
    if annotation is float:
        return {"type": "number"}
    if annotation in (str, Path, SecretStr, AnyHttpUrl) or isinstance(annotation, type):
        return {"type": "string"}  # also IP networks and other string-parsed types
    return {"type": "string"}


def model_schema(cls: type[BaseModel], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with one property per field (``exclude``d ones left out), closed."""
    properties: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if name in exclude:
            continue
        schema = {**type_schema(field.annotation), **_constraints(field)}
        if field.description:
            schema["description"] = field.description
        properties[name] = schema
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _load(path: str) -> type[BaseModel]:
    module, cls = path.split(":")
    return getattr(__import__(module, fromlist=[cls]), cls)  # type: ignore[no-any-return]


def settings_schema(process: str) -> dict[str, Any]:
    """The schema of ``<process>.settings``: the class's fields minus the chart-owned ones."""
    proc = PROCESSES[process]
    return model_schema(proc.load(), proc.chart_owned)


def transport_schema() -> dict[str, Any]:
    props = {name: model_schema(_load(cls), owned) for name, (cls, owned) in TRANSPORT.items()}
    return _obj(props)


# --- structural part -----------------------------------------------------------------------------
def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    out["properties"] = properties
    if required:
        out["required"] = required
    return out


STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT0 = {"type": "integer", "minimum": 0}
INT1 = {"type": "integer", "minimum": 1}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
MAP = {"type": "object"}
LIST = {"type": "array"}
RESOURCES = {
    "type": "object",
    "properties": {"requests": MAP, "limits": MAP},
    "additionalProperties": False,
}
IMAGE = _obj(
    {
        "repository": {"type": "string", "minLength": 1},
        "tag": STR,
        "digest": {"type": "string", "pattern": "^(sha256:[a-f0-9]{64})?$"},
        "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    },
    ["repository"],
)
PROBE = _obj({"periodSeconds": INT1, "failureThreshold": INT1, "timeoutSeconds": INT1})
PROBES = _obj({"startup": PROBE, "liveness": PROBE, "readiness": PROBE})
SCHEDULING = {"nodeSelector": MAP, "tolerations": LIST, "affinity": MAP}
NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$", "maxLength": 40}


def worker_item(process: str) -> dict[str, Any]:
    return _obj(
        {
            "name": NAME,
            "replicas": INT0,
            "gpus": INT0,
            "settings": settings_schema(process),
            "resources": RESOURCES,
            "nodeSelector": MAP,
            "tolerations": LIST,
        },
        ["name"],
    )


def field_schema(process: str, name: str, *, nullable: bool = False) -> dict[str, Any]:
    """The schema of one field of ``process``'s settings class (its ``null`` dropped unless
    ``nullable``): a named value of the chart that feeds that field's env var."""
    schema: dict[str, Any] = model_schema(PROCESSES[process].load())["properties"][name]
    if not nullable and "anyOf" in schema:
        inner = [s for s in schema["anyOf"] if s != {"type": "null"}]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        schema = {**(inner[0] if len(inner) == 1 else {"anyOf": inner}), **rest}
    return schema


# Named values of a colocated GPU group (placement.groups[]) -> the settings field each feeds.
GROUP_LLM_FIELDS = {
    "tensorParallelSize": "tensor_parallel_size",
    "kvCacheBytes": "kv_cache_bytes",
    "quantization": "quantization",
}
GROUP_DIFFUSION_FIELDS = {"detokenizer": "detokenizer", "maxBatch": "max_batch"}


def placement_schema() -> dict[str, Any]:
    """``placement``: the layout, and the GPU groups of the colocated one. A group's named values
    are typed by the settings fields they feed; its ``settings`` blocks accept the class's other
    fields (one value per env var)."""
    llm_owned = (*PROCESSES["llm"].chart_owned, *GROUP_LLM_FIELDS.values())
    diffusion_owned = (*PROCESSES["diffusion"].chart_owned, *GROUP_DIFFUSION_FIELDS.values())
    llm = _obj(
        {
            "model": NAME,
            # null: the group's gpus (with gpu.enabled), else 1
            "tensorParallelSize": {
                "anyOf": [field_schema("llm", "tensor_parallel_size"), {"type": "null"}]
            },
            "kvCacheBytes": field_schema("llm", "kv_cache_bytes"),
            "quantization": field_schema("llm", "quantization", nullable=True),
            "settings": model_schema(PROCESSES["llm"].load(), llm_owned),
        },
        ["model", "kvCacheBytes"],
    )
    detokenizer = _obj(
        {
            "detokenizer": field_schema("diffusion", "detokenizer"),
            # null: diffusion.settings.max_batch
            "maxBatch": {"anyOf": [field_schema("diffusion", "max_batch"), {"type": "null"}]},
            "settings": model_schema(PROCESSES["diffusion"].load(), diffusion_owned),
        },
        ["detokenizer"],
    )
    group = _obj(
        {
            "name": {
                "type": "string",
                "pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
                "maxLength": 30,
            },
            "gpus": INT1,
            "replicas": INT0,
            "llm": llm,
            "diffusion": {"type": "array", "minItems": 1, "maxItems": 2, "items": detokenizer},
            "resources": RESOURCES,
            "nodeSelector": MAP,
            "tolerations": LIST,
        },
        ["name", "gpus"],
    )
    group["anyOf"] = [{"required": ["llm"]}, {"required": ["diffusion"]}]  # at least one worker
    return _obj(
        {
            "layout": {"enum": ["separate", "colocated"]},
            "groups": {"type": "array", "items": group},
            "resources": RESOURCES,
        }
    )


PDB = _obj({"enabled": BOOL, "maxUnavailable": {"type": ["integer", "string"]}})
"""A worker stage's PodDisruptionBudget (one per Deployment of the stage)."""


def stage_schema(process: str, items_key: str, items: dict[str, Any]) -> dict[str, Any]:
    props = {
        "metricsPort": PORT,
        "settings": settings_schema(process),
        "resources": RESOURCES,
        items_key: {"type": "array", "minItems": 1, "items": items},
        **SCHEDULING,
        "podAnnotations": MAP,
        "probes": PROBES,
        "pdb": PDB,
    }
    return _obj(props)


def build_schema() -> dict[str, Any]:
    scale = _obj(
        {
            "minReplicas": INT0,
            "maxReplicas": INT1,
            "lagCount": INT1,
            "targetLoad": {"type": "number", "exclusiveMinimum": 0},
            "cooldownPeriod": INT0,
        }
    )
    secret_ref = {"existingSecret": STR, "existingSecretKey": STR}
    props: dict[str, Any] = {
        "nameOverride": STR,
        "fullnameOverride": STR,
        "images": _obj({"gateway": IMAGE, "worker": IMAGE, "redis": IMAGE}),
        "imagePullSecrets": LIST,
        "gpu": _obj({"enabled": BOOL, "resourceName": STR}),
        "serviceAccount": _obj({"create": BOOL, "name": STR, "annotations": MAP}),
        "podSecurityContext": MAP,
        "containerSecurityContext": MAP,
        "redis": _obj(
            {
                "bundled": BOOL,
                "external": _obj(
                    {
                        "url": STR,
                        **secret_ref,
                        "address": STR,
                        "egressCIDR": STR,
                        "port": PORT,
                        "database": INT0,
                        "tls": BOOL,
                        "sentinel": _obj(
                            {
                                "enabled": BOOL,
                                "port": PORT,
                                "passwordSecret": STR,
                                "passwordSecretKey": STR,
                            }
                        ),
                    }
                ),
                "statefulset": _obj(
                    {
                        "resources": RESOURCES,
                        "persistence": _obj({"enabled": BOOL, "size": STR, "storageClass": STR}),
                        "maxmemory": STR,
                        **SCHEDULING,
                    }
                ),
            }
        ),
        "transport": transport_schema(),
        "shutdown": _obj(
            {"marginSeconds": INT0, "gatewayPreStopSeconds": INT0, "gatewayDrainSeconds": INT0}
        ),
        "apiKeys": _obj(
            {**secret_ref, "keys": {"type": "array", "items": {"type": "string", "minLength": 8}}}
        ),
        "urlSigning": _obj(secret_ref),
        "models": _obj(
            {
                "mountPath": {"type": "string", "pattern": "^/"},
                "servingDir": STR,
                "cache": _obj(
                    {
                        "existingClaim": STR,
                        "create": BOOL,
                        "size": STR,
                        "storageClass": STR,
                        "accessModes": LIST,
                    }
                ),
                "convert": _obj(
                    {
                        "enabled": BOOL,
                        "sourceDir": STR,
                        "dtype": {"enum": ["float16", "bfloat16", "float32"]},
                        "activeDeadlineSeconds": INT1,
                        "resources": RESOURCES,
                    }
                ),
                "tiny": _obj(
                    {"enabled": BOOL, "dtype": {"enum": ["float16", "bfloat16", "float32"]}}
                ),
            }
        ),
        "gateway": _obj(
            {
                "replicas": INT1,
                "port": PORT,
                "logLevel": {"enum": ["debug", "info", "warning", "error"]},
                "settings": settings_schema("gateway"),
                "service": _obj({"type": STR, "port": PORT, "annotations": MAP}),
                "ingress": _obj(
                    {
                        "enabled": BOOL,
                        "className": STR,
                        "annotations": MAP,
                        "host": STR,
                        "paths": {"type": "array", "items": {"type": "string", "pattern": "^/"}},
                        "tls": _obj({"enabled": BOOL, "secretName": STR}),
                    }
                ),
                "hpa": _obj(
                    {
                        "enabled": BOOL,
                        "minReplicas": INT1,
                        "maxReplicas": INT1,
                        "targetCPUUtilizationPercentage": INT1,
                    }
                ),
                "pdb": _obj({"maxUnavailable": {"type": ["integer", "string"]}}),
                "resources": RESOURCES,
                "probes": PROBES,
                **SCHEDULING,
                "podAnnotations": MAP,
            }
        ),
        "placement": placement_schema(),
        "llm": stage_schema("llm", "models", worker_item("llm")),
        "diffusion": stage_schema("diffusion", "detokenizers", worker_item("diffusion")),
        "keda": _obj(
            {
                "enabled": BOOL,
                "pollingInterval": INT1,
                "prometheus": _obj({"serverAddress": STR}),
                "llm": scale,
                "diffusion": scale,
                "passwordSecret": _obj({"name": STR, "key": STR}),
            }
        ),
        "monitoring": _obj(
            {
                "serviceMonitor": _obj({"enabled": BOOL, "interval": STR, "labels": MAP}),
                "prometheusRule": _obj({"enabled": BOOL, "labels": MAP}),
                "grafanaDashboard": _obj({"enabled": BOOL, "labels": MAP}),
                "scrapeFrom": MAP,
            }
        ),
        "networkPolicy": _obj(
            {
                "enabled": BOOL,
                "gatewayFrom": LIST,
                "gatewayFetchEgress": _obj(
                    {"enabled": BOOL, "cidr": STR, "except": {"type": "array", "items": STR}}
                ),
                "kedaFrom": MAP,
            }
        ),
    }
    schema = _obj(props)
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "seedx chart values (generated by scripts/gen_helm_schema.py)"
    return schema


def render() -> str:
    return json.dumps(build_schema(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the schema is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is stale: run python scripts/gen_helm_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
