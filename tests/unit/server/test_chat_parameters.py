"""Chat parameters that come from vLLM through the worker: logprobs, logit_bias, JSON answers;
and the audit of every OpenAI request field (honoured, accepted as a hint, or refused)."""

from __future__ import annotations

import json
import typing
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import completion_create_params

from tests.unit.server.fakes import FakeBackend
from workers.protocol import ChatJob, StructuredOutput

MESSAGES: Any = [{"role": "user", "content": "hi"}]


async def test_logprobs_come_back_in_openai_shape(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    answer = await oai.chat.completions.create(
        model="seed-x-i", messages=MESSAGES, logprobs=True, top_logprobs=2
    )
    assert isinstance(backend.jobs[0], ChatJob)
    assert backend.jobs[0].sampling.logprobs == 2
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert "".join(entry.token for entry in content) == answer.choices[0].message.content
    assert all(entry.logprob == -0.5 for entry in content)
    assert [t.token for t in content[0].top_logprobs] == ["alt0", "alt1"]
    assert content[0].bytes == list(content[0].token.encode())


async def test_logprobs_stream_with_their_text(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    stream = await oai.chat.completions.create(
        model="seed-x-i", messages=MESSAGES, logprobs=True, stream=True
    )
    pieces = []
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                assert choice.logprobs is not None
                assert choice.logprobs.content is not None
                assert "".join(e.token for e in choice.logprobs.content) == choice.delta.content
                assert all(e.top_logprobs == [] for e in choice.logprobs.content)
                pieces.append(choice.delta.content)
    assert "".join(pieces) == "".join(backend.llm_text)


async def test_no_logprobs_unless_asked(oai: openai.AsyncOpenAI, backend: FakeBackend) -> None:
    answer = await oai.chat.completions.create(model="seed-x-i", messages=MESSAGES)
    assert answer.choices[0].logprobs is None
    assert backend.jobs[0].sampling.logprobs is None  # type: ignore[union-attr]


async def test_logit_bias_and_json_schema_reach_the_worker(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    schema = {"type": "object", "properties": {"x1": {"type": "integer"}}, "required": ["x1"]}
    await oai.chat.completions.create(
        model="seed-x-i",
        messages=MESSAGES,
        logit_bias={"13": -100, "29871": 5},
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "box", "schema": schema, "strict": True},
        },
    )
    sampling = backend.jobs[0].sampling  # type: ignore[union-attr]
    assert sampling.logit_bias == {13: -100.0, 29871: 5.0}
    assert sampling.structured is not None
    assert sampling.structured.type == "json_schema"
    assert json.loads(sampling.structured.json_schema or "") == schema


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, StructuredOutput(type="json_object")),
        (
            {"type": "json_schema", "json_schema": {"name": "any"}},
            StructuredOutput(type="json_object"),
        ),
        ({"type": "text"}, None),
    ],
)
async def test_response_format_kinds(
    oai: openai.AsyncOpenAI, backend: FakeBackend, response_format: Any, expected: Any
) -> None:
    await oai.chat.completions.create(
        model="seed-x-i", messages=MESSAGES, response_format=response_format
    )
    assert backend.jobs[0].sampling.structured == expected  # type: ignore[union-attr]


# --- the audit: every field of the openai SDK's request type --------------------------------------
HONOURED = {
    "messages", "model", "stream", "stream_options", "n", "temperature", "top_p", "max_tokens",
    "max_completion_tokens", "stop", "seed", "presence_penalty", "frequency_penalty", "logprobs",
    "top_logprobs", "logit_bias", "response_format", "modalities", "user",
}  # fmt: skip
ACCEPTED_HINTS = {  # no effect on the answer; a value that would have one is refused
    "metadata": {"team": "a"},
    "safety_identifier": "user-1",
    "prompt_cache_key": "k",
    "prompt_cache_retention": "in_memory",
    "prompt_cache_options": {},
    "moderation": "auto",
    "store": False,
    "service_tier": "auto",
    "parallel_tool_calls": False,
    "tool_choice": "none",
    "function_call": "none",
}
REFUSED = {  # value -> 400 naming the field
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "functions": [{"name": "f"}],
    "audio": {"voice": "alloy", "format": "mp3"},
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {"search_context_size": "low"},
    "reasoning_effort": "high",
    "verbosity": "low",
    "store": True,
    "service_tier": "flex",
    "parallel_tool_calls": True,
    "tool_choice": "required",
    "function_call": "auto",
}


def test_the_audit_covers_every_field_of_the_sdk() -> None:
    fields = set(typing.get_type_hints(completion_create_params.CompletionCreateParamsBase))
    assert fields <= HONOURED | set(ACCEPTED_HINTS) | set(REFUSED), (
        f"new OpenAI fields to classify: {fields - HONOURED - set(ACCEPTED_HINTS) - set(REFUSED)}"
    )


@pytest.mark.parametrize(("name", "value"), sorted(ACCEPTED_HINTS.items()))
async def test_hints_are_accepted(client: httpx.AsyncClient, name: str, value: Any) -> None:
    body = {"model": "seed-x-i", "messages": MESSAGES, name: value}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("name", "value"), sorted(REFUSED.items()))
async def test_refused_fields_name_themselves(
    client: httpx.AsyncClient, name: str, value: Any
) -> None:
    body = {"model": "seed-x-i", "messages": MESSAGES, name: value}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == name
