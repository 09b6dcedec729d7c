"""``seedx bench diffusion --arrivals poisson --load L``: batch-level vs step-level batching.

One seeded Poisson arrival trace of generate jobs is replayed twice on the same pipeline, the
same jobs and the same worker parts (``BatchDispatcher`` + ``BatchRunner``, what the worker
runs; no Redis, whose cost is the same for both and is measured by the plain bench): once with
``batching=batch`` (a job arriving while a batch denoises waits for all of it) and once with
``batching=step`` (it joins at the next step). Reported per policy: p50/p99 queue wait (job
submitted -> joined a batch) in step times, p50/p99 end-to-end latency (submitted -> final
image decoded), and images/s over the trace.

``L`` is the offered load relative to the worker's capacity, measured first: back-to-back full
batches (``--max-batch`` jobs each), their sampling and each job's preparation and decoding
timed alone on the device (:func:`measure_capacity`); arrivals come at rate ``L x capacity``.
A *step time* is that full batch's sampling time divided by its steps.
Issue 25's goals at load 0.7 on the CPU tiny model: step-level p99 queue wait <= 1.5 step
times, images/s not below batch-level, p99 end-to-end >= 1.5x better.

The capacity run also measures the step time at every row count (1..max_batch): beside each
policy's measured row the report prints its *ideal* row, the same trace on a scheduler that
costs nothing (``workers.diffusion.load_model``), so a miss reads as queueing (the ideal misses
too) or as the implementation (measured worse than ideal). On a shared machine the device can be
slower during a replay than during the capacity run, which raises the load the replay really
offers: every replay times its UNet steps (``BatchRunner``'s ``on_step``) against the curve at
the same jobs per step, and the report adds the ideal on a device that much slower (``xF ideal``).
Measured against that row, a gap is the implementation's; that row against the plain ideal is
the machine's drift.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.pipeline_inputs import GenerateJob
from engine.pipelines import DetokenizerPipeline
from engine.sampling import SamplingJob, SamplingOptions
from workers.diffusion.batching import BatchPolicy
from workers.diffusion.device_thread import DeviceThread
from workers.diffusion.dispatcher import BatchDispatcher, Ticket
from workers.diffusion.load_model import (
    Device,
    Figures,
    PolicyResult,
    figures,
    ideal,
    poisson_trace,
)
from workers.diffusion.load_model import percentile as percentile
from workers.diffusion.requests import DiffusionRequest
from workers.diffusion.runner import BatchRunner, Failure, Finished
from workers.diffusion.settings import DiffusionWorkerSettings

POLICIES = ("batch", "step")


@dataclass(frozen=True)
class Capacity:
    """The device alone: seconds per denoising step and images/s, at a full batch; ``device``:
    the step time at each row count and the per-job rest, for the ideal replay."""

    step_s: float
    images_per_s: float
    device: Device


def measure_capacity(
    pipeline: DetokenizerPipeline,
    embeds: list[np.ndarray],
    options: SamplingOptions,
    settings: DiffusionWorkerSettings,
) -> Capacity:
    """The device's costs, in parts, as the worker's runner pays them: the sampling time of a
    batch of 1..max_batch rows (the ideal replay's step-time curve), a job's preparation (each
    job alone, as the runner prepares it), and one decode call of 1..``decode_batch`` images
    (step-level decodes jobs as they finish, often alone). Capacity is ``Device.capacity``:
    back-to-back full batches of those costs, the same number the ideal replay is built on.

    Each part is the median of three rounds after one warm-up, and each round measures every
    part, so a burst of contention spoils one sample of several parts, not all three samples of
    one (which a median cannot hide). Medians, not minima: on a shared machine the best run
    overstates what the replays get, and the load with it. The per-job cost is timed, not
    derived as a full batch's run minus its sampling: at 50 steps that difference of two
    seconds-long medians is noisier than the cost itself (a 41 ms "per-job cost" was measured
    that way, against about 10 ms timed)."""
    batch = [_request(embeds[i % len(embeds)], i, options) for i in range(settings.max_batch)]
    generate = [job for request in batch if isinstance(job := request.engine_job, GenerateJob)]
    jobs = pipeline.prepare_generate(generate)
    latents = pipeline.sample(jobs, options)  # also the warm-up
    pipeline.decode(latents[: settings.decode_batch])
    sample_s: list[list[float]] = [[] for _ in jobs]  # [rows - 1] -> seconds per round
    decode_s: list[list[float]] = [[] for _ in range(min(settings.decode_batch, len(jobs)))]
    prepare_s: list[float] = []
    for _ in range(3):
        for rows, samples in enumerate(sample_s, start=1):
            samples.append(_sample_s(pipeline, jobs[:rows], options))
        started = time.perf_counter()
        for job in generate:
            pipeline.prepare_generate([job])
        prepare_s.append((time.perf_counter() - started) / len(generate))
        for images, samples in enumerate(decode_s, start=1):
            started = time.perf_counter()
            pipeline.decode(latents[:images])
            samples.append(time.perf_counter() - started)
    steps = options.num_inference_steps
    curve = tuple(statistics.median(samples) / steps for samples in sample_s)
    decode = tuple(statistics.median(samples) for samples in decode_s)
    device = Device(curve, statistics.median(prepare_s), decode)
    return Capacity(curve[-1], device.capacity(steps), device)


def _sample_s(
    pipeline: DetokenizerPipeline, jobs: list[SamplingJob], options: SamplingOptions
) -> float:
    """Seconds to sample ``jobs`` as one batch."""
    started = time.perf_counter()
    pipeline.sample(jobs, options)
    return time.perf_counter() - started


def _request(embed: np.ndarray, seed: int, options: SamplingOptions) -> DiffusionRequest:
    now = time.time()
    return DiffusionRequest(
        job_id=f"bench-{seed}",
        trace_id=f"bench-{seed}",
        kind="image.generate",
        engine_job=GenerateJob(torch.from_numpy(embed.astype(np.float32))[None], seed),
        options=options,
        seed=seed,
        preview_steps=(),
        output_format="png",
        quality=None,
        priority=0,
        created_at=now,
        deadline=now + 3600,
    )


async def replay(
    pipeline: DetokenizerPipeline,
    settings: DiffusionWorkerSettings,
    embeds: list[np.ndarray],
    arrivals: list[float],
    options: SamplingOptions,
    capacity: Capacity,
    device: DeviceThread,
) -> PolicyResult:
    """The trace against one policy (``settings.batching``) on the worker's batching parts,
    batches running on ``device`` (where ``pipeline`` was loaded and the capacity measured)."""
    steps: list[tuple[int, float]] = []  # (jobs, seconds) of every UNet step
    runner = BatchRunner(
        pipeline,
        decode_batch=settings.decode_batch,
        on_step=lambda jobs, seconds: steps.append((jobs, seconds)),
    )
    policy = BatchPolicy(settings.max_batch, settings.max_batch_pixels, settings.batch_wait_s,
                         settings.starvation_s)  # fmt: skip
    finished: dict[int, float] = {}

    async def one(dispatcher: BatchDispatcher, ticket: Ticket, index: int) -> None:
        never = asyncio.Event()
        while True:
            output = await ticket.next_output(never)
            if isinstance(output, Failure):
                raise RuntimeError(f"bench job {index} failed: {output.error}")
            if isinstance(output, Finished):
                finished[index] = time.monotonic()
                return

    tickets: list[Ticket] = []
    step_level = settings.batching == "step"
    async with BatchDispatcher(runner, policy, device=device, step_level=step_level) as dispatcher:
        start = time.monotonic()
        waiters = []
        for index, (at, embed) in enumerate(zip(arrivals, embeds, strict=True)):
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            ticket = dispatcher.submit(_request(embed, index, options))
            tickets.append(ticket)
            waiters.append(asyncio.create_task(one(dispatcher, ticket, index)))
        await asyncio.gather(*waiters)
    waits = [((t.started or 0.0) - t.submitted) / capacity.step_s for t in tickets]
    latency = [finished[i] - t.submitted for i, t in enumerate(tickets)]
    span = max(finished.values()) - min(t.submitted for t in tickets)
    expected = sum(capacity.device.step_s(jobs) for jobs, _ in steps)
    slowdown = sum(seconds for _, seconds in steps) / expected
    return PolicyResult(settings.batching, waits, latency, len(tickets) / span, slowdown=slowdown)


def run_load_bench(
    pipeline: DetokenizerPipeline,
    settings: DiffusionWorkerSettings,
    embeds: list[np.ndarray],
    options: SamplingOptions,
    load: float,
    seed: int,
    device: DeviceThread,
    repeats: int = 1,
) -> tuple[Capacity, list[PolicyResult]]:
    """Capacity, then the same trace against each policy of :data:`POLICIES`, alternating,
    ``repeats`` times: on a shared machine a drift in contention then hits both policies alike.
    A policy's result carries its repeats (its figures are their medians,
    :func:`~workers.diffusion.load_model.figures`) and its ideal replay (same trace, measured
    step-time curve). The capacity
    and every replay's batches run on ``device``, the thread that loaded ``pipeline``: measured
    elsewhere, the capacity would be a different machine's (``workers.diffusion.device_thread``).
    """
    capacity = device.call(measure_capacity, pipeline, embeds, options, settings)
    arrivals = poisson_trace(len(embeds), load * capacity.images_per_s, seed)
    runs: dict[str, list[PolicyResult]] = {name: [] for name in POLICIES}
    for _ in range(repeats):
        for name in POLICIES:
            policy_settings = settings.model_copy(update={"batching": name})
            runs[name].append(
                asyncio.run(
                    replay(pipeline, policy_settings, embeds, arrivals, options, capacity, device)
                )
            )
    steps = options.num_inference_steps
    results = []
    for name in POLICIES:
        slowdown = statistics.median(run.slowdown or 1.0 for run in runs[name])
        slowed = capacity.device.slower(slowdown)
        results.append(
            PolicyResult(
                name,
                [w for run in runs[name] for w in run.wait_steps],
                [s for run in runs[name] for s in run.latency_s],
                statistics.median(run.images_per_s for run in runs[name]),
                ideal(name, arrivals, capacity.device, steps, capacity.step_s),
                tuple(runs[name]),
                slowdown,
                ideal(name, arrivals, slowed, steps, capacity.step_s),
            )
        )
    return capacity, results


def report(capacity: Capacity, results: list[PolicyResult]) -> list[str]:
    """The table of the module docstring (each policy's measured row, then its ideal row), and
    the ratios the goals are about, measured and ideal; with repeats, each measured figure is
    the median of the repeats' (:func:`~workers.diffusion.load_model.figures`), and every
    repeat's p99 end-to-end is listed."""
    curve = ", ".join(f"{t * 1000:.1f}" for t in capacity.device.step_s_by_rows)
    decodes = ", ".join(f"{t * 1000:.1f}" for t in capacity.device.decode_s_by_images)
    lines = [
        f"capacity {capacity.images_per_s:.2f} images/s at a full batch; "
        f"step time {capacity.step_s * 1000:.1f} ms",
        f"ideal replay: step ms at 1..{capacity.device.max_batch} rows {curve}; "
        f"{capacity.device.job_s * 1000:.1f} ms to prepare a job; decode ms of 1.."
        f"{len(capacity.device.decode_s_by_images)} images {decodes}",
        f"{'policy':<14}{'wait p50':>10}{'wait p99':>10}{'e2e p50 s':>11}{'e2e p99 s':>11}"
        f"{'images/s':>10}",
    ]
    for r in results:
        lines.append(_row(r.policy, figures(r)))
        if r.ideal is not None:
            lines.append(_row(f"{r.policy} ideal", figures(r.ideal)))
        if r.ideal_slowed is not None:
            lines.append(_row(f"  x{r.slowdown:.2f} ideal", figures(r.ideal_slowed)))
    by = {r.policy: r for r in results}
    batch, step = by["batch"], by["step"]
    lines.append(f"step vs batch: {_goals(figures(batch), figures(step))}")
    if batch.ideal is not None and step.ideal is not None:
        lines.append(f"ideal: {_goals(figures(batch.ideal), figures(step.ideal))}")
    if batch.slowdown is not None and step.slowdown is not None:
        lines.append(
            f"UNet steps of the replays ÷ the capacity run's at the same jobs: batch "
            f"{batch.slowdown:.2f}, step {step.slowdown:.2f} (medians of the repeats; 'xF ideal': "
            "the ideal on a device F times slower, what the replay's machine allowed)"
        )
    if len(batch.repeats) > 1:
        each = "; ".join(
            f"{r.policy} " + ", ".join(f"{Figures.of_run(run).e2e_p99:.3f}" for run in r.repeats)
            for r in results
        )
        lines.append(f"p99 e2e s of each repeat: {each}")
    return lines


def _row(label: str, f: Figures) -> str:
    return (
        f"{label:<14}{f.wait_p50:>10.2f}{f.wait_p99:>10.2f}{f.e2e_p50:>11.3f}"
        f"{f.e2e_p99:>11.3f}{f.images_per_s:>10.2f}"
    )


def _goals(batch: Figures, step: Figures) -> str:
    return (
        f"p99 e2e {batch.e2e_p99 / step.e2e_p99:.2f}x better (goal >= 1.5), images/s ratio "
        f"{step.images_per_s / batch.images_per_s:.2f} (goal >= 1), step p99 queue wait "
        f"{step.wait_p99:.2f} step times (goal <= 1.5)"
    )
