"""The benchmarks' host line names the CPU model and the load the figures were taken under."""

from __future__ import annotations

import os
import platform

from workers.hostinfo import cpu_model, describe_host


def test_the_host_line_names_python_cpus_model_and_load() -> None:
    line = describe_host()
    assert line.startswith(f"python {platform.python_version()}, {os.cpu_count()} CPUs (")
    assert cpu_model() in line
    if hasattr(os, "getloadavg"):
        assert len(line.split(", load ")[1].split()) == 3


def test_the_cpu_model_is_never_empty() -> None:
    assert cpu_model().strip()
