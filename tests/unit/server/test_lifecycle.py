"""Deadlines, worker failures, and client disconnects (the job is cancelled in the worker)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from server.app import create_app
from tests.unit.server.conftest import API_KEY, make_settings
from tests.unit.server.fakes import FakeBackend, diffusion_script
from workers.errors import DeadlineExceeded
from workers.protocol import ErrorPayload, Event, Failed, Job, Started, TextDelta

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def failing_llm(job: Job, backend: FakeBackend) -> AsyncIterator[Event]:
    yield Started(worker_id="w", queue_wait_s=0)
    yield TextDelta(text="partial")
    yield Failed(error=ErrorPayload(code="worker_failed", message="engine died"))


async def stalled_llm(job: Job, backend: FakeBackend) -> AsyncIterator[Event]:
    yield Started(worker_id="w", queue_wait_s=0)
    await asyncio.sleep(0.05)
    raise DeadlineExceeded("job did not finish before its deadline")
    yield  # pragma: no cover


async def test_worker_failure_is_502(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    backend.scripts["llm"] = failing_llm
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "worker_failed"


async def test_worker_invalid_request_is_400(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    async def refusing(job: Job, backend: FakeBackend) -> AsyncIterator[Event]:
        yield Failed(
            error=ErrorPayload(code="invalid_request", message="too long", param="messages")
        )

    backend.scripts["llm"] = refusing
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


async def test_failure_mid_stream_is_one_error_frame_then_done(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.scripts["llm"] = failing_llm
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    frames = [f for f in response.text.strip().split("\n\n")]
    assert frames[-1] == "data: [DONE]"
    error = json.loads(frames[-2].removeprefix("data: "))
    assert error["error"]["code"] == "worker_failed"
    assert (
        json.loads(frames[-3].removeprefix("data: "))["choices"][0]["delta"]["content"] == "partial"
    )


async def test_image_failure_mid_stream(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    async def broken(job: Job, backend: FakeBackend) -> AsyncIterator[Event]:
        yield Failed(error=ErrorPayload(code="worker_failed", message="oom"))

    backend.llm_images = 1
    backend.scripts["diffusion"] = broken
    response = await client.post(
        "/v1/images/generations", json={"prompt": "x", "stream": True, "partial_images": 1}
    )
    frames = response.text.strip().split("\n\n")
    assert frames[-1] == "data: [DONE]"
    assert '"worker_failed"' in frames[-2]


async def test_deadline_is_504_and_the_job_is_cancelled(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.scripts["llm"] = stalled_llm
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 504
    await asyncio.sleep(0.01)
    assert backend.cancelled == [backend.jobs[0].job_id]


class ASGICall:
    """Drives the app directly, so the test decides when the client disconnects."""

    def __init__(self, app: FastAPI, path: str, body: dict[str, Any]) -> None:
        self.app = app
        self.path = path
        self.body = json.dumps(body).encode()
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self._body_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def run(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"authorization", f"Bearer {API_KEY}".encode()),
                (b"content-type", b"application/json"),
                (b"host", b"gateway.test"),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("gateway.test", 80),
        }
        await self.app(scope, self.receive, self.send)

    def body_text(self) -> str:
        return b"".join(
            m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"
        ).decode()


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    """Wait for ``condition()`` (a loaded CPU or the real transport is not instant)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.01)


async def leave_mid_answer(app: FastAPI, path: str, body: dict[str, Any], backend: Any) -> ASGICall:
    """Starts ``body`` on ``path``, waits until its job is submitted and the answer has begun,
    then the client leaves; asserts the job was running, uncancelled, until then, and that the
    leaving cancelled it (and only it)."""
    call = ASGICall(app, path, body)
    task = asyncio.create_task(call.run())
    await _until(lambda: backend.jobs and (call.sent or not body.get("stream")))
    await asyncio.sleep(0.1)  # a few tokens in
    assert backend.cancelled == []
    call.gone.set()
    await asyncio.wait_for(task, 10)
    await _until(lambda: backend.cancelled)
    assert backend.cancelled == [backend.jobs[0].job_id]
    return call


@pytest.fixture
async def slow_app(backend: FakeBackend) -> AsyncIterator[FastAPI]:
    backend.token_delay_s = 0.05
    backend.llm_text = tuple(f"t{i} " for i in range(100))
    app = create_app(make_settings(), backend)
    async with app.router.lifespan_context(app):
        yield app


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels_the_job(
    slow_app: FastAPI, backend: FakeBackend, stream: bool
) -> None:
    call = await leave_mid_answer(
        slow_app, "/v1/chat/completions", {**CHAT, "stream": stream}, backend
    )
    if stream:
        assert "t0" in call.body_text()
        assert "[DONE]" not in call.body_text()


async def test_disconnect_during_images_cancels_every_job(backend: FakeBackend) -> None:
    backend.llm_images = 1
    backend.image_delay_s = 5
    app = create_app(make_settings(), backend)
    async with app.router.lifespan_context(app):
        call = ASGICall(app, "/v1/images/generations", {"prompt": "x", "n": 2})
        task = asyncio.create_task(call.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(backend.jobs_of("image.generate")) == 2:
                break
        call.gone.set()
        await asyncio.wait_for(task, 2)
        await asyncio.sleep(0.02)
    cancelled = set(backend.cancelled)
    assert {j.job_id for j in backend.jobs_of("image.generate")} <= cancelled
    assert diffusion_script  # the real fake was used for the diffusion half
