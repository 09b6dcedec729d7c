"""The load benchmark's trace replayed on an *ideal* scheduler: the best any implementation of a
batching policy can do (issue 25).

A measured replay (``workers.diffusion.load_bench``) that misses a goal misses it either because
of queueing (the goal is out of reach for that policy at that load, however it is implemented)
or because of the implementation (it loses time the policy does not have to lose). This
discrete-event simulation separates the two: the same seeded arrivals, a device whose step time
depends only on how many rows it denoises (``step_s_by_rows``, measured by the bench), and a
scheduler that costs nothing and never hesitates:

* ``batch``: when the device is idle, every waiting job (oldest first, at most ``max_batch``)
  starts one batch, which runs all its steps; a job arriving meanwhile waits for the whole batch.
* ``step``: at every step boundary waiting jobs join (oldest first) while rows are free; a row
  leaves after its last step.

Preparation is a constant device cost per job (``job_s``) and decoding a cost per decode call
of 1..``decode_batch`` images (``decode_s_by_images``), both as the bench times them and both
paid in the step where the job finishes: jobs that finish together are decoded together, in
calls of at most ``decode_batch``, so step-level's staggered finishes pay the dearer small
decodes that any step-level scheduler pays (holding a finished image for companions does not
pay: measured, docs/performance.md), and a full batch takes what the capacity run measured.
No batching window (``batch_wait_s``), no Python between steps: a measured row worse than its
ideal row is the implementation's loss; an ideal row that misses a goal is queueing's.
Pure Python (no torch), so it is cheap to sweep loads and batch sizes.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import numpy as np

POLICIES = ("batch", "step")


@dataclass(frozen=True)
class Device:
    """Seconds per denoising step at 1..max_batch rows (index 0 = 1 row); per job besides
    (``job_s``: preparation, and decoding too when ``decode_s_by_images`` is empty); per decode
    call of 1..decode_batch images."""

    step_s_by_rows: tuple[float, ...]
    job_s: float = 0.0
    decode_s_by_images: tuple[float, ...] = ()

    @property
    def max_batch(self) -> int:
        return len(self.step_s_by_rows)

    def step_s(self, rows: int) -> float:
        return self.step_s_by_rows[rows - 1]

    def decode_s(self, images: int) -> float:
        """Decoding ``images`` that finished together, in calls of at most decode_batch."""
        if not self.decode_s_by_images or images == 0:
            return 0.0
        full, rest = divmod(images, len(self.decode_s_by_images))
        last = self.decode_s_by_images[rest - 1] if rest else 0.0
        return full * self.decode_s_by_images[-1] + last

    def finish_s(self, jobs: int) -> float:
        """The device time of ``jobs`` finishing together, besides their steps."""
        return jobs * self.job_s + self.decode_s(jobs)

    def slower(self, factor: float) -> Device:
        """This device with every cost ``factor`` times as long (a replay that ran slower than
        the capacity run: the ideal of the device it actually ran on)."""
        return Device(
            tuple(s * factor for s in self.step_s_by_rows),
            self.job_s * factor,
            tuple(s * factor for s in self.decode_s_by_images),
        )

    def capacity(self, steps: int) -> float:
        """Images/s of back-to-back full batches: what the bench calls capacity."""
        full = self.max_batch
        return full / (steps * self.step_s(full) + self.finish_s(full))


@dataclass(frozen=True)
class PolicyResult:
    """One policy's run of the trace (seconds, except ``wait_steps``); measured runs carry the
    ideal run of the same trace (:func:`ideal`) for comparison, and how much slower than the
    capacity run their UNet steps were (``slowdown``: their seconds ÷ the step-time curve's at
    the same jobs per step) with the ideal run on a device that much slower (``ideal_slowed``).
    Measured against ``ideal_slowed``, a replay's loss is its implementation's; ``ideal_slowed``
    against ``ideal`` is the machine's drift between the capacity run and the replay."""

    policy: str
    wait_steps: list[float]
    latency_s: list[float]
    images_per_s: float
    ideal: PolicyResult | None = None
    repeats: tuple[PolicyResult, ...] = ()  # the runs pooled here, when there were several
    slowdown: float | None = None
    ideal_slowed: PolicyResult | None = None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclass(frozen=True)
class Figures:
    """What the bench reports of a policy: queue wait (step times) and end-to-end latency (s)
    at p50 and p99, and images/s."""

    wait_p50: float
    wait_p99: float
    e2e_p50: float
    e2e_p99: float
    images_per_s: float

    @classmethod
    def of_run(cls, run: PolicyResult) -> Figures:
        waits, latency = run.wait_steps, run.latency_s
        return cls(percentile(waits, 50), percentile(waits, 99), percentile(latency, 50),
                   percentile(latency, 99), run.images_per_s)  # fmt: skip


def figures(result: PolicyResult) -> Figures:
    """``result``'s figures, each the median over its repeats (a single run: its own).

    The median of per-repeat percentiles, not the percentile of the pooled samples: on a shared
    machine one burst of contention during one repeat slows the few jobs in flight, and with 60
    jobs a repeat the pooled p99 is about the second-slowest of 180, so that one burst sets it
    (measured: the same trace gave a step-level p99 of 0.75 s, then 1.08 s, with the p50 and the
    other repeats unchanged). A median of three repeats ignores one spoiled repeat; images/s was
    already the median of the repeats."""
    runs = result.repeats or (result,)
    each = [Figures.of_run(run) for run in runs]
    return Figures(
        *(
            float(np.median([getattr(f, name) for f in each]))
            for name in Figures.__dataclass_fields__
        )
    )


