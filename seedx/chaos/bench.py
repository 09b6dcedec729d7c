"""``seedx bench chaos``: start the stack on the tiny checkpoint, run every scenario, print the
table of figures (issue 9). ``--quick`` uses the reduced counts of the CI suite.

    seedx bench chaos                 # full counts (soak: 2,000 image requests)
    seedx bench chaos --quick --only overload,ssrf
    seedx bench chaos --only resume_llm --diffusion-workers 1 --resume-runs 5
    seedx bench chaos --quick --only redis_failover,redis_full,redis_auth,redis_tls

The Redis backbone scenarios (:mod:`seedx.chaos.backbone`) run on a second stack whose Redis is
real redis-server processes (master, replica, three sentinels, TLS, the documented ACL user), with
one LLM and one diffusion worker; it starts only when one of them is chosen (or none is named).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seedx.chaos import backbone, hostile, probes, resume, scenarios
from seedx.chaos.stack import Stack, StackConfig


def _counts(quick: bool) -> dict[str, Any]:
    return {
        "overload_s": 8.0 if quick else 30.0,
        "kill_jobs": 4 if quick else 8,
        "soak": 200 if quick else 2000,
        "schemathesis_examples": 8 if quick else 50,
        "poison_others": 8 if quick else 24,
        "resume_runs": 2 if quick else 10,
        "resume_streams": 4 if quick else 6,
    }


def plan(
    quick: bool, overrides: dict[str, Any] | None = None
) -> list[tuple[str, Callable[[Stack], Any]]]:
    """The scenarios in the order they run (crashes after the latency-sensitive ones)."""
    n = {**_counts(quick), **(overrides or {})}
    return [
        ("auth", lambda s: asyncio.run(probes.auth(s))),
        ("ssrf", lambda s: asyncio.run(hostile.ssrf(s))),
        ("media", lambda s: asyncio.run(hostile.media(s))),
        ("special_tokens", lambda s: asyncio.run(probes.special_tokens(s))),
        ("overload_chat", lambda s: asyncio.run(scenarios.overload(s, "chat", n["overload_s"]))),
        ("overload_images",
         lambda s: asyncio.run(scenarios.overload(s, "images", n["overload_s"]))),
        ("disconnect_stream", lambda s: asyncio.run(scenarios.disconnect_stream(s))),
        ("disconnect_denoise", lambda s: asyncio.run(scenarios.disconnect_denoise(s))),
        ("poison", lambda s: asyncio.run(scenarios.poison(s, n["poison_others"]))),
        ("kill_llm", lambda s: asyncio.run(scenarios.kill_worker(s, "llm", n["kill_jobs"]))),
        ("kill_diffusion",
         lambda s: asyncio.run(scenarios.kill_worker(s, "diffusion", n["kill_jobs"]))),
        ("resume_llm", lambda s: asyncio.run(
            resume.resume(s, n["resume_runs"], n["resume_streams"]))),
        ("redis_restart", lambda s: asyncio.run(scenarios.redis_restart(s))),
        ("schemathesis", lambda s: probes.schemathesis_run(
            s, n["schemathesis_examples"], "examples,coverage,fuzzing,stateful", 900)),
        ("soak", lambda s: asyncio.run(scenarios.soak(s, n["soak"], settle_s=120))),
        ("logs", probes.logs),
    ]  # fmt: skip


def build_serving(workdir: Path) -> Path:
    from engine.checkpoint.convert import convert
    from engine.checkpoint.tiny import make_tiny

    tiny = make_tiny(workdir / "tiny", seed=0)
    serving = workdir / "serving"
    convert(tiny, serving, dtype="float32", progress=False)
    return serving


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)[:160]
    return str(value)


def table(results: dict[str, dict[str, Any]]) -> str:
    """One row per figure: scenario | figure | value."""
    lines = ["| scenario | figure | value |", "|---|---|---|"]
    for name, figures in results.items():
        for key, value in figures.items():
            if key in ("summary", "examples", "statuses") and not value:
                continue
            lines.append(f"| {name} | {key} | {_cell(value)} |")
    return "\n".join(lines)


def backbone_stack_config(serving: Path, workdir: Path) -> StackConfig:
    """The stack of the Redis backbone scenarios: one worker per stage (short scenarios, CI
    minutes), its Redis the Sentinel set; the reply reader and requests already accepted wait
    out an election for 10 s (not the chaos stack's 3 s: an election takes about 2); /readyz
    says Redis is full for 3 s after a refusal, so the full scenario sees it come back."""
    env = {"SEEDX_GATEWAY_REDIS_FULL_WINDOW_S": "3"}
    for prefix in ("GATEWAY", "LLM", "DIFFUSION"):
        env[f"SEEDX_{prefix}_QUEUE__REPLY_OUTAGE_S"] = "10"
    return StackConfig(
        serving, workdir, llm_workers=1, diffusion_workers=1, extra_env=env, backbone=True
    )


def _run(
    stack: Stack, chosen: list[tuple[str, Callable[[Stack], Any]]], results: dict[str, Any]
) -> None:
    for name, run in chosen:
        t0 = time.monotonic()
        try:
            results[name] = run(stack)
        except Exception as exc:  # a scenario that breaks is a figure too
            results[name] = {"error": repr(exc)}
        results[name]["scenario_s"] = round(time.monotonic() - t0, 1)
        print(f"{name}: {json.dumps(results[name], default=str)}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seedx bench chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the CI suite's reduced counts")
    parser.add_argument("--only", default=None, help="comma-separated scenario names")
    parser.add_argument("--serving", default=None, help="serving tree (default: a fresh tiny)")
    parser.add_argument("--workdir", default=None, help="logs and data (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--llm-workers", type=int, default=2, help="LLM workers (default 2)")
    parser.add_argument(
        "--diffusion-workers", type=int, default=2, help="diffusion workers (default 2; >= 1)"
    )
    parser.add_argument("--resume-runs", type=int, default=None, help="kills of resume_llm")
    parser.add_argument("--resume-streams", type=int, default=None, help="streams per kill")
    args = parser.parse_args(argv)
    overrides = {
        name: value
        for name, value in (
            ("resume_runs", args.resume_runs),
            ("resume_streams", args.resume_streams),
        )
        if value is not None
    }
    # SIGTERM unwinds like Ctrl-C, so the stack's children and its Valkey are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="seedx-chaos-"))
    serving = Path(args.serving) if args.serving else build_serving(workdir)
    chosen = set(args.only.split(",")) if args.only else None
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    config = StackConfig(
        serving,
        workdir / "stack",
        llm_workers=args.llm_workers,
        diffusion_workers=args.diffusion_workers,
    )
    main_plan = [
        (name, run) for name, run in plan(args.quick, overrides) if chosen is None or name in chosen
    ]
    if main_plan:
        main_plan += [] if any(n == "logs" for n, _ in main_plan) else [("logs", probes.logs)]
        with Stack(config) as stack:
            ready_s = time.monotonic() - started
            print(f"stack ready in {ready_s:.0f} s (logs: {workdir})", flush=True)
            _run(stack, main_plan, results)
    backbone_plan = [(n, r) for n, r in backbone.plan() if chosen is None or n in chosen]
    if backbone_plan:
        started = time.monotonic()
        backbone_config = backbone_stack_config(serving, workdir / "backbone")
        with Stack(backbone_config) as stack:
            print(f"backbone stack ready in {time.monotonic() - started:.0f} s", flush=True)
            _run(stack, backbone_plan, results)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0
