"""The LLM job handler without vLLM: wire job -> request, events -> wire, errors, metrics.

A scripted engine (the handler's side of :class:`~workers.llm.engine.SeedXLLMEngine`) and an
in-memory blob store stand in for vLLM and Redis; the tokenizer and prompt builder are real.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client import REGISTRY

from engine.anyres import GlobalViewImage
from engine.image_rules import ImageRules
from engine.prompts import ImageInput, Turn, build_prompt, chat_template
from engine.tokenizer import SeedXTokenizer
from workers import protocol as wire
from workers.errors import InvalidRequest
from workers.handler import EngineDied, JobContext
from workers.llm import types as llm
from workers.llm.handler import LLMJobHandler, sampling_options
from workers.llm.metrics import LLMMetrics, SchedulerStatsLogger
from workers.metrics_http import LoopBeat, metrics_app

RULES = ImageRules(("1x1", "1x2", "1x3", "2x1", "3x1", "1x4", "4x1", "2x2"), 448)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> SeedXTokenizer:
    from engine.checkpoint.tokenizer_files import write_tokenizer_folder

    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    write_tokenizer_folder(folder)
    return SeedXTokenizer(folder)


class MemoryBlobs:
    """The two BlobStore calls the handler makes."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.tensors: list[np.ndarray] = []

    def add(self, data: bytes) -> wire.BlobRef:
        key = f"seedx:blob:b{len(self.data)}"
        self.data[key] = data
        return wire.BlobRef(key=key)

    async def get(self, ref: wire.BlobRef) -> bytes:
        return self.data[ref.key]

    async def put_tensor(self, array: np.ndarray, owner: str) -> wire.BlobRef:
        self.tensors.append(array)
        shape = tuple(array.shape)
        return wire.BlobRef(key=f"seedx:blob:t{len(self.tensors)}", dtype="float16", shape=shape)


class ScriptedEngine:
    """Yields a fixed answer: two token batches, one image, usage; or raises mid-way."""

    def __init__(self, tokenizer: SeedXTokenizer, model: str, fail: bool = False) -> None:
        self.tokenizer, self.model_name, self.image_rules = tokenizer, model, RULES
        self.max_model_len, self.fail = 2048, fail
        self.alive = True
        self.requests: list[llm.LLMRequest] = []

    def check(self, request: llm.LLMRequest) -> None:
        if len(request.prompt_ids) >= self.max_model_len:
            raise ValueError("prompt too long")

    async def abort(self, request_id: str) -> None:
        pass

    async def generate(
        self, request: llm.LLMRequest, observer: llm.TokenObserver | None = None
    ) -> AsyncIterator[llm.Event]:
        self.requests.append(request)
        assert observer is not None
        observer.on_tokens("seg-0", 1)
        yield llm.TextDelta(0, "Here")
        time.sleep(0.002)
        observer.on_tokens("seg-0", 2)
        yield llm.TextDelta(0, " it is.")
        if self.fail:
            raise RuntimeError("engine core died")
        if not self.alive:
            raise RuntimeError("EngineDeadError")  # what vLLM raises once its core is gone
        yield llm.ImageEmbedding(0, 0, torch.ones(64, 8), torch.zeros(64, 4), 3)
        yield llm.ChoiceFinished(0, "stop", tuple(range(70)), "Here it is.")
        yield llm.Usage(len(request.prompt_ids), 70, 1)


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


def _job(messages: tuple[wire.ChatMessage, ...], **changes: Any) -> wire.ChatJob:
    values: dict[str, Any] = {
        "job_id": wire.new_id(),
        "request_id": wire.new_id(),
        "model": "seed-x-i",
        "deadline": time.time() + 60,
        "created_at": time.time(),
        "reply_to": "seedx:replies:gw-test",
        "messages": messages,
        "allow_image_output": True,
        **changes,
    }
    return wire.ChatJob(**values)


def _user(*parts: wire.TextPart | wire.ImagePart) -> wire.ChatMessage:
    return wire.ChatMessage(role="user", content=parts)


async def _run(handler: LLMJobHandler, job: wire.ChatJob, blobs: MemoryBlobs) -> list[Any]:
    ctx = JobContext(job, 1, "worker-test", blobs)  # type: ignore[arg-type]
    return [event async for event in handler(job, ctx)]


