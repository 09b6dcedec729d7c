"""vLLM's child processes end when the LLM worker that started them is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from engine.vllm_plugin.lifeline import follow_parent
from seedx.chaos.stack import alive

# A stand-in for the LLM worker: it starts a child the way vLLM starts its engine core (a
# multiprocessing "spawn" child that calls the plugin's register hook), then waits to be killed.
_WORKER = textwrap.dedent(
    """
    import multiprocessing, sys, time
    from pathlib import Path

    def engine_core(pid_file, poll_s, grace_s):
        import signal, subprocess
        from engine.vllm_plugin.lifeline import follow_parent
        if grace_s > 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # an orderly stop that hangs
        assert follow_parent(poll_s=poll_s, grace_s=grace_s)
        # its model runner, which vLLM's orderly stop would give seconds to notice
        runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path(pid_file).write_text(f"{multiprocessing.current_process().pid} {runner.pid}")
        time.sleep(120)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=engine_core, args=(sys.argv[1], 0.05, float(sys.argv[2])))
        child.start()
        time.sleep(120)
    """
)


def _orphan_after_kill(tmp_path: Path, grace_s: float) -> tuple[list[int], float | None]:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    pid_file = tmp_path / "engine.pid"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    worker = subprocess.Popen([sys.executable, str(script), str(pid_file), str(grace_s)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or len(pid_file.read_text().split()) < 2:
            assert time.monotonic() < deadline, "the engine-core stand-in never started"
            time.sleep(0.05)
        engine = [int(pid) for pid in pid_file.read_text().split()]
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        killed = time.monotonic()
        while alive(engine) and time.monotonic() - killed < grace_s + 10:
            time.sleep(0.05)
        return engine, None if alive(engine) else time.monotonic() - killed
    finally:
        worker.kill()


def test_engine_core_and_its_runner_stop_when_the_worker_is_sigkilled(tmp_path: Path) -> None:
    engine, gone_after = _orphan_after_kill(tmp_path, grace_s=0)
    for pid in alive(engine) if gone_after is None else []:
        os.kill(pid, signal.SIGKILL)
    assert gone_after is not None
    assert gone_after < 3


def test_a_hung_orderly_stop_ends_in_a_hard_exit(tmp_path: Path) -> None:
    engine, gone_after = _orphan_after_kill(tmp_path, grace_s=1.0)
    for pid in alive(engine) if gone_after is None else []:
        os.kill(pid, signal.SIGKILL)
    assert gone_after is not None
    assert 0.9 < gone_after < 5


def test_a_process_multiprocessing_did_not_start_is_left_alone() -> None:
    # pytest's own process: a server started by a shell must survive its shell (nohup).
    assert follow_parent() is False
