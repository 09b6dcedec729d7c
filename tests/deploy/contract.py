"""The env-var contract between the deployment files and the settings classes.

A deployment file (chart, compose) configures a process only through ``SEEDX_<PROCESS>_*``
variables. Each one must name a field that the process's settings class reads, nested groups
joined by ``__`` as pydantic-settings does; :func:`settings_field` resolves one, and
:func:`build_settings` builds the class from a rendered environment, so a value that the class
would refuse at start-up fails here.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tests.deploy.conftest import ROOT

_spec = importlib.util.spec_from_file_location(
    "gen_helm_schema", ROOT / "scripts" / "gen_helm_schema.py"
)
assert _spec is not None
assert _spec.loader is not None
gen_helm_schema = importlib.util.module_from_spec(_spec)
sys.modules["gen_helm_schema"] = gen_helm_schema
_spec.loader.exec_module(gen_helm_schema)

PROCESSES = gen_helm_schema.PROCESSES
CONTAINER_PROCESS = {"gateway": "gateway", "llm": "llm", "diffusion": "diffusion"}
"""Container name in the chart and service role in compose -> process."""

OTHER_ENV = {"HOME": "a writable home (/tmp) under a read-only root filesystem"}
"""Variables that are not settings, each with its reason."""


def settings_field(process: str, env_name: str) -> tuple[str, ...]:
    """The field path that ``env_name`` sets in ``process``'s settings class (KeyError if none)."""
    proc = PROCESSES[process]
    if not env_name.startswith(proc.prefix):
        raise KeyError(f"{env_name}: not {proc.prefix}*")
    parts = env_name[len(proc.prefix) :].lower().split("__")
    cls: type[BaseModel] = proc.load()
    path: list[str] = []
    for i, part in enumerate(parts):
        if part not in cls.model_fields:
            raise KeyError(f"{env_name}: {cls.__name__} has no field {part!r}")
        path.append(part)
        annotation = cls.model_fields[part].annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise KeyError(f"{env_name}: {cls.__name__}.{part} is not a nested group")
            cls = annotation
    return tuple(path)


def secret_values(docs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(secret name, key) -> value of every rendered Secret."""
    out: dict[tuple[str, str], str] = {}
    for doc in docs:
        if doc["kind"] != "Secret":
            continue
        name = doc["metadata"]["name"]
        for key, value in (doc.get("stringData") or {}).items():
            out[(name, key)] = value
        for key, value in (doc.get("data") or {}).items():
            out[(name, key)] = base64.b64decode(value).decode()
    return out


def container_env(
    container: dict[str, Any], secrets: Mapping[tuple[str, str], str]
) -> dict[str, str]:
    """The environment of a container, secretKeyRefs resolved (or a marker when not rendered)."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets.get((ref["name"], ref["key"]), f"<secret {ref['name']}>")
    return env


def process_containers(
    docs: list[dict[str, Any]],
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(process, workload, container) for every container that runs a seedx process."""
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if container["name"] in CONTAINER_PROCESS:
                yield CONTAINER_PROCESS[container["name"]], doc, container


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with every SEEDX_* variable replaced by ``env``'s."""
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("SEEDX_")]:
            del os.environ[key]
        os.environ.update({k: v for k, v in env.items() if k.startswith("SEEDX_")})
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def build_settings(process: str, env: Mapping[str, str], **overrides: Any) -> BaseModel:
    """The settings class of ``process`` as it would be built from ``env`` at start-up."""
    with environment(env):
        return PROCESSES[process].load()(**overrides)


def env_value(value: Any) -> str:
    """How the chart renders a settings value (strings as-is, the rest as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def same_value(rendered: str, value: Any) -> bool:
    if isinstance(value, str):
        return rendered == value
    return bool(json.loads(rendered) == value)


def load_values(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}
