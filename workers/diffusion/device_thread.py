"""The one thread that runs torch in a diffusion worker process.

On the CPU, PyTorch's OpenMP runtime (libgomp) keeps a team of helper threads for *every* thread
that has run a parallel op, for as long as that thread lives. Once a second team exists, the
process manages more OpenMP threads than there are cores, and libgomp stops spinning between
parallel regions (its "throttled" wait): every small op then pays a sleep and a futex wake-up.
The tiny UNet runs thousands of small ops per step, so the slowdown is large, and it hits every
thread for the rest of the process. Measured on the 2-core CI machine (tiny model, 16 images at
128², docs/performance.md "One torch thread"): a step took 70-90 ms until one 1M-element
multiply ran on a second thread, and 130-170 ms from then on.
The worker loaded its pipeline on one thread (``asyncio.to_thread``), checked embeddings with
torch on the event loop, and denoised on a third: it ran every batch at about half speed, and the
load benchmark's replays (issue 25) ran twice as slow as its capacity measurement on the main
thread said they should.

So a worker process does all its torch work here: loading, warm-up, every batch (the
dispatcher's device thread *is* this thread), and the benchmarks' measurements. Code on the
event loop checks tensors with numpy, which runs single-threaded. On a GPU the kernels are the
device's, but the same holds for the CPU side of each step (launches, previews, conversions).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class DeviceThread:
    """A single worker thread; calls run one at a time, in submission order."""

    def __init__(self, name: str = "diffusion-device") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._ident: int | None = None
        self._executor.submit(self._remember_ident).result()

    def _remember_ident(self) -> None:
        self._ident = threading.get_ident()

    @property
    def ident(self) -> int | None:
        """``threading.get_ident()`` of the thread (for checks that work runs here)."""
        return self._ident

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self._executor.submit(fn, *args, **kwargs)

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs ``fn`` on the thread and waits for it (synchronous code: benchmarks, checks)."""
        return self.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs ``fn`` on the thread without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def close(self) -> None:
        """Waits for the work already submitted, then ends the thread."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> DeviceThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
