"""``seedx bench diffusion --arrivals poisson`` end to end on the tiny checkpoint (issue 25).

Figures are not asserted (they belong to the bench's own runs, docs/performance.md); what is
asserted is that the command runs both policies over the trace on the real worker parts and
reports every row and goal (with the ideal at the replays' own speed, from the runner's step
times: the check that a replay ran on the machine its capacity was measured on), and that the
capacity the arrival rate is derived from is the one the ideal replay is built on (a mismatch
made the measured and ideal rows disagree by design).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.checkpoint import layout
from engine.checkpoint.detokenizer_folder import load_detokenizer
from engine.sampling import SamplingOptions
from workers.diffusion import bench
from workers.diffusion.bench import random_embeddings
from workers.diffusion.device_thread import DeviceThread
from workers.diffusion.load_bench import measure_capacity
from workers.diffusion.settings import DiffusionWorkerSettings


def test_the_load_bench_replays_both_policies_and_reports_the_goals(
    detok_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", str(detok_root), "--arrivals", "poisson", "--size", "64", "--steps", "2",
            "--jobs", "6", "--max-batch", "2", "--repeats", "2", "--load", "0.7"]  # fmt: skip
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    table = out.split("\npolicy ", 1)[1].splitlines()[1:7]
    labels = [line[:14].strip() for line in table]
    assert labels[0::3] == ["batch", "step"]
    assert labels[1::3] == ["batch ideal", "step ideal"]
    assert all(re.fullmatch(r"x\d\.\d\d ideal", label) for label in labels[2::3]), labels
    assert re.search(r"UNet steps of the replays .* batch \d\.\d\d, step \d\.\d\d", out), out
    assert "step vs batch: p99 e2e" in out, out
    assert "ideal: p99 e2e" in out, out
    assert "p99 e2e s of each repeat: batch " in out, out


def test_capacity_is_the_ideal_devices_capacity(detok_root: Path) -> None:
    with DeviceThread() as device:
        pipeline = device.call(
            load_detokenizer, layout.serving_detokenizer_dir(detok_root, "first_stage")
        )
        settings = DiffusionWorkerSettings(model=detok_root, max_batch=3, decode_batch=2)
        options = SamplingOptions(64, 64, 2)
        embeds = device.call(random_embeddings, pipeline, 3)
        capacity = device.call(measure_capacity, pipeline, embeds, options, settings)
    assert capacity.device.max_batch == 3
    assert capacity.step_s == capacity.device.step_s(3)
    assert capacity.device.job_s > 0  # preparing a job
    assert len(capacity.device.decode_s_by_images) == 2  # a decode call of 1 and of 2 images
    assert all(s > 0 for s in capacity.device.decode_s_by_images)
    assert capacity.images_per_s == capacity.device.capacity(options.num_inference_steps)
