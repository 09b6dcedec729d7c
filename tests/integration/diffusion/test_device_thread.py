"""A diffusion worker does all its torch work on one thread (``workers.diffusion.device_thread``).

Why it matters: once a second thread has run a parallel torch op, libgomp manages more threads
than there are cores and every later op of the process pays a futex wake-up; on the 2-core CI
machine the tiny UNet's steps took 1.8x as long, in every thread (docs/performance.md,
"One torch thread"). The worker used to load on one thread, check embeddings on the event loop
and denoise on a third. Timings are not asserted here (they belong to ``seedx bench``); what is
asserted is the cause: the real ``serve`` path loads, warms up and runs every batch on one thread
that is not the event loop's, and the embedding check on the event loop uses no torch.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis
from torch.overrides import TorchFunctionMode

from engine.checkpoint import layout
from engine.checkpoint.detokenizer_folder import load_detokenizer
from tests.integration.workers.helpers import collect, gateway
from tests.unit.diffusion.support import embedding, generate_job, worker_settings
from workers.diffusion import worker as diffusion_worker
from workers.diffusion.device_thread import DeviceThread
from workers.diffusion.runner import BatchRunner
from workers.settings import QueueSettings, RedisSettings
from workers.worker import Worker

STREAM = "device-thread-test"


class TorchCalls(TorchFunctionMode):
    """Counts torch function calls made on the thread that entered it (modes are per thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        self.calls.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


async def test_device_thread_runs_calls_in_order_on_one_thread() -> None:
    with DeviceThread() as device:
        idents = [await device.run(threading.get_ident) for _ in range(3)]
        idents.append(device.call(threading.get_ident))
        assert set(idents) == {device.ident}
        assert device.ident != threading.get_ident()
        order: list[int] = []
        futures = [device.submit(order.append, i) for i in range(20)]
        for future in futures:
            future.result()
        assert order == list(range(20))


async def test_serve_does_its_torch_work_on_one_thread_off_the_event_loop(
    detok_root: Path,
    redis: Redis,  # a flushed database, as every Redis test here starts from
    redis_settings: RedisSettings,
    queue_settings: QueueSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipeline = load_detokenizer(layout.serving_detokenizer_dir(detok_root, "first_stage"))
    threads: dict[str, set[int]] = defaultdict(set)

    def recorded(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            threads[name].add(threading.get_ident())
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(diffusion_worker, "load_pipeline", recorded("load", lambda _: pipeline))
    monkeypatch.setattr(BatchRunner, "warmup", recorded("warmup", BatchRunner.warmup))
    monkeypatch.setattr(BatchRunner, "run", recorded("run", BatchRunner.run))
    workers: list[Worker] = []

    class RecordedWorker(Worker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            workers.append(self)

    monkeypatch.setattr("workers.worker.Worker", RecordedWorker)
    # a stream of its own: CI's Redis is shared with the e2e stack's workers, which consume
    # `first_stage` jobs too while that session-scoped stack is up
    settings = worker_settings(
        detok_root,
        model_name=STREAM,
        warmup=True,
        metrics_port=None,
        redis=redis_settings,
        queue=queue_settings,
    )
    loop = asyncio.get_running_loop()
    array = embedding(3).astype(np.float16)
    with TorchCalls() as on_loop:  # entered on the event loop's thread: counts only its calls
        serving = asyncio.create_task(diffusion_worker.serve(settings))
        try:
            async with gateway(redis_settings, queue_settings) as gw:
                ref = await gw.blobs.put_tensor(array)
                jobs = [generate_job(ref, model=STREAM, seed=s, steps=3) for s in range(3)]
                jobs = [job.model_copy(update={"reply_to": gw.reply_to}) for job in jobs]
                subscriptions = [await gw.submit(job) for job in jobs]
                for subscription in subscriptions:
                    replies = await collect(subscription, timeout=60)
                    assert replies[-1].event.type == "done", replies[-1].event
        finally:
            # stopped as SIGTERM stops it (``Worker.stop``), not by ``Task.cancel``: up to
            # Python 3.11 redis-py loses a cancellation that lands as a command's write
            # completes, and the worker goes on consuming (it hung CI; ``stop_task`` says more)
            for worker in workers:
                worker.stop()
            if not workers:  # failed before consuming: nothing of redis-py's is in the way
                serving.cancel()
            try:  # a hang fails the test here instead of stalling the suite
                await asyncio.wait_for(asyncio.gather(serving, return_exceptions=True), 60)
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
    serving.result()  # stopped by its worker's stop, the serve returned without an error
    ran_on = set().union(*threads.values())
    assert set(threads) == {"load", "warmup", "run"}, dict(threads)
    assert len(ran_on) == 1, dict(threads)
    assert threading.get_ident() not in ran_on
    # the event loop builds tensors from numpy arrays, but computes nothing with torch
    assert set(on_loop.calls) <= {"reshape"}, sorted(set(on_loop.calls))
