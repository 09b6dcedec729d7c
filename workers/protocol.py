"""The wire contract between the gateway and the workers, schema version 1.

Every message is a frozen pydantic model that rejects unknown fields and carries
``schema_version``. Jobs are a union tagged by ``kind``; the events a worker sends back are a union
tagged by ``type``, wrapped in a :class:`Reply` envelope that adds the routing and ordering fields
(``job_id``, ``attempt``, ``seq``), so a handler yields bare events and the transport stamps them.

Versioning follows TGI's ``proto/v3``: an optional field may be added inside v1; a breaking
change goes to a new module beside this one and workers accept both during a rollout. A message
with a version this process does not speak is not an exception: :func:`parse_job` returns an
:class:`Undecodable` that the worker answers with ``Failed(code="unsupported_schema")``.
``workers/golden/v1_*.json`` freezes the JSON of every message; ``tests/unit/workers`` compares.

Binary data never travels inline: images and tensors are :class:`BlobRef` keys (see
``workers.blobs``). Messages are JSON (``model_dump_json``), never pickle.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from workers import keys
from workers.errors import InvalidMessage, TransportError, UnsupportedSchema, error_for_code

SCHEMA_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = frozenset({SCHEMA_VERSION})

_ID = r"^[A-Za-z0-9_.-]{1,128}$"
_MODEL = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"
_REPLY_TO = rf"^{keys.REPLY_STREAM_PREFIX}[A-Za-z0-9_.-]{{1,128}}$"
_BLOB_KEY = rf"^{keys.BLOB_PREFIX}[A-Za-z0-9_.:-]{{1,200}}$"

Id = Annotated[str, Field(pattern=_ID)]
TensorDType = Literal["float16", "float32", "float64", "uint8", "int8", "int32", "int64", "bool"]
ImageFormat = Literal["png", "jpeg", "webp"]
FinishReason = Literal["stop", "length", "content_filter"]


def new_id() -> str:
    """A fresh random id for jobs, requests and blobs (32 hex chars)."""
    return uuid.uuid4().hex


class _Part(BaseModel):
    """A frozen, strict building block of a message."""

    # Keys repeat, values (ids, text) rarely do: caching values would only fill pydantic-core's
    # 16k-entry string cache with ids, which reads as memory growth in a soak.
    model_config = ConfigDict(extra="forbid", frozen=True, cache_strings="keys")


class _Message(_Part):
    """A top-level message: the unit that is versioned."""

    schema_version: Literal[1] = SCHEMA_VERSION


# --- shared parts -----------------------------------------------------------------------------
class BlobRef(_Part):
    """A reference to bytes stored in Redis with a TTL; tensors also record dtype/shape/checksum.

    A tensor blob holds raw little-endian bytes; the reader checks size and checksum against this
    reference before trusting them (``workers.blobs.BlobStore.get_tensor``).
    """

    key: str = Field(pattern=_BLOB_KEY)
    nbytes: int | None = Field(default=None, ge=0)
    content_type: str | None = Field(default=None, max_length=100, examples=["image/png"])
    dtype: TensorDType | None = None
    shape: tuple[Annotated[int, Field(ge=0)], ...] | None = None
    checksum: str | None = Field(default=None, max_length=80, examples=["crc32:1a2b3c4d"])

    @model_validator(mode="after")
    def _tensor_fields_together(self) -> BlobRef:
        if (self.dtype is None) != (self.shape is None):
            raise ValueError("dtype and shape must be given together (tensor blob) or not at all")
        return self

    @property
    def is_tensor(self) -> bool:
        """Whether this blob holds a tensor (dtype and shape are recorded)."""
        return self.dtype is not None


class ErrorPayload(_Part):
    """An error as the worker reports it; the gateway turns it into the OpenAI error body."""

    code: str = Field(max_length=64)
    message: str = Field(max_length=4096)
    param: str | None = Field(default=None, max_length=128)
    retryable: bool = False

    @classmethod
    def from_error(cls, error: TransportError) -> ErrorPayload:
        """The payload of a transport error (its class decides code and retryability)."""
        return cls(
            code=error.code,
            message=error.message[:4096],
            param=error.param,
            retryable=error.retryable,
        )

    def to_error(self) -> TransportError:
        """The exception the gateway raises for this payload (unknown codes: WorkerFailed)."""
        return error_for_code(self.code, self.message, param=self.param)


# --- jobs -------------------------------------------------------------------------------------
class _JobEnvelope(_Message):
    """Fields every job carries: identity, routing, deadline, and the stream to answer on."""

    stage: ClassVar[keys.Stage]

    job_id: Id
    request_id: Id
    trace_id: str = Field(default="", max_length=64)
    model: str = Field(pattern=_MODEL, description="Model id; selects the job stream.")
    deadline: float = Field(gt=0, description="Absolute epoch seconds; dropped if passed.")
    created_at: float = Field(gt=0, description="Epoch seconds at enqueue; for queue-wait time.")
    reply_to: str = Field(pattern=_REPLY_TO, description="The gateway replica's reply stream.")
    priority: int = Field(
        default=0, ge=0, le=9, description="0-9, higher first among jobs a worker holds at once."
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)

    @property
    def stream(self) -> str:
        """The job stream this job is enqueued to."""
        return keys.job_stream(self.stage, self.model)


class TextPart(_Part):
    """Text content of a chat message."""

    type: Literal["text"] = "text"
    text: str


class ImagePart(_Part):
    """An input image, stored as a blob; width/height are the original pixel size."""

    type: Literal["image"] = "image"
    image: BlobRef
    width: int = Field(gt=0)
    height: int = Field(gt=0)


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Part):
    """One turn of the conversation."""

    role: Literal["system", "user", "assistant"]
    content: tuple[ContentPart, ...] = Field(min_length=1)


class StructuredOutput(_Part):
    """The answer must be JSON: any object, or one matching ``json_schema`` (vLLM's structured
    outputs). The schema travels as JSON text: the worker hands it to vLLM unchanged."""

    type: Literal["json_object", "json_schema"]
    json_schema: str | None = Field(default=None, max_length=65_536)

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> StructuredOutput:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is set exactly when type is json_schema")
        return self


def _unset(value: object) -> bool:
    return value is None


class SamplingParams(_Part):
    """Decoding parameters, validated at the gateway and trusted by the worker.

    ``temperature`` left unset (None) means *the model's default*, which for SEED-X is greedy
    decoding (spec §5.5: the original decodes with ``do_sample=False``). OpenAI's 1.0 is the
    default of OpenAI's models, not of this one: an API call that omits ``temperature`` must get
    what SEED-X was evaluated with, as vLLM's server fills omitted sampling fields from the
    model's generation config. The gateway therefore forwards an omitted temperature as None,
    and an explicit value (0 included) is honoured. Rollout: a v1 worker older than this field's
    widening rejects ``null``; upgrade workers before gateways.
    """

    temperature: float | None = Field(
        default=None, ge=0, le=2, description="None: the model's default (SEED-X: greedy)."
    )
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=512, ge=1, le=32_768)
    stop: tuple[Annotated[str, Field(min_length=1)], ...] = Field(default=(), max_length=4)
    seed: int | None = Field(
        default=None, description="Set it: a reclaimed job then replays the same stream."
    )
    n: int = Field(default=1, ge=1, le=16)
    # OpenAI's penalties, applied by vLLM to the tokens generated so far in the current segment
    # (a segment ends at each generated image: workers.llm.choice). Added compatibly in v1: an
    # older worker rejects a job that sets them, so upgrade workers before gateways.
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    # Added compatibly in v1 and left out of the JSON while unset, so a job that does not use
    # them still reads on an older worker (and the goldens do not move).
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=20,
        exclude_if=_unset,
        description="None: no logprobs; k: each sampled token's logprob and the k likeliest.",
    )
    logit_bias: dict[int, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=1024, exclude_if=_unset, description="Token id -> bias."
    )
    structured: StructuredOutput | None = Field(default=None, exclude_if=_unset)


class ChatJob(_JobEnvelope):
    """An LLM job: chat (text, boxes, images out) or the LLM half of image generate/edit."""

    stage: ClassVar[keys.Stage] = "llm"

    kind: Literal["chat"] = "chat"
    task: Literal["chat", "generate", "edit"] = Field(
        default="chat", description="Prompt template: chat, text-to-image, or instruction edit."
    )
    messages: tuple[ChatMessage, ...] = Field(min_length=1)
    sampling: SamplingParams = SamplingParams()
    allow_image_output: bool = Field(
        default=False, description="Whether the model may emit images (visual embeddings)."
    )
    require_image: bool = Field(
        default=False,
        description=(
            "The answer must hold an image: if the model has not opened one while a whole image "
            "block still fits in max_tokens, <img> is forced (needs allow_image_output). Tasks "
            "generate and edit always require one."
        ),
    )


class _DiffusionJob(_JobEnvelope):
    """Fields shared by the diffusion jobs."""

    stage: ClassVar[keys.Stage] = "diffusion"

    width: int = Field(default=1024, ge=64, le=4096, multiple_of=8)
    height: int = Field(default=1024, ge=64, le=4096, multiple_of=8)
    steps: int = Field(default=50, ge=1, le=500)
    guidance_scale: float = Field(default=7.5, ge=0, le=50)
    seed: int | None = None
    scheduler: str = Field(default="euler", pattern=r"^[a-z0-9_+]{1,64}$")  # "dpmsolver++"
    output_format: ImageFormat = "png"
    output_compression: int | None = Field(default=None, ge=0, le=100)
    partial_images: int = Field(default=0, ge=0, le=3)

    @model_validator(mode="after")
    def _compression_needs_lossy_format(self) -> _DiffusionJob:
        if self.output_compression is not None and self.output_format == "png":
            raise ValueError("output_compression applies to jpeg and webp only")
        return self


def _require_tensor(ref: BlobRef, name: str) -> None:
    if not ref.is_tensor:
        raise ValueError(f"{name} must be a tensor blob (dtype and shape set)")


class ImageGenerateJob(_DiffusionJob):
    """Decode a visual embedding (from the LLM) into an image."""

    kind: Literal["image.generate"] = "image.generate"
    embedding: BlobRef

    @model_validator(mode="after")
    def _embedding_is_tensor(self) -> ImageGenerateJob:
        _require_tensor(self.embedding, "embedding")
        return self


class ImageEditJob(_DiffusionJob):
    """Edit ``source`` guided by the embedding (SEED-X-Edit's three-branch guidance)."""

    kind: Literal["image.edit"] = "image.edit"
    embedding: BlobRef
    source: BlobRef
    image_guidance_scale: float = Field(default=1.5, ge=0, le=50)

    @model_validator(mode="after")
    def _embedding_is_tensor(self) -> ImageEditJob:
        _require_tensor(self.embedding, "embedding")
        return self


class ImageReconstructJob(_DiffusionJob):
    """Re-generate ``source`` from its own ViT features (image variations)."""

    kind: Literal["image.reconstruct"] = "image.reconstruct"
    source: BlobRef


Job = Annotated[
    ChatJob | ImageGenerateJob | ImageEditJob | ImageReconstructJob, Field(discriminator="kind")
]
JOB_ADAPTER: TypeAdapter[Job] = TypeAdapter(Job, config=_Part.model_config)  # its own cache setting


# --- events -----------------------------------------------------------------------------------
class Started(_Part):
    """A worker began the job (sent by the transport, once per attempt)."""

    type: Literal["started"] = "started"
    worker_id: str = Field(max_length=200)
    queue_wait_s: float = Field(ge=0)


class TopLogprob(_Part):
    """One of the likeliest tokens at a position (OpenAI's ``top_logprobs`` entry)."""

    token: str
    logprob: float = Field(description="-9999.0 stands for minus infinity, as OpenAI writes it.")
    bytes: tuple[Annotated[int, Field(ge=0, le=255)], ...] | None = None


class TokenLogprob(TopLogprob):
    """A sampled token, its logprob and the likeliest alternatives at its position."""

    top_logprobs: tuple[TopLogprob, ...] = ()


class TextDelta(_Part):
    """Generated text, appended to choice ``choice``.

    ``logprobs`` (only when the job asked for them) covers the sampled tokens that were rendered
    since the previous delta; it may come with empty ``text`` (text held back for stop strings).
    """

    type: Literal["text.delta"] = "text.delta"
    text: str
    choice: int = Field(default=0, ge=0)
    logprobs: tuple[TokenLogprob, ...] | None = Field(default=None, exclude_if=_unset)


class Box(_Part):
    """A box in pixel coordinates of input image ``image_index`` (original size)."""

    x1: float = Field(ge=0)
    y1: float = Field(ge=0)
    x2: float = Field(ge=0)
    y2: float = Field(ge=0)
    image_index: int = Field(default=0, ge=0)
    label: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError("box corners must satisfy x1 <= x2 and y1 <= y2")
        return self


class Boxes(_Part):
    """Boxes the model referred to in its answer."""

    type: Literal["boxes"] = "boxes"
    boxes: tuple[Box, ...] = Field(min_length=1)
    choice: int = Field(default=0, ge=0)


class EmbeddingReady(_Part):
    """The LLM produced visual embedding ``image_index`` of its answer (a tensor blob)."""

    type: Literal["embedding.ready"] = "embedding.ready"
    embedding: BlobRef
    image_index: int = Field(default=0, ge=0)
    choice: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _embedding_is_tensor(self) -> EmbeddingReady:
        _require_tensor(self.embedding, "embedding")
        return self


class PartialImage(_Part):
    """A preview during denoising (OpenAI ``image_generation.partial_image``)."""

    type: Literal["image.partial"] = "image.partial"
    image: BlobRef
    partial_index: int = Field(ge=0)
    image_index: int = Field(default=0, ge=0)


class ImageReady(_Part):
    """A finished image (encoded in ``output_format``)."""

    type: Literal["image.ready"] = "image.ready"
    image: BlobRef
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    output_format: ImageFormat
    image_index: int = Field(default=0, ge=0)
    seed: int | None = Field(default=None, description="The seed actually used, for reproduction.")


class Usage(_Part):
    """Token and image counts of the job, for billing and metrics."""

    type: Literal["usage"] = "usage"
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    images: int = Field(default=0, ge=0)
    # Added compatibly in v1, left out while unset: of prompt_tokens, those input images fill.
    prompt_image_tokens: int | None = Field(default=None, ge=0, exclude_if=_unset)


class Done(_Part):
    """The job finished; the last event of its stream."""

    type: Literal["done"] = "done"
    finish_reasons: tuple[FinishReason, ...] = ("stop",)


class Failed(_Part):
    """The job failed; the last event of its stream."""

    type: Literal["failed"] = "failed"
    error: ErrorPayload


Event = Annotated[
    Started
    | TextDelta
    | Boxes
    | EmbeddingReady
    | PartialImage
    | ImageReady
    | Usage
    | Done
    | Failed,
    Field(discriminator="type"),
]
TERMINAL_EVENTS: Final = (Done, Failed)


class Reply(_Message):
    """One event on a reply stream, stamped with routing and ordering.

    ``attempt`` is the delivery count of the job when the event was produced and ``seq`` its
    position within that attempt (consecutive from 0); a waiter reads each attempt's events in
    ``seq`` order to know where in the answer each one lies, and so drops the replay of a
    reclaimed job by position, however the attempts split the answer into events
    (``workers.replies.Subscription``).
    """

    job_id: Id
    request_id: Id
    trace_id: str = Field(default="", max_length=64)
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0)
    event: Event

    @property
    def is_terminal(self) -> bool:
        """Whether this is the last event of the job (Done or Failed)."""
        return isinstance(self.event, TERMINAL_EVENTS)


