"""The ``seedx`` command line: one entry point for tiny checkpoints, conversion, local runs and
benchmarks (and, as the other stages land, the gateway and workers).

Each subcommand imports what it needs when it runs, so ``seedx --help`` stays instant and the
gateway's commands never import torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from seedx.lifetime import exit_now
from workers.startup import EXIT_STARTUP, StartupError

Handler = Callable[[argparse.Namespace], int]


def _make_tiny(args: argparse.Namespace) -> int:
    if args.dims == "real":
        return _make_real(args)
    from engine.checkpoint.tiny import make_tiny

    root = make_tiny(Path(args.dir), seed=args.seed, progress=not args.quiet)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"wrote a tiny random-weight SEED-X tree to {root} ({size / 2**20:.1f} MiB)")
    print("its weights are random: outputs are noise, every code path is real")
    return 0


def _make_real(args: argparse.Namespace) -> int:
    import torch

    from engine.checkpoint.real_dims import RealDims, make_real

    dims = RealDims(
        llm_layers=args.llm_layers,
        vit_layers=args.vit_layers,
        models=tuple(args.models.split(",")),
        detokenizers=not args.no_detokenizers,
        dtype={"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[
            args.dtype
        ],
        device=args.device,
        shard_bytes=int(args.shard_gb * 2**30),
    )
    try:
        dims.validate()
    except ValueError as error:
        print(f"error: {error}")
        return 2
    root = make_real(Path(args.dir), dims, seed=args.seed, progress=not args.quiet)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(
        f"wrote a random-weight SEED-X tree at real dimensions to {root} ({size / 2**30:.2f} GiB)"
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from engine.checkpoint.convert import convert

    manifest = convert(
        Path(args.src),
        Path(args.out),
        models=args.model or None,
        dtype=args.dtype,
        progress=not args.quiet,
    )
    print(
        f"serving layout in {args.out}: models {sorted(manifest['models'])}, "
        f"de-tokenizers {sorted(manifest['detokenizers'])}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from engine.run_cli import run_command

    return run_command(args)


def _bench(args: argparse.Namespace) -> int:
    from seedx.bench import run_bench

    return run_bench(args.name, args.rest)


def _worker_llm(args: argparse.Namespace) -> int:
    from workers.llm.worker import main as worker_main

    return worker_main(
        args.model,
        redis_url=args.redis_url,
        capacity=args.capacity,
        tensor_parallel_size=args.tensor_parallel_size,
    )


def _worker_diffusion(args: argparse.Namespace) -> int:
    from workers.diffusion.worker import main as worker_main

    return worker_main(
        args.model,
        detokenizer=args.detokenizer,
        redis_url=args.redis_url,
        max_batch=args.max_batch,
    )


def _gateway(args: argparse.Namespace) -> int:
    from server.main import main as gateway_main

    return gateway_main(args.host, args.port, args.redis_url, args.log_level)


def _add_gateway_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gateway = sub.add_parser("gateway", help="the OpenAI-compatible HTTP gateway (no torch)")
    gateway.add_argument("--host", default=None, help="default: SEEDX_GATEWAY_HOST or 127.0.0.1")
    gateway.add_argument("--port", type=int, default=None, help="default: SEEDX_GATEWAY_PORT")
    gateway.add_argument("--redis-url", default=None, help="default: SEEDX_GATEWAY_REDIS__URL")
    gateway.add_argument("--log-level", default="info", help="debug, info, warning, error")
    gateway.set_defaults(handler=_gateway)


def _add_worker_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    worker = sub.add_parser("worker", help="run one worker process")
    kinds = worker.add_subparsers(dest="kind", required=True)
    llm = kinds.add_parser("llm", help="the LLM worker: SEED-X in vLLM, jobs from Redis")
    llm.add_argument("--model", default=None, help="serving LLM folder (default: SEEDX_LLM_MODEL)")
    llm.add_argument("--redis-url", default=None, help="default: SEEDX_LLM_REDIS__URL")
    llm.add_argument("--capacity", type=int, default=None, help="jobs run at once")
    llm.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=None,
        help="GPUs the LLaMA trunk is sharded over (default: SEEDX_LLM_TENSOR_PARALLEL_SIZE or 1)",
    )
    llm.set_defaults(handler=_worker_llm)
    diffusion = kinds.add_parser(
        "diffusion", help="the diffusion worker: the SEED-X de-tokenizer, jobs from Redis"
    )
    diffusion.add_argument(
        "--model", default=None, help="serving root (default: SEEDX_DIFFUSION_MODEL)"
    )
    diffusion.add_argument(
        "--detokenizer",
        choices=["first_stage", "second_stage"],
        default=None,
        help="default: SEEDX_DIFFUSION_DETOKENIZER or first_stage",
    )
    diffusion.add_argument("--redis-url", default=None, help="default: SEEDX_DIFFUSION_REDIS__URL")
    diffusion.add_argument("--max-batch", type=int, default=None, help="images per UNet batch")
    diffusion.set_defaults(handler=_worker_diffusion)


def _add_run_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser("run", help="one-shot local inference with the PyTorch reference")
    tasks = run.add_subparsers(dest="task", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="serving root written by `seedx convert`")
    common.add_argument("--device", default="cpu")
    common.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="compute dtype (default: float32 on CPU, float16 on CUDA)",
    )
    common.add_argument("--dump", default=None, help="write intermediate tensors here")
    common.add_argument("--seed", type=int, default=None)
    image_opts = argparse.ArgumentParser(add_help=False)
    image_opts.add_argument("--steps", type=int, default=50)
    image_opts.add_argument("--guidance", type=float, default=7.5)
    image_opts.add_argument("--size", default="1024x1024", help="WIDTHxHEIGHT, multiples of 64")
    image_opts.add_argument("--out", required=True, help="output image file (.png/.jpg/.webp)")
    image_opts.add_argument("--scheduler", default="euler")

    chat = tasks.add_parser("chat", parents=[common], help="image(s) + text -> text and boxes")
    chat.add_argument("--llm", default="seed-x-i", help="seed-x-i | seed-x | seed-x-edit")
    chat.add_argument("--image", action="append", default=[], help="input image (repeatable)")
    chat.add_argument("--prompt", required=True)
    chat.add_argument("--max-new-tokens", type=int, default=512)

    image = tasks.add_parser("image", parents=[common, image_opts], help="text -> image")
    image.add_argument("--llm", default="seed-x-i", help="seed-x-i | seed-x")
    image.add_argument("--prompt", required=True)
    image.add_argument("--max-new-tokens", type=int, default=120)

    edit = tasks.add_parser(
        "edit", parents=[common, image_opts], help="image + instruction -> image"
    )
    edit.add_argument("--image", required=True)
    edit.add_argument("--prompt", required=True)
    edit.add_argument("--image-guidance", type=float, default=1.5)
    edit.add_argument("--max-new-tokens", type=int, default=512)

    variation = tasks.add_parser(
        "variation",
        parents=[common, image_opts],
        help="image -> variation via its own ViT features",
    )
    variation.add_argument("--image", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seedx", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser(
        "make-tiny", help="write a tiny random-weight tree in the released layout"
    )
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--quiet", action="store_true", help="no progress bar")
    tiny.add_argument(
        "--dims",
        choices=["tiny", "real"],
        default="tiny",
        help="real: SEED-X-17B / SDXL dimensions, for speed and memory measurements",
    )
    real = tiny.add_argument_group("--dims real")
    real.add_argument("--llm-layers", type=int, default=40, help="LLaMA layers of 40 (real width)")
    real.add_argument("--vit-layers", type=int, default=48, help="ViT layers of 48 (real width)")
    real.add_argument(
        "--models", default="seed-x-i", help="comma-separated: seed-x,seed-x-i,seed-x-edit"
    )
    real.add_argument(
        "--no-detokenizers", action="store_true", help="skip SDXL and the de-tokenizers"
    )
    real.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                      help="stored dtype (the release is float32)")  # fmt: skip
    real.add_argument("--device", default="cpu", help="where weights are drawn, e.g. cuda")
    real.add_argument("--shard-gb", type=float, default=4.0, help="LLM shard size (peak memory)")
    tiny.set_defaults(handler=_make_tiny)

    conv = sub.add_parser("convert", help="released SEED-X tree -> serving layout")
    conv.add_argument("src")
    conv.add_argument("out")
    conv.add_argument(
        "--model",
        action="append",
        choices=["seed-x", "seed-x-i", "seed-x-edit"],
        help="LLM(s) to convert (repeatable; default: all present)",
    )
    conv.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    conv.add_argument("--quiet", action="store_true", help="no progress bars")
    conv.set_defaults(handler=_convert)

    _add_run_parsers(sub)
    sub.choices["run"].set_defaults(handler=_run)

    _add_worker_parsers(sub)

    from seedx.serve import add_parser as add_serve_parser  # argparse only; imports stay lazy

    add_serve_parser(sub)
    _add_gateway_parser(sub)

    from seedx.placement.command import add_parser as add_plan_parser  # the planner stays lazy

    add_plan_parser(sub)

    from seedx.bench import BENCHES, bench_list  # names only: no benchmark is imported

    bench = sub.add_parser(
        "bench",
        help=f"benchmarks ({', '.join(BENCHES)})",
        description="Runs one benchmark and prints its figures.",
        epilog=bench_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("name", metavar="NAME", help="the benchmark (listed below)")
    bench.add_argument(
        "rest", nargs=argparse.REMAINDER, metavar="ARGS", help="the benchmark's own arguments"
    )
    bench.set_defaults(handler=_bench)
    return parser


SERVER_COMMANDS = frozenset({"serve", "gateway", "worker"})
"""Long-running commands whose stop path closes what they opened: they end with
:func:`seedx.lifetime.exit_now` (the others, which write files, exit as Python does)."""


def run() -> None:
    """The ``seedx`` program (console script and ``python -m seedx.cli``)."""
    args = build_parser().parse_args()
    code = execute(args)
    if args.command in SERVER_COMMANDS:
        exit_now(code)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one ``seedx`` command in this process (tests call it); returns its exit code."""
    return execute(build_parser().parse_args(argv))


def execute(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except StartupError as exc:  # a restart cannot mend it: say it once, exit 78
        print(f"seedx {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except (ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
        print(f"seedx {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    run()
