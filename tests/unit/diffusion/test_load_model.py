"""The ideal-scheduler replay of the load bench (``workers.diffusion.load_model``) on cases that
can be checked by hand, and the bench's report of it beside the measured rows."""

from __future__ import annotations

import pytest

from workers.diffusion.load_bench import Capacity, report
from workers.diffusion.load_model import (
    Device,
    Figures,
    PolicyResult,
    figures,
    ideal,
    main,
    poisson_trace,
)

STEPS = 10
FLAT = Device((1.0, 1.0, 1.0, 1.0))  # one second per step whatever the rows, nothing per job


@pytest.mark.parametrize("policy", ["batch", "step"])
def test_arrivals_wider_apart_than_a_generation_never_wait(policy: str) -> None:
    device = Device((1.0, 1.5, 2.0, 2.5), job_s=0.25)
    result = ideal(policy, [0.0, 11.0, 30.0], device, STEPS, step_s=2.5)
    assert result.wait_steps == [0.0, 0.0, 0.0]
    assert result.latency_s == [10.25, 10.25, 10.25]  # 10 steps alone + the job's own cost
    assert result.images_per_s == pytest.approx(3 / 40.25)


@pytest.mark.parametrize("policy", ["batch", "step"])
def test_a_burst_one_over_max_batch_the_last_waits_a_whole_generation(policy: str) -> None:
    device = Device((1.0, 1.5, 2.0, 2.5), job_s=0.25)
    result = ideal(policy, [0.0] * 5, device, STEPS, step_s=2.5)
    generation = STEPS * 2.5 + 4 * 0.25  # a full batch's steps, and its four jobs' costs
    assert result.wait_steps == [0.0] * 4 + [generation / 2.5]
    assert result.latency_s == [generation] * 4 + [generation + 10 * 1.0 + 0.25]
    assert result.images_per_s == pytest.approx(5 / (generation + 10.25))


def test_a_job_arriving_mid_batch_joins_at_the_next_step_under_step_level() -> None:
    result = ideal("step", [0.0, 2.5], FLAT, STEPS, step_s=1.0)
    assert result.wait_steps == [0.0, 0.5]  # joins at the boundary at 3 s
    assert result.latency_s == [10.0, 10.5]  # 13 s - 2.5 s
    assert result.images_per_s == pytest.approx(2 / 13.0)


def test_a_job_arriving_mid_batch_waits_the_remaining_steps_under_batch_level() -> None:
    result = ideal("batch", [0.0, 2.5], FLAT, STEPS, step_s=1.0)
    assert result.wait_steps == [0.0, 7.5]  # the first batch ends at 10 s
    assert result.latency_s == [10.0, 17.5]  # 20 s - 2.5 s
    assert result.images_per_s == pytest.approx(2 / 20.0)


def test_the_step_time_follows_the_rows_denoised() -> None:
    device = Device((1.0, 3.0), job_s=0.5)
    # Step-level: alone for 2 steps (1 s each), then both rows (3 s each) until the first
    # finishes at 2 + 8 x 3 + 0.5 = 26.5 s; the second, alone again, has 2 steps left.
    step = ideal("step", [0.0, 1.5], device, STEPS, step_s=3.0)
    assert step.latency_s == [26.5, 26.5 + 2 * 1.0 + 0.5 - 1.5]
    assert step.wait_steps == [0.0, 0.5 / 3.0]
    # Batch-level: the second waits for the first's 10 s, then runs its own 10 s alone.
    batch = ideal("batch", [0.0, 1.5], device, STEPS, step_s=3.0)
    assert batch.latency_s == [10.5, 21.0 - 1.5]


def test_back_to_back_full_batches_serve_the_capacity() -> None:
    device = Device((1.0, 1.2, 1.4, 1.6), job_s=0.1)
    for policy in ("batch", "step"):
        result = ideal(policy, [0.0] * 12, device, STEPS, step_s=1.6)
        assert result.images_per_s == pytest.approx(device.capacity(STEPS))


def test_the_trace_is_the_benchs_seeded_poisson_trace() -> None:
    assert poisson_trace(50, 4.0, seed=7) == poisson_trace(50, 4.0, seed=7)
    assert poisson_trace(50, 4.0, seed=7) != poisson_trace(50, 4.0, seed=8)
    arrivals = poisson_trace(4000, 4.0, seed=0)
    assert arrivals[0] == 0.0
    assert arrivals == sorted(arrivals)
    assert len(arrivals) / arrivals[-1] == pytest.approx(4.0, rel=0.05)


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        ideal("greedy", [0.0], FLAT, STEPS, step_s=1.0)


