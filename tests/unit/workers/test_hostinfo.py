"""The benchmarks' host line names the CPU model and the load the figures were taken under."""

from __future__ import annotations

import os
import platform

from workers.hostinfo import cpu_model, cpu_seconds, describe_host, process_state


def test_the_host_line_names_python_cpus_model_and_load() -> None:
    line = describe_host()
    assert line.startswith(f"python {platform.python_version()}, {os.cpu_count()} CPUs (")
    assert cpu_model() in line
    if hasattr(os, "getloadavg"):
        assert len(line.split(", load ")[1].split()) == 3


def test_the_cpu_model_is_never_empty() -> None:
    assert cpu_model().strip()


def test_process_state_and_cpu_time_of_a_process() -> None:
    import subprocess
    import sys
    import time

    assert process_state(os.getpid()) in ("R", "S")
    assert cpu_seconds(os.getpid()) > 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while process_state(child.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process_state(child.pid) == "Z"  # exited, not yet reaped
    child.wait()
    assert process_state(child.pid) is None