class WorkerInfo(_Message):
    """What a worker publishes in its heartbeat: the gateway lists live workers from it."""

    worker_id: str = Field(max_length=200)
    stage: keys.Stage
    model: str = Field(pattern=_MODEL)
    capacity: int = Field(ge=1, description="Jobs it runs at once.")
    load: int = Field(ge=0, description="Jobs it is running now.")
    host: str = Field(max_length=256)
    pid: int = Field(ge=0)
    started_at: float = Field(gt=0)
    heartbeat_at: float = Field(gt=0)


# --- decoding -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Undecodable:
    """A message that could not be turned into a model, with what could be salvaged from it.

    The worker answers ``reply_to`` with a ``Failed`` event built from ``error`` when both
    ``job_id`` and ``reply_to`` were recovered, and dead-letters the raw message otherwise.
    """

    error: TransportError
    job_id: str | None = None
    request_id: str | None = None
    trace_id: str = ""
    reply_to: str | None = None


def _header(data: dict[str, Any]) -> dict[str, Any]:
    """Best-effort envelope fields of a message that failed validation."""

    def pick(name: str, pattern: str) -> str | None:
        value = data.get(name)
        return value if isinstance(value, str) and re.fullmatch(pattern, value) else None

    return {
        "job_id": pick("job_id", _ID),
        "request_id": pick("request_id", _ID),
        "trace_id": pick("trace_id", r"[0-9A-Za-z_-]{0,64}") or "",
        "reply_to": pick("reply_to", _REPLY_TO),
    }


