"""``seedx bench --help`` names every benchmark with what it measures, without importing any."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from seedx.bench import BENCHES, run_bench
from seedx.cli import build_parser


def test_bench_help_lists_every_benchmark_with_its_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["bench", "--help"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name, bench in BENCHES.items():
        assert bench.summary, name
        assert "\n" not in bench.summary, name
        assert any(line.split() == [name, *bench.summary.split()] for line in lines), (
            f"`seedx bench --help` should list {name!r} with its one-line summary"
        )


def test_top_level_help_names_the_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"benchmarks ({', '.join(BENCHES)})" in out


def test_every_benchmark_module_exists() -> None:
    for name, bench in BENCHES.items():
        assert importlib.util.find_spec(bench.module) is not None, name


def test_a_benchmark_gets_its_own_arguments() -> None:
    args = build_parser().parse_args(["bench", "transport", "--help", "--ops", "3"])
    assert (args.name, args.rest) == ("transport", ["--help", "--ops", "3"])


def test_unknown_benchmark_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_bench("nope", []) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in BENCHES)


def test_bench_help_imports_no_benchmark() -> None:
    code = (
        "import sys\n"
        "from seedx.cli import build_parser\n"
        "try:\n"
        "    build_parser().parse_args(['bench', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "from seedx.bench import BENCHES\n"
        "loaded = [b.module for b in BENCHES.values() if b.module in sys.modules]\n"
        "print('loaded=' + ','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines()[-1] == "loaded="