def poisson_trace(jobs: int, rate: float, seed: int) -> list[float]:
    """Arrival times (seconds from the start) of ``jobs`` jobs at ``rate`` per second."""
    rng = random.Random(seed)
    arrivals, now = [], 0.0
    for _ in range(jobs):
        arrivals.append(now)
        now += rng.expovariate(rate)
    return arrivals


def ideal(
    policy: str, arrivals: list[float], device: Device, steps: int, step_s: float
) -> PolicyResult:
    """The trace (sorted arrival times) on the ideal scheduler of ``policy``, in the bench's
    figures: queue wait (arrival -> joined a batch) in units of ``step_s``, end-to-end latency
    (arrival -> image done), images/s over the trace (first arrival -> last image)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    started = [0.0] * len(arrivals)
    finished = [0.0] * len(arrivals)
    waiting: deque[int] = deque()
    running: dict[int, int] = {}  # job -> steps left
    upcoming = 0  # next job of the trace not yet arrived
    now = 0.0
    while upcoming < len(arrivals) or waiting or running:
        if not waiting and not running:
            now = max(now, arrivals[upcoming])  # idle: the device waits for the next job
        while upcoming < len(arrivals) and arrivals[upcoming] <= now:
            waiting.append(upcoming)
            upcoming += 1
        # A batch-level batch forms only on an idle device; step-level joins at every boundary.
        if policy == "step" or not running:
            while waiting and len(running) < device.max_batch:
                job = waiting.popleft()
                started[job] = now
                running[job] = steps
        if policy == "batch":
            now += steps * device.step_s(len(running)) + device.finish_s(len(running))
            done = list(running)
        else:
            done = [job for job, left in running.items() if left == 1]
            now += device.step_s(len(running)) + device.finish_s(len(done))
            for job in running:
                running[job] -= 1
        for job in done:
            finished[job] = now
            del running[job]
    return PolicyResult(
        policy,
        [(start - at) / step_s for start, at in zip(started, arrivals, strict=True)],
        [end - at for end, at in zip(finished, arrivals, strict=True)],
        len(arrivals) / (max(finished) - arrivals[0]),
    )


def sweep(
    device: Device, steps: int, jobs: int, load: float, seeds: range
) -> tuple[float, float, float]:
    """The goal ratios of issue 25 on ``len(seeds)`` traces, each the median over the traces:
    step-level p99 queue wait (step times at a full batch), batch ÷ step p99 end-to-end,
    step ÷ batch images/s."""
    step_s = device.step_s(device.max_batch)
    figures = []
    for seed in seeds:
        arrivals = poisson_trace(jobs, load * device.capacity(steps), seed)
        batch, step = (ideal(name, arrivals, device, steps, step_s) for name in POLICIES)
        figures.append(
            (
                percentile(step.wait_steps, 99),
                percentile(batch.latency_s, 99) / percentile(step.latency_s, 99),
                step.images_per_s / batch.images_per_s,
            )
        )
    wait, better, ratio = (float(np.median(column)) for column in zip(*figures, strict=True))
    return wait, better, ratio


def main(argv: list[str] | None = None) -> int:
    """``python -m workers.diffusion.load_model``: the goals on the ideal scheduler for a step
    time curve (ms at 1, 2, ... rows, as the load bench prints it) over max batches and loads."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--curve-ms", required=True, help="step ms at 1,2,... rows, comma-separated"
    )
    parser.add_argument("--job-ms", type=float, default=0.0, help="per-job device ms besides steps")
    parser.add_argument(
        "--decode-ms",
        default="",
        help="ms of one decode call of 1,2,... images, comma-separated (else in --job-ms)",
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=50, help="traces (seeds 0..N-1)")
    parser.add_argument("--max-batch", default="4,8,16", help="comma-separated")
    parser.add_argument("--load", default="0.5,0.7", help="comma-separated")
    args = parser.parse_args(argv)
    curve = tuple(float(ms) / 1000 for ms in args.curve_ms.split(","))
    decode = tuple(float(ms) / 1000 for ms in args.decode_ms.split(",") if ms)
    print(f"ideal scheduler, {args.steps} steps, {args.jobs} jobs, median over seeds "
          f"0..{args.seeds - 1}")  # fmt: skip
    print(f"{'max batch':>9}{'load':>6}{'step p99 wait':>15}{'p99 e2e x':>11}{'images/s x':>12}")
    for max_batch in (int(b) for b in args.max_batch.split(",")):
        if max_batch > len(curve):
            raise SystemExit(f"--curve-ms has {len(curve)} points, --max-batch {max_batch}")
        device = Device(curve[:max_batch], args.job_ms / 1000, decode)
        for load in (float(x) for x in args.load.split(",")):
            wait, better, ratio = sweep(device, args.steps, args.jobs, load, range(args.seeds))
            print(f"{max_batch:>9}{load:>6.2f}{wait:>15.2f}{better:>11.2f}{ratio:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