def _diagnose(raw: bytes | str, what: str, exc: ValidationError) -> Undecodable:
    """Explain why ``raw`` did not validate: unknown version first, then the first error."""
    try:
        data = json.loads(raw)
    except ValueError as json_error:
        return Undecodable(InvalidMessage(f"{what} is not JSON: {json_error}"))
    if not isinstance(data, dict):
        return Undecodable(InvalidMessage(f"{what} is not a JSON object"))
    version = data.get("schema_version")
    error: TransportError
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        error = UnsupportedSchema(
            f"{what} schema_version {version!r} is not supported (this process speaks {supported})",
            param="schema_version",
        )
    else:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        error = InvalidMessage(f"{what} failed validation at {location}: {first['msg']}")
    return Undecodable(error, **_header(data))


def parse_job(raw: bytes | str) -> Job | Undecodable:
    """Decode a job; never raises, so one bad message cannot kill a worker loop."""
    try:
        return JOB_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        return _diagnose(raw, "job", exc)


def parse_reply(raw: bytes | str) -> Reply | Undecodable:
    """Decode a reply-stream event; never raises (a newer worker must not kill the reader)."""
    try:
        return Reply.model_validate_json(raw)
    except ValidationError as exc:
        return _diagnose(raw, "reply", exc)


def encode(message: BaseModel) -> bytes:
    """The wire bytes of a message (compact JSON)."""
    return message.model_dump_json().encode()


def deadline_in(seconds: float) -> float:
    """An absolute deadline ``seconds`` from now (epoch seconds)."""
    return time.time() + seconds
