"""The wire contract: every message survives JSON, rejects bad input, never crashes a loop."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tests.unit.workers import examples
from workers import keys
from workers.errors import (
    WIRE_ERRORS,
    InvalidMessage,
    InvalidRequest,
    ModelNotFound,
    UnsupportedSchema,
    error_for_code,
)
from workers.protocol import (
    JOB_ADAPTER,
    BlobRef,
    Box,
    ChatJob,
    Done,
    EmbeddingReady,
    ErrorPayload,
    ImageGenerateJob,
    Reply,
    SamplingParams,
    TextDelta,
    Undecodable,
    encode,
    parse_job,
    parse_reply,
)


@pytest.mark.parametrize("name", sorted(examples.MESSAGES))
def test_json_round_trip(name: str) -> None:
    message = examples.MESSAGES[name]
    again = type(message).model_validate_json(encode(message))
    assert again == message


@pytest.mark.parametrize("name", sorted(examples.JOBS))
def test_jobs_parse_through_the_union(name: str) -> None:
    job = examples.JOBS[name]
    parsed = parse_job(encode(job))
    assert type(parsed) is type(job)
    assert parsed == job


@pytest.mark.parametrize("name", sorted(examples.EVENTS))
def test_replies_parse_through_the_union(name: str) -> None:
    reply = examples.reply(name)
    parsed = parse_reply(encode(reply))
    assert isinstance(parsed, Reply)
    assert type(parsed.event) is type(reply.event)
    assert parsed == reply


def _fields_set(model: BaseModel, seen: dict[type[BaseModel], set[str]]) -> None:
    seen[type(model)] |= model.model_fields_set
    for value in model.__dict__.values():
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, BaseModel):
                _fields_set(item, seen)


def test_examples_set_every_field_of_every_model() -> None:
    """So the goldens pin every field: a new field without an example fails here."""
    seen: dict[type[BaseModel], set[str]] = defaultdict(set)
    for message in examples.MESSAGES.values():
        _fields_set(message, seen)
    missing = {
        cls.__name__: sorted(set(cls.model_fields) - names)
        for cls, names in seen.items()
        if set(cls.model_fields) - names
    }
    assert missing == {}


def test_stream_of_each_job_kind() -> None:
    assert examples.CHAT_JOB.stream == keys.job_stream("llm", "seed-x-i")
    assert examples.IMAGE_EDIT_JOB.stream == "seedx:jobs:diffusion:seed-x-edit-detok"


def test_messages_are_frozen() -> None:
    with pytest.raises(ValidationError):
        examples.CHAT_JOB.priority = 1  # type: ignore[misc]


def _job_dict(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(encode(examples.IMAGE_GENERATE_JOB))
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("changes", "location"),
    [
        ({"surprise": 1}, "surprise"),
        ({"width": 513}, "width"),
        ({"output_format": "png", "output_compression": 50}, "image.generate"),
        ({"reply_to": "seedx:jobs:llm:m"}, "reply_to"),
        ({"model": "has:colon"}, "model"),
        ({"priority": 10}, "priority"),
        ({"embedding": {"key": "seedx:blob:x"}}, "embedding"),
        ({"kind": "image.upscale"}, "kind"),
    ],
)
def test_invalid_jobs_are_rejected(changes: dict[str, Any], location: str) -> None:
    with pytest.raises(ValidationError) as info:
        JOB_ADAPTER.validate_python(_job_dict(**changes))
    assert location in str(info.value)


def test_box_corners_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="x1 <= x2"):
        Box(x1=5, y1=0, x2=4, y2=1)


def test_blob_ref_tensor_fields_come_together() -> None:
    with pytest.raises(ValidationError, match="together"):
        BlobRef(key="seedx:blob:x", dtype="float16")
    with pytest.raises(ValidationError, match="tensor blob"):
        EmbeddingReady(embedding=BlobRef(key="seedx:blob:x"))


def test_unknown_schema_version_is_a_result_not_an_exception() -> None:
    data = _job_dict(schema_version=2, new_field="from the future")
    parsed = parse_job(json.dumps(data))
    assert isinstance(parsed, Undecodable)
    assert isinstance(parsed.error, UnsupportedSchema)
    assert parsed.error.code == "unsupported_schema"
    assert parsed.job_id == examples.ENVELOPE["job_id"]
    assert parsed.reply_to == examples.REPLY_TO
    assert "schema_version 2" in parsed.error.message


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'{"schema_version": 1, "kind": "chat"}', b"", b"\xff\xfe"],
)
def test_garbage_is_a_result_not_an_exception(raw: bytes) -> None:
    parsed = parse_job(raw)
    assert isinstance(parsed, Undecodable)
    assert isinstance(parsed.error, InvalidMessage)
    assert parsed.reply_to is None


def test_invalid_job_keeps_its_routing_header() -> None:
    parsed = parse_job(json.dumps(_job_dict(steps=0)))
    assert isinstance(parsed, Undecodable)
    assert parsed.error.code == "invalid_message"
    assert "steps" in parsed.error.message
    assert (parsed.job_id, parsed.reply_to) == ("job-0001", examples.REPLY_TO)


def test_header_fields_are_not_trusted_blindly() -> None:
    parsed = parse_job(json.dumps({"schema_version": 9, "job_id": "x y", "reply_to": "other"}))
    assert isinstance(parsed, Undecodable)
    assert (parsed.job_id, parsed.reply_to) == (None, None)


def test_unknown_reply_version_is_a_result() -> None:
    data = json.loads(encode(examples.reply("done")))
    data["schema_version"] = 3
    parsed = parse_reply(json.dumps(data))
    assert isinstance(parsed, Undecodable)
    assert parsed.error.code == "unsupported_schema"
    assert parsed.job_id == "job-0001"


def test_terminal_events() -> None:
    assert examples.reply("done").is_terminal
    assert examples.reply("failed").is_terminal
    assert not examples.reply("text_delta").is_terminal


def test_error_payload_maps_back_to_the_error_class() -> None:
    error = ErrorPayload(code="deadline_exceeded", message="late").to_error()
    assert (error.http_status, error.type) == (504, "server_error")
    unknown = ErrorPayload(code="engine_exploded", message="boom").to_error()
    assert (unknown.code, unknown.http_status, unknown.message) == ("worker_failed", 502, "boom")


@pytest.mark.parametrize(
    ("cls", "code", "status", "type_"),
    [
        (InvalidRequest, "invalid_request", 400, "invalid_request_error"),
        (ModelNotFound, "model_not_found", 404, "invalid_request_error"),
    ],
)
def test_client_errors_travel_as_themselves(
    cls: type[Any], code: str, status: int, type_: str
) -> None:
    """A worker's invalid_request must reach the client as a 400 naming the field, not a 502."""
    assert cls in WIRE_ERRORS
    assert (cls.code, cls.http_status, cls.type) == (code, status, type_)
    sent = ErrorPayload.from_error(cls("image is unreadable", param="messages"))
    received = ErrorPayload.model_validate_json(sent.model_dump_json()).to_error()
    assert type(received) is cls
    assert (received.message, received.param) == ("image is unreadable", "messages")
    assert type(error_for_code(code, "x")) is cls


