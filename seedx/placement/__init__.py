"""GPU placement for ``seedx serve``: which process runs on which GPU with how much memory.

Pure logic, fast, and free of torch, vLLM and diffusers (``tests/unit/placement`` holds it to
that): ``inventory`` (the GPUs, parsed or detected), ``sizes`` (what each stage needs: weights
from safetensors headers or the released architecture, KV cache per token, diffusion
activations), ``planner`` (the search and the :class:`Plan`), ``refusal`` (what would fit when
nothing does), ``render`` (the table and JSON), ``helm`` (a plan as the Helm chart's values)
and ``command`` (``seedx plan``).
"""

from seedx.placement.inventory import Gpu, detect, parse_gpus
from seedx.placement.planner import Options, Plan, PlanRefused, ProcessPlan, Workload, plan
from seedx.placement.sizes import ModelSizes, read_serving_tree, released_sizes

__all__ = [
    "Gpu",
    "ModelSizes",
    "Options",
    "Plan",
    "PlanRefused",
    "ProcessPlan",
    "Workload",
    "detect",
    "parse_gpus",
    "plan",
    "read_serving_tree",
    "released_sizes",
]
