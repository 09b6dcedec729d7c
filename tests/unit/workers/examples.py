"""One canonical instance of every wire message, with every field set (goldens are made of these).

Fixed ids and times, so the JSON is stable. A new field must be added here (the completeness test
fails otherwise) and a golden regenerated, which makes every contract change visible in review.
"""

from __future__ import annotations

from pydantic import BaseModel

from workers.protocol import (
    BlobRef,
    Box,
    Boxes,
    ChatJob,
    ChatMessage,
    Done,
    EmbeddingReady,
    ErrorPayload,
    Failed,
    ImageEditJob,
    ImageGenerateJob,
    ImagePart,
    ImageReady,
    ImageReconstructJob,
    PartialImage,
    Reply,
    SamplingParams,
    Started,
    StructuredOutput,
    TextDelta,
    TextPart,
    TokenLogprob,
    TopLogprob,
    Usage,
    WorkerInfo,
)

REPLY_TO = "seedx:replies:gw-0"
ENVELOPE = {
    "schema_version": 1,
    "job_id": "job-0001",
    "request_id": "req-0001",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "deadline": 1_900_000_060.5,
    "created_at": 1_900_000_000.25,
    "reply_to": REPLY_TO,
    "priority": 3,
    "idempotency_key": "client-key-1",
}
PNG = BlobRef(
    key="seedx:blob:img-1",
    nbytes=1234,
    content_type="image/png",
    checksum="crc32:0badf00d",
)
EMBEDDING = BlobRef(
    key="seedx:blob:emb-1",
    nbytes=64 * 4096 * 2,
    content_type="application/x-seedx-tensor",
    dtype="float16",
    shape=(64, 4096),
    checksum="crc32:12345678",
)
DIFFUSION = {
    "width": 768,
    "height": 512,
    "steps": 25,
    "guidance_scale": 5.0,
    "seed": 42,
    "scheduler": "euler",
    "output_format": "webp",
    "output_compression": 80,
    "partial_images": 2,
}

CHAT_JOB = ChatJob(
    **ENVELOPE,
    model="seed-x-i",
    kind="chat",
    task="chat",
    messages=(
        ChatMessage(role="system", content=(TextPart(type="text", text="Be brief."),)),
        ChatMessage(
            role="user",
            content=(
                ImagePart(type="image", image=PNG, width=640, height=480),
                TextPart(type="text", text="Where is the cat?"),
            ),
        ),
    ),
    sampling=SamplingParams(
        temperature=0.7,
        top_p=0.9,
        max_tokens=256,
        stop=("</s>",),
        seed=7,
        n=2,
        presence_penalty=0.5,
        frequency_penalty=0.25,
    ),
    allow_image_output=True,
    require_image=True,
)
CHAT_JOB_DEFAULTS = ChatJob(
    job_id="job-0002",
    request_id="req-0002",
    model="seed-x-i",
    deadline=1_900_000_060.5,
    created_at=1_900_000_000.25,
    reply_to=REPLY_TO,
    messages=(ChatMessage(role="user", content=(TextPart(text="Hi"),)),),
)
"""Every optional field left to its default, so the golden pins what "unset" means on the wire:
``sampling.temperature`` is null, the model's default (SEED-X: greedy, §5.5), not OpenAI's 1.0.
It was 1.0 before issue 4; no v1 peer had shipped, so the default moved inside v1 (STYLE §2)."""
CHAT_JOB_JSON = ChatJob(
    **ENVELOPE,
    model="seed-x-i",
    messages=(ChatMessage(role="user", content=(TextPart(text="Boxes as JSON"),)),),
    sampling=SamplingParams(
        max_tokens=128,
        logprobs=2,
        logit_bias={13: -100.0, 29871: 5.5},
        structured=StructuredOutput(
            type="json_schema", json_schema='{"type":"object","required":["x1"]}'
        ),
    ),
)
"""The fields added for logprobs, logit_bias and JSON answers (issue 16): absent from the JSON
of a job that leaves them unset (``chat_job_defaults``), so older v1 workers still read those."""
IMAGE_GENERATE_JOB = ImageGenerateJob(
    **ENVELOPE, **DIFFUSION, model="seed-x-detok", kind="image.generate", embedding=EMBEDDING
)
IMAGE_EDIT_JOB = ImageEditJob(
    **ENVELOPE,
    **DIFFUSION,
    model="seed-x-edit-detok",
    kind="image.edit",
    embedding=EMBEDDING,
    source=PNG,
    image_guidance_scale=1.2,
)
IMAGE_RECONSTRUCT_JOB = ImageReconstructJob(
    **ENVELOPE, **DIFFUSION, model="seed-x-detok", kind="image.reconstruct", source=PNG
)