def _value(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


METERED = (
    "seedx_llm_prompt_tokens_total",
    "seedx_llm_generation_tokens_total",
    "seedx_llm_generated_images_total",
    "seedx_llm_time_to_first_token_seconds_count",
    "seedx_llm_inter_token_latency_seconds_count",
    "seedx_llm_invalid_requests_total",
    "seedx_llm_engine_errors_total",
)


def _snapshot(model: str) -> dict[str, float]:
    return {name: _value(name, model) for name in METERED}


async def test_job_moves_the_llm_metrics(tokenizer: SeedXTokenizer) -> None:
    model = "metrics-ok"
    handler = LLMJobHandler(ScriptedEngine(tokenizer, "seed-x-i"), LLMMetrics(model))
    before = _snapshot(model)
    events = await _run(handler, _job((_user(wire.TextPart(text="Draw a cat")),)), MemoryBlobs())
    assert [e.type for e in events] == [
        "text.delta",
        "text.delta",
        "embedding.ready",
        "usage",
        "done",
    ]
    after = _snapshot(model)
    delta = {name: after[name] - before[name] for name in METERED}
    usage = events[3]
    assert delta["seedx_llm_prompt_tokens_total"] == usage.prompt_tokens > 0
    assert delta["seedx_llm_generation_tokens_total"] == 70
    assert delta["seedx_llm_generated_images_total"] == 1
    assert delta["seedx_llm_time_to_first_token_seconds_count"] == 1
    assert delta["seedx_llm_inter_token_latency_seconds_count"] == 2  # 2nd batch: 2 tokens
    assert delta["seedx_llm_invalid_requests_total"] == 0
    assert delta["seedx_llm_engine_errors_total"] == 0


async def test_unset_temperature_decodes_greedily(tokenizer: SeedXTokenizer) -> None:
    engine = ScriptedEngine(tokenizer, "seed-x-i")
    handler = LLMJobHandler(engine, LLMMetrics("metrics-greedy"))
    await _run(handler, _job((_user(wire.TextPart(text="Hi")),)), MemoryBlobs())
    explicit = _job(
        (_user(wire.TextPart(text="Hi")),), sampling=wire.SamplingParams(temperature=0.7)
    )
    await _run(handler, explicit, MemoryBlobs())
    assert [r.sampling.temperature for r in engine.requests] == [0.0, 0.7]
    assert sampling_options(wire.SamplingParams(temperature=1.0)).temperature == 1.0


def test_several_choices_sample_unless_told_otherwise() -> None:
    """n > 1 with no temperature: greedy would give n copies of one answer."""
    assert sampling_options(wire.SamplingParams(n=2)).temperature == 1.0
    assert sampling_options(wire.SamplingParams(n=2, temperature=0.0)).temperature == 0.0
    assert sampling_options(wire.SamplingParams(n=1)).temperature == 0.0


async def test_unreadable_image_is_an_invalid_request(tokenizer: SeedXTokenizer) -> None:
    model = "metrics-invalid"
    handler = LLMJobHandler(ScriptedEngine(tokenizer, "seed-x-i"), LLMMetrics(model))
    blobs = MemoryBlobs()
    bad = wire.ImagePart(image=blobs.add(b"not an image"), width=4, height=4)
    before = _value("seedx_llm_invalid_requests_total", model)
    events = await _run(handler, _job((_user(bad, wire.TextPart(text="x")),)), blobs)
    assert len(events) == 1
    assert isinstance(events[0], wire.Failed)
    error = events[0].error.to_error()
    assert isinstance(error, InvalidRequest)
    assert (error.code, error.http_status) == ("invalid_request", 400)
    assert error.param == "messages[0].content"
    assert _value("seedx_llm_invalid_requests_total", model) == before + 1


async def test_engine_failure_is_counted_and_raised(tokenizer: SeedXTokenizer) -> None:
    model = "metrics-error"
    handler = LLMJobHandler(ScriptedEngine(tokenizer, "seed-x-i", fail=True), LLMMetrics(model))
    before = _value("seedx_llm_engine_errors_total", model)
    with pytest.raises(RuntimeError, match="engine core died"):
        await _run(handler, _job((_user(wire.TextPart(text="Hi")),)), MemoryBlobs())
    assert _value("seedx_llm_engine_errors_total", model) == before + 1


async def test_an_error_of_a_dead_engine_hands_the_job_back(tokenizer: SeedXTokenizer) -> None:
    """vLLM's engine core died (issue 21 item 4): EngineDied, so the worker leaves and the job
    is taken over by a restarted one, instead of a Failed event (502) for the request."""
    engine = ScriptedEngine(tokenizer, "seed-x-i")
    engine.alive = False
    handler = LLMJobHandler(engine, LLMMetrics("metrics-dead"))
    with pytest.raises(EngineDied, match="engine core died"):
        await _run(handler, _job((_user(wire.TextPart(text="Hi")),)), MemoryBlobs())


async def test_assistant_image_is_one_global_view_block(tokenizer: SeedXTokenizer) -> None:
    """A generated image sent back in the history: ``<img>`` + 64 + ``</img>`` after the
    assistant's text, handed to vLLM as its global view alone; user images keep their tiles."""
    engine = ScriptedEngine(tokenizer, "seed-x-i")
    handler = LLMJobHandler(engine, LLMMetrics("metrics-history"))
    blobs = MemoryBlobs()
    user_png, generated_png = _png(1344, 896), _png(1024, 1024)
    messages = (
        _user(
            wire.ImagePart(image=blobs.add(user_png), width=1344, height=896),
            wire.TextPart(text="Draw this as a painting."),
        ),
        wire.ChatMessage(
            role="assistant",
            content=(
                wire.TextPart(text="Here's an image."),
                wire.ImagePart(image=blobs.add(generated_png), width=1024, height=1024),
            ),
        ),
        _user(wire.TextPart(text="Make it blue.")),
    )
    events = await _run(handler, _job(messages), blobs)
    assert events[-1].type == "done"
    request = engine.requests[0]
    turns = [
        Turn("user", "Draw this as a painting.", (ImageInput(3),)),  # 2x1 grid + global view
        Turn("assistant", "Here's an image.", (ImageInput(1),)),
        Turn("user", "Make it blue."),
    ]
    assert request.prompt_ids == build_prompt(tokenizer, chat_template("seed-x-i", turns)).ids
    user_image, generated = request.images
    assert isinstance(user_image, Image.Image)
    assert user_image.size == (1344, 896)
    assert isinstance(generated, GlobalViewImage)
    assert generated.size == (1024, 1024)
    assert request.box_image_size == (1344, 896)


async def test_system_message_image_is_refused(tokenizer: SeedXTokenizer) -> None:
    handler = LLMJobHandler(ScriptedEngine(tokenizer, "seed-x-i"), LLMMetrics("metrics-sys"))
    blobs = MemoryBlobs()
    system = wire.ChatMessage(
        role="system",
        content=(wire.ImagePart(image=blobs.add(_png(8, 8)), width=8, height=8),),
    )
    events = await _run(handler, _job((system, _user(wire.TextPart(text="Hi")))), blobs)
    assert isinstance(events[0], wire.Failed)
    assert (events[0].error.code, events[0].error.param) == ("invalid_request", "messages")


def test_scheduler_stats_feed_running_and_waiting() -> None:
    class Stats:
        num_running_reqs = 5
        num_waiting_reqs = 2

    logger = SchedulerStatsLogger.factory("metrics-sched")(None, 0)
    logger.record(Stats(), None)
    logger.record(None, None)  # iteration-only records leave the gauges alone
    assert _value("seedx_llm_requests_running", "metrics-sched") == 5
    assert _value("seedx_llm_requests_waiting", "metrics-sched") == 2


@pytest.mark.parametrize(("alive", "status"), [(True, "200 OK"), (False, "503")])
def test_metrics_app_serves_liveness_and_metrics(alive: bool, status: str) -> None:
    app = metrics_app(lambda: alive)
    seen: list[str] = []

    def start_response(code: str, headers: list[tuple[str, str]]) -> None:
        seen.append(code)

    app({"PATH_INFO": "/healthz", "REQUEST_METHOD": "GET"}, start_response)
    assert seen[-1].startswith(status)
    environ = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    body = b"".join(app(environ, start_response))
    assert seen[-1].startswith("200")
    assert b"seedx_llm_time_to_first_token_seconds" in body


def test_settings_metrics_port_default_and_off(tmp_path: Path) -> None:
    from workers.llm.worker import LLMWorkerSettings

    assert LLMWorkerSettings(model=tmp_path).metrics_port == 9101
    assert LLMWorkerSettings(model=tmp_path, metrics_port=0).metrics_port == 0


async def test_loop_beat_goes_stale_when_the_loop_stops_beating() -> None:
    beat = LoopBeat(interval_s=0.01, stale_s=0.05)
    beat.start()
    await asyncio.sleep(0.03)
    assert beat.alive()
    await beat.stop()
    await asyncio.sleep(0.08)
    assert not beat.alive()


@pytest.mark.parametrize("module", ["workers.llm.worker", "workers.diffusion.worker"])
async def test_workers_bind_their_metrics_port_before_loading(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port is the worker's before its model loads (a sibling's vLLM picks free ports while
    it loads); /healthz says 503 until the loaded worker hands over its real liveness check."""
    import importlib
    import socket

    import httpx

    worker = importlib.import_module(module)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    seen: list[int] = []

    async def loading(settings: object, liveness: Any) -> None:
        async with httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{port}/healthz"
            seen.append((await client.get(url)).status_code)
            liveness.set(lambda: True)
            seen.append((await client.get(url)).status_code)

    monkeypatch.setattr(worker, "_serve", loading)
    if module.endswith("llm.worker"):
        settings = worker.LLMWorkerSettings(
            model=tmp_path, metrics_port=port, metrics_host="127.0.0.1"
        )
    else:
        settings = worker.DiffusionWorkerSettings(
            model=tmp_path, metrics_port=port, metrics_host="127.0.0.1"
        )
    await worker.serve(settings)
    assert seen == [503, 200]
