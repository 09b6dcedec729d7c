"""Every answer carries an X-Request-ID; the request's log lines carry it as their trace_id."""

from __future__ import annotations

import logging

import httpx
import pytest

from server.main import JsonFormatter
from tests.unit.server.fakes import FakeBackend
from workers.logcontext import JobContextFilter

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def test_the_answer_and_its_jobs_share_the_request_id(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    assert response.json()["id"] == f"chatcmpl-{request_id}"
    (job,) = backend.jobs
    assert job.request_id == request_id
    assert job.trace_id == request_id


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/chat/completions", {"messages": []}, 400),
        ("/v1/chat/completions", {**CHAT, "model": "nobody-serves-this"}, 404),
        ("/nowhere", {}, 404),
    ],
)
async def test_errors_carry_a_request_id_too(
    client: httpx.AsyncClient, path: str, body: dict[str, object], status: int
) -> None:
    first = await client.post(path, json=body)
    second = await client.post(path, json=body)
    assert first.status_code == second.status_code == status
    assert len(first.headers["X-Request-ID"]) >= 16
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


async def test_log_lines_of_a_request_carry_its_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(JobContextFilter())
    with caplog.at_level(logging.INFO, logger="server.metrics"):
        response = await client.post("/v1/chat/completions", json=CHAT)
    request_id = response.headers["X-Request-ID"]
    (line,) = [r for r in caplog.records if r.name == "server.metrics"]
    assert line.trace_id == request_id  # type: ignore[attr-defined]
    assert f'"trace_id": "{request_id}"' in JsonFormatter().format(line)
