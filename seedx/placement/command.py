"""``seedx plan``: print where ``seedx serve``'s processes would go on these GPUs, and with what.

Registered by ``seedx/cli.py`` like ``seedx serve``; the planner is imported only when the
command runs, and imports no torch (``--gpus`` absent on a host without NVML is the exception:
detection then asks ``torch.cuda``). ``--helm FILE`` also writes the chart values of the plan
(``seedx.placement.helm``). Exit status: 0 with a plan, 1 when nothing fits (the message says
what would) or the chart cannot express the plan, 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.checkpoint.layout import DETOKENIZER_FOR_MODEL

DEFAULT_LLMS = ("seed-x-i", "seed-x-edit")  # seedx serve's demo serves these two
VARIATIONS_STAGE = "first_stage"  # /v1/images/variations: first_stage unless asked otherwise
NO_DETOKENIZER = "none"

DESCRIPTION = """\
Plans which GPU each process of `seedx serve` runs on (an LLM worker per model, a diffusion
worker per de-tokenizer), its tensor-parallel size, dtype and fp8, and its memory on each GPU,
with the environment variables that make each worker keep to it. Nothing is started: the plan is
computed from the model sizes (the released SEED-X-17B, or --model's safetensors headers) and
documented estimates (docs/deploy.md, "Placement").
"""

EPILOG = """\
GPUs: --gpus 2x24GB,1x80GB:h100 (GB = 10^9 bytes; GiB and MiB exact; a tag :fp8 or a GPU model
such as :h100, :l40s, :a100 says whether the GPU has fp8: without one, none is assumed). Without
--gpus the GPUs of this host are read (NVML, else torch.cuda).

Default LLMs: seed-x-i and seed-x-edit (what seedx serve's demo serves), or every LLM of --model's
tree (what seedx serve --model serves). Default de-tokenizers: those the LLMs draw with (seed-x,
seed-x-i: first_stage; seed-x-edit: second_stage) plus first_stage for /v1/images/variations, or
every de-tokenizer of --model's tree.

--helm FILE writes the values of the Helm chart (deploy/helm/seedx) that realise the plan:
placement.layout colocated with one GPU group per set of shared GPUs, or separate when no GPU is
shared; docs/deploy.md, "Placement". A plan the chart cannot express (two LLMs on one GPU) is
refused with exit status 1 and nothing written.

Exit status: 0 with a plan; 1 when nothing fits (the message says what would) or --helm cannot
express the plan; 2 for a bad argument.
"""


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "plan",
        help="which GPU each process of seedx serve gets, and its memory (prints a plan)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gpus", default=None, metavar="SPEC", help="e.g. 2x24GB,1x80GB:h100")
    parser.add_argument(
        "--model", default=None, metavar="DIR", help="serving root from `seedx convert` "
        "(default: the released SEED-X-17B's sizes)",
    )  # fmt: skip
    parser.add_argument(
        "--llm", action="append", default=None, metavar="NAME",
        help="an LLM to serve (repeatable; default: seed-x-i and seed-x-edit, see below)",
    )  # fmt: skip
    parser.add_argument(
        "--detokenizer", action="append", default=None, metavar="NAME",
        choices=["first_stage", "second_stage", NO_DETOKENIZER],
        help="a de-tokenizer to serve (repeatable; none: no diffusion worker)",
    )  # fmt: skip
    work = parser.add_argument_group("workload")
    work.add_argument("--capacity", type=int, default=32, help="LLM jobs at once (default 32)")
    work.add_argument("--max-model-len", type=int, default=2048, help="context (default 2048)")
    work.add_argument("--max-batch", type=int, default=4, help="images per UNet batch (4)")
    work.add_argument("--decode-batch", type=int, default=4, help="images per VAE decode (4)")
    work.add_argument(
        "--size", type=_size, default=(1024, 1024), metavar="WxH",
        help="largest image size planned for (default 1024x1024)",
    )  # fmt: skip
    work.add_argument(
        "--no-vit", action="store_true",
        help="de-tokenizers without the ViT (no /v1/images/variations; 3.9 GB less each)",
    )  # fmt: skip
    allowed = parser.add_argument_group("what the plan may use")
    allowed.add_argument(
        "--fp8", action=argparse.BooleanOptionalAction, default=False,
        help="fp8 LLM weights where needed, on GPUs with fp8 only (default: no)",
    )  # fmt: skip
    allowed.add_argument(
        "--no-tp", action="store_true", help="no tensor parallelism (one GPU per LLM)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--helm", default=None, metavar="FILE",
        help="also write the Helm chart values that realise the plan (deploy/helm/seedx; "
        "merge with helm install -f FILE)",
    )  # fmt: skip
    parser.add_argument(
        "--no-env", action="store_true", help="leave the environment variables out of the table"
    )
    parser.set_defaults(handler=run)


def _what(
    args: argparse.Namespace, sizes_llms: list[str], sizes_stages: list[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The LLMs and de-tokenizers to place (see EPILOG for the defaults)."""
    if args.llm:
        llms = tuple(args.llm)
    elif args.model:
        llms = tuple(sizes_llms)
    else:
        llms = DEFAULT_LLMS
    if args.detokenizer:
        stages = tuple(s for s in args.detokenizer if s != NO_DETOKENIZER)
    elif args.model:
        stages = tuple(sizes_stages)
    else:
        wanted = {DETOKENIZER_FOR_MODEL.get(m) for m in llms} | {VARIATIONS_STAGE}
        stages = tuple(s for s in ("first_stage", "second_stage") if s in wanted)
    return llms, stages


def run(args: argparse.Namespace) -> int:
    from seedx.placement.inventory import detect, parse_gpus
    from seedx.placement.planner import Options, PlanRefused, Workload, plan
    from seedx.placement.render import render_text
    from seedx.placement.sizes import read_serving_tree, released_sizes

    gpus = parse_gpus(args.gpus) if args.gpus is not None else detect()
    if not gpus:
        raise ValueError("no GPU found on this host: say which to plan for, e.g. --gpus 2x24GB")
    sizes = read_serving_tree(Path(args.model)) if args.model else released_sizes()
    llms, stages = _what(args, sorted(sizes.llms), sorted(sizes.detokenizers))
    width, height = args.size
    workload = Workload(
        capacity=args.capacity,
        max_model_len=args.max_model_len,
        max_batch=args.max_batch,
        width=width,
        height=height,
        decode_batch=args.decode_batch,
        load_vit=not args.no_vit,
    )
    options = Options(fp8=args.fp8, tensor_parallel=not args.no_tp)
    try:
        result = plan(gpus, sizes, llms, stages, workload, options)
    except PlanRefused as refused:
        print(f"seedx plan: {refused}", file=sys.stderr)
        return 1
    print(result.to_json() if args.json else render_text(result, env=not args.no_env), end="")
    if args.helm is not None:
        from seedx.placement.helm import ChartRefused, render_values

        try:
            text = render_values(result)
        except ChartRefused as refused:
            print(f"seedx plan: --helm: {refused}; {args.helm} not written", file=sys.stderr)
            return 1
        Path(args.helm).write_text(text)
        print(f"Helm values written to {args.helm}", file=sys.stderr)
    return 0
