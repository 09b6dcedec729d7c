"""What the benchmarks and chaos runs read about the host and its processes (Linux /proc).

:func:`describe_host` is the line a benchmark prints at the top of its output.

Latency figures differ between hosts more than between careful runs on one host (the gateway's
added TTFT at concurrency 1 measured 3.3 ms on one 2-core VM and 1.8 ms on another with the same
code), so a figure is only comparable with the CPU model and the load it was measured under.
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_host() -> str:
    """``python 3.11.7, 2 CPUs (AMD EPYC ...), load 0.42 0.16 0.06`` (1, 5 and 15 minutes)."""
    line = f"python {platform.python_version()}, {os.cpu_count()} CPUs ({cpu_model()})"
    if hasattr(os, "getloadavg"):
        line += ", load " + " ".join(f"{value:.2f}" for value in os.getloadavg())
    return line


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name (which may hold spaces and parentheses):
    field 0 is the state, 1 the parent pid, 11 and 12 user and system clock ticks."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_state(pid: int) -> str | None:
    """The process's state letter (``R``, ``S``, ``Z`` for a zombie...); None once it is gone."""
    try:
        return _stat_fields(pid)[0]
    except OSError:
        return None