def test_the_report_prints_each_policys_ideal_row_beside_its_measured_row() -> None:
    arrivals = [0.0, 2.5]
    results = [
        PolicyResult(policy, [0.0, 9.0], [11.0, 19.0], 0.1, ideal(policy, arrivals, FLAT, 10, 1.0))
        for policy in ("batch", "step")
    ]
    lines = report(Capacity(1.0, 0.4, FLAT), results)
    labels = [line.split("  ")[0] for line in lines[3:7]]
    assert labels == ["batch", "batch ideal", "step", "step ideal"]
    assert lines[7].startswith("step vs batch: p99 e2e 1.00x better")
    # ideal p99 end-to-end: batch 17.5 - 0.01 x 7.5, step 10.5 - 0.01 x 0.5 (numpy's percentile)
    assert lines[8].startswith(f"ideal: p99 e2e {17.425 / 10.495:.2f}x better")


def test_the_sweep_prints_the_goals_per_max_batch_and_load(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--curve-ms", "10,10", "--max-batch", "1,2", "--load", "0.1,0.5", "--seeds", "3"]
    assert main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[:2] for row in rows] == [["1", "0.10"], ["1", "0.50"], ["2", "0.10"], ["2", "0.50"]]
    # One row at a time: both policies are the same schedule.
    assert [row[3:] for row in rows[:2]] == [["1.00", "1.00"], ["1.00", "1.00"]]


def test_the_sweep_refuses_a_max_batch_beyond_the_curve() -> None:
    with pytest.raises(SystemExit, match="2 points"):
        main(["--curve-ms", "10,10", "--max-batch", "4"])


def test_a_policys_figures_are_the_medians_of_its_repeats() -> None:
    def run(tail_s: float, images_per_s: float) -> PolicyResult:
        return PolicyResult("step", [0.0, 1.0], [1.0, tail_s], images_per_s)

    # one repeat spoiled by a burst of contention (a 9 s tail) does not set the p99
    runs = (run(2.0, 5.0), run(9.0, 4.0), run(3.0, 6.0))
    pooled = PolicyResult("step", [0.0, 1.0] * 3, [1.0, 2.0, 1.0, 9.0, 1.0, 3.0], 5.0, None, runs)
    f = figures(pooled)
    assert f.e2e_p99 == Figures.of_run(runs[2]).e2e_p99  # the middle of 1.99, 2.98 and 8.92
    assert f.images_per_s == 5.0
    assert f.wait_p50 == 0.5
    # a single run is its own figures
    assert figures(runs[0]) == Figures.of_run(runs[0])


def test_a_slower_device_is_every_cost_scaled() -> None:
    device = Device((0.1, 0.15), job_s=0.02)
    slower = device.slower(1.5)
    assert slower.step_s_by_rows == pytest.approx((0.15, 0.225))
    assert slower.job_s == pytest.approx(0.03)
    assert slower.capacity(10) == pytest.approx(device.capacity(10) / 1.5)


def test_jobs_finishing_together_share_decode_calls() -> None:
    device = Device((1.0,), job_s=0.1, decode_s_by_images=(0.4, 0.6))  # decode_batch 2
    assert device.decode_s(0) == 0.0
    assert device.decode_s(1) == 0.4
    assert device.decode_s(2) == 0.6
    assert device.decode_s(5) == pytest.approx(0.6 + 0.6 + 0.4)  # calls of 2, 2 and 1
    assert device.finish_s(2) == pytest.approx(0.2 + 0.6)
    assert device.slower(2.0).decode_s_by_images == (0.8, 1.2)


def test_staggered_finishes_pay_lone_decodes_under_step_level() -> None:
    """Two jobs a step apart: batch-level decodes them in one call of two, step-level (which
    finishes them a step apart) in two calls of one, each dearer per image."""
    device = Device((1.0, 1.0), job_s=0.0, decode_s_by_images=(0.4, 0.6))
    step = ideal("step", [0.0, 0.5], device, STEPS, step_s=1.0)
    # the first finishes at 10 s + a lone decode; the second a step later + its own
    assert step.latency_s == pytest.approx([10.4, 10.4 + 1.0 + 0.4 - 0.5])
    batch = ideal("batch", [0.0, 0.0], device, STEPS, step_s=1.0)
    assert batch.latency_s == pytest.approx([10.6, 10.6])
