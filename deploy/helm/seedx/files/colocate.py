"""The supervisor of a co-located worker pod (``placement.layout: colocated``), its PID 1.

With the NVIDIA device plugin a GPU is allocated to one *container*, never to a pod, so the
processes of a GPU group (an LLM worker and de-tokenizer workers) run in ONE container that
requests the group's GPUs, under this script. It uses only the standard library: the chart mounts
it from a ConfigMap and runs it with the image's Python.

    colocate.py run --grace-s 70 --child '{"name": "llm", "port": 9101,
        "argv": ["seedx", "worker", "llm"], "env": {"SEEDX_LLM_KV_CACHE_BYTES": "..."}}' ...
    colocate.py probe 9101 9102        # exit 0 when every port's /healthz answers 200

``run``
  * starts the children in the order given, each once the one before answers ``/healthz`` on
    its port: the LLM worker takes its fixed budget (weights + ``kv_cache_bytes``) on an empty
    GPU before a de-tokenizer loads next to it, so vLLM's start-up check of free GPU memory and
    each process's share do not depend on which process happened to load first;
  * gives each child the container's environment plus its own ``env`` (its settings), its own
    process group, and prefixes its output lines with its name;
  * when a child exits on its own, stops the others and exits with that child's code: the group
    is one unit, and the kubelet restarts the container (both processes) with its back-off,
    visible as a container restart. Restarting one process inside the container instead would
    hide the restart and run into the liveness probe while the LLM reloads;
  * on SIGTERM (or SIGINT) sends SIGTERM to each child alone, so each worker drains as it does in
    its own pod (stops taking jobs, finishes running ones within queue.shutdown_grace_s, hands the
    rest back) and shuts its own processes down in order; after ``--grace-s`` whatever is left
    of a child's process group gets SIGKILL;
  * reaps every process that ends up re-parented to it (it is PID 1 of the container).

``probe`` is the container's startup, liveness and readiness probe: every child's ``/healthz``
(200 once its model is loaded, then while it is alive) must answer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import IO, Any

POLL_S = 0.2
HEALTH_EVERY_S = 2.0


def healthy(port: int, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout_s) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


@dataclass
class Child:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    code: int | None = None

    @classmethod
    def parse(cls, text: str) -> Child:
        spec: dict[str, Any] = json.loads(text)
        env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
        return cls(str(spec["name"]), [str(a) for a in spec["argv"]], int(spec["port"]), env)

    @property
    def running(self) -> bool:
        return self.process is not None and self.code is None


OUTPUT = threading.Lock()


def write(line: str) -> None:
    with OUTPUT:
        sys.stdout.write(line)
        sys.stdout.flush()


def _pump(prefix: str, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        write(prefix + raw.decode(errors="replace").rstrip("\n") + "\n")


class Group:
    def __init__(self, children: list[Child], grace_s: float) -> None:
        self.children = children
        self.grace_s = grace_s
        self.stopping = False
        self.exit_code = 0
        self.kill_at: float | None = None
        self.signalled: int | None = None
        self.width = max(len(c.name) for c in children)

    def say(self, line: str) -> None:
        write(f"{'colocate':<{self.width}} | {line}\n")

    def start(self, child: Child) -> None:
        env = {**os.environ, **child.env, "PYTHONUNBUFFERED": "1"}
        child.process = subprocess.Popen(
            child.argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: leftovers are killed together
        )
        assert child.process.stdout is not None
        prefix = f"{child.name:<{self.width}} | "
        threading.Thread(target=_pump, args=(prefix, child.process.stdout), daemon=True).start()
        self.say(f"started {child.name} (pid {child.process.pid}): {' '.join(child.argv)}")

    def stop(self, reason: str, code: int = 0) -> None:
        """SIGTERM to each running child alone (each drains and stops its own processes)."""
        if self.stopping:
            return
        self.stopping, self.exit_code = True, code
        self.kill_at = time.monotonic() + self.grace_s
        self.say(f"{reason}: stopping " + ", ".join(c.name for c in self.children if c.running))
        for child in self.children:
            if child.running and child.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signal.SIGTERM)

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signalled = signum  # acted on by the loop: no output from inside a handler

    def reap(self) -> None:
        """Collects every exited process: our children, and orphans re-parented to PID 1."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for child in self.children:
                if child.process is not None and child.process.pid == pid:
                    code = os.waitstatus_to_exitcode(status)
                    child.code = code if code >= 0 else 128 - code  # killed by a signal
                    child.process.returncode = code
                    self.exited(child)

    def exited(self, child: Child) -> None:
        self.say(f"{child.name} exited with code {child.code}")
        if not self.stopping:
            self.stop(f"{child.name} exited", child.code or 1)
        # Leftovers of its process group (vLLM's engine core and TP workers) go with it.
        assert child.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGTERM)

    def kill_leftovers(self) -> None:
        for child in self.children:
            if child.process is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.process.pid, signal.SIGKILL)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        pending = list(self.children)
        waiting_for: Child | None = None
        next_check = 0.0
        while True:
            self.reap()
            if self.signalled is not None:
                self.stop(signal.Signals(self.signalled).name)
            now = time.monotonic()
            if self.stopping:
                if not any(c.running for c in self.children):
                    self.kill_leftovers()  # nothing outlives the group, PID 1 or not
                    return self.exit_code
                if self.kill_at is not None and now >= self.kill_at:
                    self.say(f"grace of {self.grace_s:.0f} s over: SIGKILL to what is left")
                    self.kill_leftovers()
                    self.kill_at = None
            elif pending and (waiting_for is None or now >= next_check):
                if waiting_for is None or healthy(waiting_for.port):
                    if waiting_for is not None:
                        self.say(f"{waiting_for.name} is up; starting {pending[0].name}")
                    waiting_for = pending.pop(0)
                    self.start(waiting_for)
                next_check = now + HEALTH_EVERY_S
            time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the children in order and supervise them")
    run.add_argument("--grace-s", type=float, default=60.0, help="SIGTERM to SIGKILL")
    run.add_argument("--child", action="append", required=True, help="JSON: name, port, argv, env")
    probe = sub.add_parser("probe", help="exit 0 when /healthz answers 200 on every port")
    probe.add_argument("ports", type=int, nargs="+")
    probe.add_argument("--timeout-s", type=float, default=2.0, help="per port")
    args = parser.parse_args(argv)
    if args.command == "probe":
        down = [p for p in args.ports if not healthy(p, args.timeout_s)]
        if down:
            print(f"/healthz not answering 200 on port(s) {down}", file=sys.stderr)
        return 1 if down else 0
    return Group([Child.parse(c) for c in args.child], args.grace_s).run()


if __name__ == "__main__":
    sys.exit(main())
