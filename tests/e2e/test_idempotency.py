"""``Idempotency-Key`` through the real stack (gateway, Redis, vLLM worker, diffusion worker on
the tiny checkpoint): a client retry with the key starts no second job.

Jobs are counted where they are queued: ``entries-added`` of each job stream (``XINFO STREAM``)
counts every job ever enqueued, trimming does not lower it; the gateway's
``seedx_gateway_idempotent_requests_total`` says how each retry was answered.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import KEY, OTHER_KEY, Stack
from workers import keys

TIMEOUT_S = 300.0  # a hang guard: the requests below take seconds
CHAT = "/v1/chat/completions"
QUEUES = {
    "llm": keys.job_stream("llm", "seed-x-i"),
    "diffusion": keys.job_stream("diffusion", "first_stage"),
}


@pytest.fixture
def jobs(e2e_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(e2e_redis_url)
    try:
        yield client
    finally:
        client.close()


def queued(client: redis.Redis) -> dict[str, int]:
    """Jobs ever enqueued per stage (seed-x-i and first_stage)."""
    counts = {}
    for stage, stream in QUEUES.items():
        counts[stage] = (
            int(client.xinfo_stream(stream)["entries-added"]) if client.exists(stream) else 0
        )
    return counts


def since(before: dict[str, int], client: redis.Redis) -> dict[str, int]:
    after = queued(client)
    return {stage: after[stage] - before[stage] for stage in after}


def post(
    stack: Stack, path: str, body: dict[str, Any], key: str, api_key: str = KEY
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key}
    return httpx.post(f"{stack.base_url}{path}", json=body, headers=headers, timeout=TIMEOUT_S)


def outcome_counts(stack: Stack, route: str) -> dict[str, float]:
    text = httpx.get(
        f"{stack.base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ).text
    counts = {"started": 0.0, "joined": 0.0, "replayed": 0.0, "conflict": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "seedx_gateway_idempotent_requests_total"
                and sample.labels["route"] == route
            ):
                counts[sample.labels["outcome"]] = sample.value
    return counts


def fresh_key() -> str:
    return f"e2e-{uuid.uuid4()}"


def _chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": "seed-x-i",
        "messages": [{"role": "user", "content": "Describe a lighthouse."}],
        "max_tokens": 12,
        **extra,
    }


def test_chat_and_stream_retried_give_the_same_answer_from_one_job(
    stack: Stack, jobs: redis.Redis
) -> None:
    before, key = queued(jobs), fresh_key()
    first = post(stack, CHAT, _chat(), key)
    retry = post(stack, CHAT, _chat(), key)
    assert first.status_code == 200, first.text
    assert retry.content == first.content
    assert retry.headers["x-request-id"] == first.headers["x-request-id"]
    assert since(before, jobs) == {"llm": 1, "diffusion": 0}

    before, key = queued(jobs), fresh_key()
    first = post(stack, CHAT, _chat(stream=True), key)
    retry = post(stack, CHAT, _chat(stream=True), key)
    assert first.text.rstrip().endswith("data: [DONE]")
    assert retry.content == first.content
    assert since(before, jobs) == {"llm": 1, "diffusion": 0}


def test_images_n2_and_responses_retried_start_no_second_job(
    stack: Stack, jobs: redis.Redis
) -> None:
    body = {"model": "seed-x-i", "prompt": "a red cube", "n": 2, "size": "64x64", "steps": 2}
    before, key = queued(jobs), fresh_key()
    first = post(stack, "/v1/images/generations", body, key)
    retry = post(stack, "/v1/images/generations", body, key)
    assert first.status_code == 200, first.text
    assert retry.content == first.content
    for item in first.json()["data"]:
        assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size == (64, 64)
    assert since(before, jobs) == {"llm": 1, "diffusion": 2}

    before, key = queued(jobs), fresh_key()
    asked = {"model": "seed-x-i", "input": "Name a colour.", "max_output_tokens": 8}
    first = post(stack, "/v1/responses", asked, key)
    retry = post(stack, "/v1/responses", asked, key)
    assert first.status_code == 200, first.text
    assert retry.json()["id"] == first.json()["id"]
    assert retry.content == first.content
    assert since(before, jobs) == {"llm": 1, "diffusion": 0}


class FirstClient:
    """A long streamed chat whose client leaves after its first chunk (a dropped connection)."""

    def __init__(self, stack: Stack, body: dict[str, Any], key: str) -> None:
        self.first_chunk = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(stack, body, key), daemon=True)
        self._thread.start()

    def _read(self, stack: Stack, body: dict[str, Any], key: str) -> None:
        headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": key}
        try:
            with httpx.stream(
                "POST", f"{stack.base_url}{CHAT}", json=body, headers=headers, timeout=TIMEOUT_S
            ) as response:
                for _ in response.iter_bytes():
                    break
        except BaseException as exc:  # reported by the test, never swallowed
            self.error = exc
        finally:
            self.first_chunk.set()

    def join(self) -> None:
        self._thread.join(TIMEOUT_S)


def test_a_retry_while_the_first_request_runs_joins_it_and_its_client_leaving_cancels_nothing(
    stack: Stack, jobs: redis.Redis
) -> None:
    long_chat = _chat(
        stream=True,
        max_tokens=400,
        temperature=0,
        logit_bias={"2": -100},  # no EOS: it runs all 400 tokens
    )
    before, key = queued(jobs), fresh_key()
    outcomes = outcome_counts(stack, CHAT)
    first = FirstClient(stack, long_chat, key)
    assert first.first_chunk.wait(TIMEOUT_S)
    first.join()
    assert first.error is None
    retry = post(stack, CHAT, long_chat, key)  # the first request is still generating
    again = post(stack, CHAT, long_chat, key)  # after it finished
    assert retry.status_code == 200, retry.text
    assert again.content == retry.content
    frames = [
        json.loads(line[6:]) for line in retry.text.splitlines() if line.startswith("data: {")
    ]
    assert frames[-1]["choices"][0]["finish_reason"] == "length"  # ran to the end: not cancelled
    assert since(before, jobs) == {"llm": 1, "diffusion": 0}
    after = outcome_counts(stack, CHAT)
    grew = {k: after[k] - outcomes[k] for k in after if after[k] != outcomes[k]}
    assert grew == {"started": 1, "joined": 1, "replayed": 1}


def test_another_body_is_422_and_another_api_key_is_independent(
    stack: Stack, jobs: redis.Redis
) -> None:
    before, key = queued(jobs), fresh_key()
    first = post(stack, CHAT, _chat(), key)
    assert first.status_code == 200, first.text
    reused = post(stack, CHAT, _chat(max_tokens=5), key)
    assert reused.status_code == 422
    assert reused.json()["error"]["param"] == "Idempotency-Key"
    assert since(before, jobs) == {"llm": 1, "diffusion": 0}
    other = post(stack, CHAT, _chat(max_tokens=5), key, api_key=OTHER_KEY)
    assert other.status_code == 200, other.text
    assert other.json()["id"] != first.json()["id"]
    assert since(before, jobs) == {"llm": 2, "diffusion": 0}
