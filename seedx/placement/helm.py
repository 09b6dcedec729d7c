"""A plan as values of the Helm chart (deploy/helm/seedx): ``seedx plan --helm FILE``.

Only the keys the plan decides are written; the file is merged over the user's own values with a
later ``-f``. The layout (docs/deploy.md, "Co-location"):

* ``separate`` when every GPU holds at most one process: one ``llm.models`` entry per LLM and one
  ``diffusion.detokenizers`` entry per de-tokenizer, each with ``gpus`` = its plan's GPU count
  (an LLM's TP size) and its plan env as ``settings`` (``tensor_parallel_size``,
  ``kv_cache_bytes``, ``quantization``, ``max_batch`` ... are fields of the settings classes).
* ``colocated`` when some GPU holds more than one process (or a stage has no process: the
  separate layout's lists cannot be empty): one ``placement.groups`` entry per set of GPUs that
  processes share (an LLM on its GPUs plus the de-tokenizers placed on them; a process alone on
  its GPUs is a group of its own). ``SEEDX_LLM_TENSOR_PARALLEL_SIZE``, ``SEEDX_LLM_KV_CACHE_BYTES``,
  ``SEEDX_LLM_QUANTIZATION`` and ``SEEDX_DIFFUSION_MAX_BATCH`` become the group's named keys
  (``tensorParallelSize``, ``kvCacheBytes``, ``quantization``, ``maxBatch``), every other
  ``SEEDX_<STAGE>_<FIELD>`` the entry ``<field>`` of that process's ``settings``. A de-tokenizer
  on another GPU of its group than the first gets ``settings.device: cuda:<n>`` (the pod sees
  its group's GPUs numbered from 0).

``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` are dropped: Kubernetes assigns the GPUs.
Values are typed by the settings classes' fields (``"32"`` -> ``32``, ``"false"`` -> ``false``),
as the chart's schema, generated from the same classes, wants them. A plan the chart cannot
express (two LLMs sharing a GPU: a group runs one LLM worker) raises :class:`ChartRefused`
rather than being written wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any

from seedx.placement.planner import Plan, ProcessPlan
from seedx.placement.render import gpu_rows, process_rows

DROPPED_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
# The chart's names for the values its groups name themselves (placement.groups[]).
LLM_NAMED = {
    "tensor_parallel_size": "tensorParallelSize",
    "kv_cache_bytes": "kvCacheBytes",
    "quantization": "quantization",
}
DIFFUSION_NAMED = {"max_batch": "maxBatch"}
MAX_GROUP_DETOKENIZERS = 2  # placement.groups[].diffusion: each de-tokenizer once
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")  # llm.models[].name and the like
NAME_MAX = 40
SETTINGS = {
    "llm": ("SEEDX_LLM_", "workers.llm.worker", "LLMWorkerSettings"),
    "diffusion": ("SEEDX_DIFFUSION_", "workers.diffusion.settings", "DiffusionWorkerSettings"),
}


class ChartRefused(ValueError):
    """The chart cannot express this plan; the message says why and what would do."""


# -- env -> settings --------------------------------------------------------------------------


def _settings(process: ProcessPlan) -> dict[str, Any]:
    """``process.env`` as its settings class's fields, typed as the class reads them."""
    import importlib

    from pydantic import TypeAdapter

    prefix, module, name = SETTINGS[process.stage]
    cls = getattr(importlib.import_module(module), name)
    out: dict[str, Any] = {}
    for key, text in process.env.items():
        if key in DROPPED_ENV:
            continue
        field = key[len(prefix) :].lower() if key.startswith(prefix) else ""
        info = cls.model_fields.get(field)
        if info is None or "__" in field:
            raise ValueError(f"{process.name}: {key} is not a field of {name}")
        kind: Any = (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        adapter: TypeAdapter[Any] = TypeAdapter(kind)
        out[field] = adapter.dump_python(adapter.validate_python(text), mode="json")
    return out


def _check_name(process: ProcessPlan) -> None:
    if not NAME_PATTERN.match(process.model) or len(process.model) > NAME_MAX:
        raise ChartRefused(
            f"the chart cannot express this plan: {process.name}'s name {process.model!r} is not "
            f"a name the chart takes (lower-case letters, digits, '_', '.', '-'; at most "
            f"{NAME_MAX} characters): rename its folder in the serving tree"
        )


# -- the layouts ------------------------------------------------------------------------------


def _groups(plan: Plan) -> list[list[ProcessPlan]]:
    """The processes joined by the GPUs they share, each group in plan order, the groups in
    the order of their lowest GPU."""
    groups: list[tuple[set[int], list[ProcessPlan]]] = []
    for process in plan.processes:
        gpus, members = set(process.gpus), [process]
        for group in [g for g in groups if g[0] & set(process.gpus)]:
            groups.remove(group)
            gpus |= group[0]
            members = group[1] + members
        groups.append((gpus, members))
    order = {p.name: i for i, p in enumerate(plan.processes)}
    return [
        sorted(members, key=lambda p: order[p.name])
        for _, members in sorted(groups, key=lambda g: min(g[0]))
    ]


def _gpu_list(gpus: Sequence[int]) -> str:
    return ", ".join(str(i) for i in sorted(gpus))


def _refuse_group(members: list[ProcessPlan]) -> None:
    llms = [p for p in members if p.stage == "llm"]
    detoks = [p for p in members if p.stage == "diffusion"]
    gpus = sorted({i for p in members for i in p.gpus})
    if len(llms) > 1:
        raise ChartRefused(
            f"the chart cannot express this plan: {', '.join(p.name for p in llms)} share GPU "
            f"{_gpu_list(gpus)} (with {', '.join(p.name for p in detoks) or 'nothing else'}), "
            "and a GPU group of the chart (placement.groups[]) runs one LLM worker. Plan with "
            "more GPUs (--gpus) or fewer LLMs (--llm), or run this plan with "
            "`seedx serve --plan` (from `seedx plan --json`)"
        )
    if len(detoks) > MAX_GROUP_DETOKENIZERS:
        raise ChartRefused(
            f"the chart cannot express this plan: {', '.join(p.name for p in detoks)} share GPU "
            f"{_gpu_list(gpus)}, and a GPU group of the chart runs at most "
            f"{MAX_GROUP_DETOKENIZERS} de-tokenizers"
        )


def _group(index: int, members: list[ProcessPlan]) -> dict[str, Any]:
    _refuse_group(members)
    local = sorted({i for p in members for i in p.gpus})  # the pod's cuda:0, cuda:1, ...
    group: dict[str, Any] = {"name": f"g{index}", "gpus": len(local), "replicas": 1}
    for process in members:
        settings = _settings(process)
        if process.stage == "llm":
            llm: dict[str, Any] = {"model": process.model}
            for field, key in LLM_NAMED.items():
                if field in settings:
                    llm[key] = settings.pop(field)
            group["llm"] = {**llm, "settings": settings}
        else:
            entry: dict[str, Any] = {"detokenizer": process.model}
            for field, key in DIFFUSION_NAMED.items():
                if field in settings:
                    entry[key] = settings.pop(field)
            device = local.index(process.gpus[0])
            if device:
                settings["device"] = f"cuda:{device}"
            group.setdefault("diffusion", []).append(
                {**entry, "settings": dict(sorted(settings.items()))}
            )
    return group


def _separate_entry(process: ProcessPlan) -> dict[str, Any]:
    return {
        "name": process.model,
        "replicas": 1,
        "gpus": len(process.gpus),
        "settings": _settings(process),
    }


def layout(plan: Plan) -> str:
    """``colocated`` where a GPU holds more than one process or a stage has none."""
    shared = any(sum(1 for p in plan.processes if g.index in p.gpus) > 1 for g in plan.gpus)
    stages = {p.stage for p in plan.processes}
    return "colocated" if shared or stages != {"llm", "diffusion"} else "separate"


def helm_values(plan: Plan) -> dict[str, Any]:
    """The chart values that realise ``plan`` (:class:`ChartRefused` where none can)."""
    for process in plan.processes:
        _check_name(process)
    if layout(plan) == "colocated":
        groups = [_group(i, members) for i, members in enumerate(_groups(plan))]
        return {"placement": {"layout": "colocated", "groups": groups}}
    return {
        "placement": {"layout": "separate"},
        "llm": {"models": [_separate_entry(p) for p in plan.processes if p.stage == "llm"]},
        "diffusion": {
            "detokenizers": [_separate_entry(p) for p in plan.processes if p.stage == "diffusion"]
        },
    }


# -- YAML ---------------------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*(:[0-9]+)?$")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}


def _scalar(value: Any) -> str:
    if isinstance(value, str) and _PLAIN.match(value) and value.lower() not in _RESERVED:
        return value
    return json.dumps(value)  # JSON scalars are YAML scalars (double-quoted strings included)


def _yaml(value: Any, indent: int) -> list[str]:
    """Block YAML of dicts, lists and scalars, keys in the given order."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines += _yaml(item, indent + 2)
            else:
                lines.append(f"{pad}{key}: {_flow(item)}")
    else:
        for item in value:
            inner = _yaml(item, indent + 2) if isinstance(item, (dict, list)) and item else []
            if inner:
                lines.append(f"{pad}- {inner[0][indent + 2 :]}")
                lines += inner[1:]
            else:
                lines.append(f"{pad}- {_flow(item)}")
    return lines


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def render_values(plan: Plan) -> str:
    """The values file ``seedx plan --helm`` writes: a comment with the plan, then the values."""
    values = helm_values(plan)
    work = plan.workload
    sizes = {g.total_bytes for g in plan.gpus}
    header = [
        "Helm values for deploy/helm/seedx, written by `seedx plan --helm` (docs/deploy.md,",
        '"Placement"). Merge them over your own: helm install ... -f your-values.yaml -f <this>.',
        f"Layout {values['placement']['layout']}; sizes: {plan.source}; capacity "
        f"{work.capacity}, max_model_len {work.max_model_len}, max_batch {work.max_batch} at "
        f"{work.width}x{work.height}.",
        "",
        *process_rows(plan),
        "",
        *gpu_rows(plan),
    ]
    if len(sizes) > 1:
        header += [
            "",
            "The plan's GPUs differ in size and Kubernetes counts nvidia.com/gpu alone: give each",
            "Deployment the nodeSelector of the GPUs it was planned for.",
        ]
    comment = [f"# {line}".rstrip() for line in header]
    return "\n".join([*comment, *_yaml(values, 0)]) + "\n"


__all__ = ["ChartRefused", "helm_values", "layout", "render_values"]
