"""The LLM worker through real Redis: job in, events out, cancellation aborts in vLLM."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import numpy as np

from tests.integration.llm.helpers import noise_image
from tests.integration.workers.helpers import gateway, running_worker
from workers.connection import create_redis
from workers.protocol import ChatJob, ChatMessage, ImagePart, SamplingParams, TextPart, new_id

MODEL = "seed-x-i"


def _job(reply_to: str, content: tuple[Any, ...], **changes: Any) -> ChatJob:
    values: dict[str, Any] = {
        "job_id": new_id(),
        "request_id": new_id(),
        "model": MODEL,
        "deadline": time.time() + 60,
        "created_at": time.time(),
        "reply_to": reply_to,
        "messages": (ChatMessage(role="user", content=content),),
        "sampling": SamplingParams(temperature=0.0, max_tokens=16),
        **changes,
    }
    return ChatJob(**values)


async def _scenario(engine: Any, redis_settings: Any, queue_settings: Any) -> None:
    from workers.llm.handler import LLMJobHandler

    client = create_redis(redis_settings)
    await client.flushdb()
    await client.aclose()
    handler = LLMJobHandler(engine)
    async with (
        gateway(redis_settings, queue_settings) as gw,
        running_worker(redis_settings, queue_settings, handler, model=MODEL, capacity=4),
    ):
        # chat with an image: text deltas, usage, done
        png = io.BytesIO()
        noise_image(1344, 896, seed=7).save(png, format="PNG")
        ref = await gw.blobs.put(png.getvalue(), content_type="image/png")
        parts = (ImagePart(image=ref, width=1344, height=896), TextPart(text="What is this?"))
        sub = await gw.submit(_job(gw.reply_to, parts))
        replies = await asyncio.wait_for(sub.collect(), 60)
        types = [r.event.type for r in replies]
        assert types[0] == "started", types
        assert types[-2:] == ["usage", "done"], types
        usage = replies[-2].event
        assert usage.prompt_tokens > 198
        assert usage.completion_tokens == 16

        # text-to-image: the embedding arrives as a float16 [64, D] tensor blob
        job = _job(
            gw.reply_to,
            (TextPart(text="a red cube"),),
            task="generate",
            allow_image_output=True,
            sampling=SamplingParams(temperature=0.0, max_tokens=80),
        )
        replies = await asyncio.wait_for((await gw.submit(job)).collect(), 60)
        ready = [r.event for r in replies if r.event.type == "embedding.ready"]
        assert len(ready) == 1
        assert replies[-1].event.type == "done"
        embedding = await gw.blobs.get_tensor(ready[0].embedding)
        assert embedding.dtype == np.float16
        assert embedding.shape == (64, engine_dim(engine))

        # unreadable image blob: a clear failure, the engine keeps serving
        bad = await gw.blobs.put(b"not an image", content_type="image/png")
        job = _job(gw.reply_to, (ImagePart(image=bad, width=4, height=4), TextPart(text="x")))
        replies = await asyncio.wait_for((await gw.submit(job)).collect(), 30)
        assert replies[-1].event.type == "failed"
        assert replies[-1].event.error.code == "invalid_request"

        # n = 2 with no temperature: sampled at OpenAI's default, so the choices differ
        job = _job(gw.reply_to, (TextPart(text="a story"),),
                   sampling=SamplingParams(max_tokens=24, n=2))  # fmt: skip
        replies = await asyncio.wait_for((await gw.submit(job)).collect(), 60)
        texts = ["", ""]
        for reply in replies:
            if reply.event.type == "text.delta":
                texts[reply.event.choice] += reply.event.text
        assert replies[-1].event.type == "done"
        assert texts[0] != texts[1], texts

        # penalties reach vLLM: a strong frequency penalty changes a greedy answer
        async def greedy_text(**penalties: float) -> str:
            sampling = SamplingParams(temperature=0.0, max_tokens=40, **penalties)
            job = _job(gw.reply_to, (TextPart(text="a story"),), sampling=sampling)
            replies = await asyncio.wait_for((await gw.submit(job)).collect(), 60)
            assert replies[-1].event.type == "done"
            return "".join(r.event.text for r in replies if r.event.type == "text.delta")

        plain = await greedy_text()
        assert await greedy_text() == plain
        assert await greedy_text(frequency_penalty=2.0) != plain

        # a prompt longer than the context: a 400 naming `messages`, before any engine work
        job = _job(gw.reply_to, (TextPart(text="word " * 3000),))
        replies = await asyncio.wait_for((await gw.submit(job)).collect(), 30)
        error = replies[-1].event.error
        assert (error.code, error.param) == ("invalid_request", "messages")
        assert "tokens" in error.message

        # cancellation mid-generation aborts the vLLM requests. Judged in tokens, not seconds:
        # the worker reads cancel flags every 0.5 s, and on a loaded 2-core CI machine the abort
        # took longer than the 1 s this check once allowed, while the engine had generated only a
        # few hundred of the request's tokens. An abort that never reached vLLM runs the request
        # to its max_tokens; one that did leaves it far short (13 tokens here: the poll and the
        # abort take a fraction of a second, and decoding slows with the load that slows them).
        max_tokens = 1900
        long = _job(
            gw.reply_to,
            (TextPart(text="talk"),),
            sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        )
        sub = await gw.submit(long)
        async for reply in sub:
            if reply.event.type == "text.delta":
                break
        await gw.cancel(long.job_id)
        generated = 0
        hung_at = time.monotonic() + 120  # against a hang only
        processor = engine.llm.output_processor
        while processor.get_num_unfinished_requests():
            for state in list(processor.request_states.values()):
                generated = max(generated, len(state.detokenizer.output_token_ids))
            assert time.monotonic() < hung_at, "vLLM still runs the cancelled job"
            await asyncio.sleep(0.02)
        assert generated < max_tokens // 2, f"vLLM generated {generated} tokens after the cancel"
        final = await asyncio.wait_for(sub.collect(), 30)
        assert final[-1].event.type == "failed"
        assert final[-1].event.error.code == "cancelled"


def engine_dim(engine: Any) -> int:
    return int(engine.llm.model_config.hf_config.seedx["arch"]["output_resampler"]["embed_dim"])


def test_worker_round_trip_and_cancel(
    llm_engine: Any, engine_loop: Any, redis_settings: Any, queue_settings: Any
) -> None:
    engine_loop.run(_scenario(llm_engine, redis_settings, queue_settings), timeout=180)