def test_wire_codes_are_unique() -> None:
    codes = [cls.code for cls in WIRE_ERRORS]
    assert len(codes) == len(set(codes))


def test_unset_temperature_means_model_default() -> None:
    """Omitted on the wire (or null): None, the model's default (SEED-X: greedy); explicit values
    are kept as sent, 1.0 included (a client that asks for OpenAI's default gets it)."""
    assert SamplingParams().temperature is None
    assert SamplingParams.model_validate_json("{}").temperature is None
    assert SamplingParams.model_validate_json('{"temperature": null}').temperature is None
    for value in (0.0, 0.7, 1.0):
        assert SamplingParams(temperature=value).temperature == value
    with pytest.raises(ValidationError):
        SamplingParams(temperature=2.5)


def test_chat_job_defaults() -> None:
    job = ChatJob.model_validate(
        {k: v for k, v in json.loads(encode(examples.CHAT_JOB)).items() if k not in ("sampling",)}
    )
    assert job.sampling.n == 1
    assert job.sampling.seed is None


def test_defaults_are_filled_for_minimal_messages() -> None:
    job = ImageGenerateJob(
        job_id="j",
        request_id="r",
        model="m",
        deadline=2.0,
        created_at=1.0,
        reply_to=examples.REPLY_TO,
        embedding=examples.EMBEDDING,
    )
    assert (job.width, job.height, job.output_format, job.priority) == (1024, 1024, "png", 0)
    assert TextDelta(text="x").choice == 0
    assert Done().finish_reasons == ("stop",)