EVENTS = {
    "started": Started(type="started", worker_id="llm-host-1-abc", queue_wait_s=0.125),
    "text_delta": TextDelta(type="text.delta", text="The cat is ", choice=1),
    "text_delta_logprobs": TextDelta(
        type="text.delta",
        text=" cat",
        choice=0,
        logprobs=(
            TokenLogprob(
                token=" cat",
                logprob=-0.25,
                bytes=(32, 99, 97, 116),
                top_logprobs=(
                    TopLogprob(token=" cat", logprob=-0.25, bytes=(32, 99, 97, 116)),
                    TopLogprob(token="bytes:\\xe2", logprob=-9999.0, bytes=(226,)),
                ),
            ),
        ),
    ),
    "boxes": Boxes(
        type="boxes",
        boxes=(Box(x1=10, y1=20.5, x2=110, y2=220, image_index=0, label="cat"),),
        choice=1,
    ),
    "embedding_ready": EmbeddingReady(
        type="embedding.ready", embedding=EMBEDDING, image_index=1, choice=1
    ),
    "partial_image": PartialImage(type="image.partial", image=PNG, partial_index=1, image_index=1),
    "image_ready": ImageReady(
        type="image.ready",
        image=PNG,
        width=768,
        height=512,
        output_format="png",
        image_index=1,
        seed=42,
    ),
    "usage": Usage(type="usage", prompt_tokens=120, completion_tokens=33, images=1),
    "usage_image_tokens": Usage(  # prompt_image_tokens: added in v1 (issue 21), absent if unset
        type="usage", prompt_tokens=180, completion_tokens=70, images=1, prompt_image_tokens=64
    ),
    "done": Done(type="done", finish_reasons=("stop", "length")),
    "failed": Failed(
        type="failed",
        error=ErrorPayload(
            code="deadline_exceeded", message="too late", param="deadline", retryable=True
        ),
    ),
}


def reply(event_name: str, seq: int = 4) -> Reply:
    """The example event wrapped in a Reply envelope."""
    return Reply(
        schema_version=1,
        job_id="job-0001",
        request_id="req-0001",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        attempt=2,
        seq=seq,
        event=EVENTS[event_name],
    )


WORKER_INFO = WorkerInfo(
    schema_version=1,
    worker_id="llm-host-1-abc",
    stage="llm",
    model="seed-x-i",
    capacity=8,
    load=3,
    host="host-1",
    pid=4242,
    started_at=1_900_000_000.0,
    heartbeat_at=1_900_000_010.0,
)

JOBS: dict[str, BaseModel] = {
    "chat_job": CHAT_JOB,
    "chat_job_defaults": CHAT_JOB_DEFAULTS,
    "chat_job_json": CHAT_JOB_JSON,
    "image_generate_job": IMAGE_GENERATE_JOB,
    "image_edit_job": IMAGE_EDIT_JOB,
    "image_reconstruct_job": IMAGE_RECONSTRUCT_JOB,
}

MESSAGES: dict[str, BaseModel] = {
    **JOBS,
    **{f"reply_{name}": reply(name) for name in EVENTS},
    "worker_info": WORKER_INFO,
}
"""Golden name (``workers/golden/v1_<name>.json``) -> message."""
