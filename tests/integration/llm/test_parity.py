"""vLLM engine vs the PyTorch reference on the tiny fp32 checkpoint (issue 4, "done when")."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import torch

from engine.prompts import (
    ImageInput,
    Turn,
    build_prompt,
    chat_template,
    edit_template,
    text_to_image_template,
)
from tests.integration.llm.helpers import chat_case, collect, noise_image, request_id
from workers.llm.types import LLMRequest, SamplingOptions

EMBED_TOL = 1e-4


def test_chat_multi_tile_image_greedy_tokens_identical(
    llm_engine: Any, engine_loop: Any, reference: Any
) -> None:
    image = noise_image(1344, 896, seed=1)  # 2x1 grid: 2 tiles + the global view
    request, ids, pictures = chat_case(llm_engine, reference, [image], "Describe the image.")
    assert pictures is not None
    assert pictures.shape[0] == 3
    got = engine_loop.run(collect(llm_engine, request))
    want = reference.generate(ids, pictures, max_new_tokens=24)
    assert got.output_ids == want.output_ids
    assert got.finished[0].reason == want.finish_reason
    assert got.usage is not None
    assert got.usage.prompt_tokens == len(ids)
    assert got.usage.completion_tokens == len(want.output_ids)


def test_chat_with_boxes_in_history_and_two_images(
    llm_engine: Any, engine_loop: Any, reference: Any
) -> None:
    from engine.anyres import preprocess_anyres

    images = [noise_image(896, 1344, seed=2), noise_image(640, 480, seed=3)]
    prepared = [preprocess_anyres(i) for i in images]
    turns = [
        Turn("user", "Where is the car?", tuple(ImageInput(p.num_pictures) for p in prepared)),
        Turn("assistant", "Here<box_start><loc-10><loc-20><loc-30><loc-40><box_end> it is."),
        Turn("user", "And the tree?"),
    ]
    prompt = build_prompt(llm_engine.tokenizer, chat_template("seed-x-i", turns))
    assert llm_engine.tokenizer.box_start_id in prompt.ids
    pixels = torch.cat([p.pixels for p in prepared])
    centres = torch.cat([p.centres for p in prepared])
    pictures = reference.picture_embeddings(pixels, centres)
    request = LLMRequest(
        request_id("boxes"), prompt.ids, tuple(images), SamplingOptions(max_tokens=20)
    )
    got = engine_loop.run(collect(llm_engine, request))
    want = reference.generate(list(prompt.ids), pictures, max_new_tokens=20)
    assert got.output_ids == want.output_ids


def _history_case(
    llm_engine: Any, reference: Any, generated: Any, max_tokens: int
) -> tuple[LLMRequest, Any]:
    """User image (2x1 grid) -> assistant text + its generated image -> "make it blue", with
    an image required, on the engine (GlobalViewImage) and the reference (global view pixels)."""
    from engine.anyres import GlobalViewImage, preprocess_anyres, preprocess_global_view

    user_image = noise_image(1344, 896, seed=21)
    full, alone = preprocess_anyres(user_image), preprocess_global_view(generated)
    turns = [
        Turn("user", "Paint this.", (ImageInput(full.num_pictures),)),
        Turn("assistant", "Here's an image.", (ImageInput(1),)),
        Turn("user", "Make it blue."),
    ]
    prompt = build_prompt(llm_engine.tokenizer, chat_template("seed-x-i", turns))
    pictures = reference.picture_embeddings(
        torch.cat([full.pixels, alone.pixels]), torch.cat([full.centres, alone.centres])
    )
    request = LLMRequest(
        request_id("history"),
        prompt.ids,
        (user_image, GlobalViewImage(generated)),
        SamplingOptions(max_tokens=max_tokens),
        image_required=True,
    )
    want = reference.generate(
        list(prompt.ids), pictures, max_new_tokens=max_tokens, force_image_after=max_tokens - 66
    )
    return request, want


def test_generated_image_in_assistant_history_matches_reference(
    llm_engine: Any, engine_loop: Any, reference: Any
) -> None:
    """Multi-turn chat with a generated image sent back: tokens identical, and the next image's
    rows (which attend to that picture) within tolerance. The generated image is the user's
    own picture on purpose: as a user image it is 3 pictures, as history 1, so the two must not
    share a vLLM cache entry."""
    generated = noise_image(1344, 896, seed=21)
    request, want = _history_case(llm_engine, reference, generated, 90)
    got = engine_loop.run(collect(llm_engine, request))
    _assert_same_images(got, want)
    # Control: another picture in the history changes the answer's rows, so it was used.
    other, _ = _history_case(llm_engine, reference, noise_image(700, 500, seed=22), 90)
    changed = engine_loop.run(collect(llm_engine, other))
    assert not torch.allclose(changed.images[0].query_hidden, got.images[0].query_hidden)


def test_precomputed_embeddings_match_pixels(
    llm_engine: Any, engine_loop: Any, reference: Any
) -> None:
    image = noise_image(1000, 1000, seed=4)  # 2x2 grid: 5 pictures
    request, _, pictures = chat_case(llm_engine, reference, [image], "What is it?", max_tokens=12)
    assert pictures is not None
    embeds = pictures.reshape(-1, pictures.shape[-1])
    by_embeds = dataclasses.replace(request, request_id=request_id("embeds"), images=(embeds,))
    got_pixels = engine_loop.run(collect(llm_engine, request))
    got_embeds = engine_loop.run(collect(llm_engine, by_embeds))
    assert got_pixels.output_ids == got_embeds.output_ids


def _image_case(
    llm_engine: Any,
    reference: Any,
    template: Any,
    images: list[Any],
    max_tokens: int,
    required: bool,
) -> tuple[Any, Any]:
    from engine.anyres import preprocess_anyres

    prompt = build_prompt(llm_engine.tokenizer, template)
    pictures = None
    if images:
        prepared = [preprocess_anyres(i, ("1x1",)) for i in images]
        pictures = reference.picture_embeddings(
            torch.cat([p.pixels for p in prepared]), torch.cat([p.centres for p in prepared])
        )
    request = LLMRequest(
        request_id("image"),
        prompt.ids,
        tuple(images),
        SamplingOptions(max_tokens=max_tokens),
        image_required=required,
    )
    force = max(0, max_tokens - 66) if required else None
    want = reference.generate(
        list(prompt.ids), pictures, max_new_tokens=max_tokens, force_image_after=force
    )
    return request, want


def _assert_same_images(got: Any, want: Any) -> None:
    assert got.output_ids == want.output_ids
    assert len(got.images) == len(want.images) >= 1
    for mine, theirs in zip(got.images, want.images, strict=True):
        assert mine.position == theirs.position
        assert torch.allclose(mine.query_hidden, theirs.query_hidden, atol=EMBED_TOL, rtol=0)
        assert torch.allclose(mine.embedding, theirs.embedding, atol=EMBED_TOL, rtol=0)


def test_seed_x_caption_img_template_embedding(
    llm_engine: Any, engine_loop: Any, reference: Any
) -> None:
    template = text_to_image_template("seed-x", "a red cube on a wooden table")
    for max_tokens in (120, 65):  # 65: the block takes the whole budget, rows still come back
        request, want = _image_case(llm_engine, reference, template, [], max_tokens, False)
        _assert_same_images(engine_loop.run(collect(llm_engine, request)), want)


def test_seed_x_i_generate_forced_image_embedding(
    llm_engine: Any, engine_loop: Any, reference: Any
) -> None:
    template = text_to_image_template("seed-x-i", "a cat wearing a hat")
    request, want = _image_case(llm_engine, reference, template, [], 90, True)
    _assert_same_images(engine_loop.run(collect(llm_engine, request)), want)


def test_seed_x_edit_prompt_embedding(llm_engine: Any, engine_loop: Any, reference: Any) -> None:
    # 640x480 picks the 1x1 grid in both grid sets, so the seed-x-i engine's processor sees the
    # same 2 pictures as SEED-X-Edit's (which only has 1x1).
    source = noise_image(640, 480, seed=5)
    template = edit_template("make the sky green")
    request, want = _image_case(llm_engine, reference, template, [source], 100, True)
    _assert_same_images(engine_loop.run(collect(llm_engine, request)), want)


def test_eight_concurrent_requests_match_one_at_a_time(
    llm_engine: Any, engine_loop: Any, reference: Any
) -> None:
    sizes = [
        (1344, 896),
        (640, 480),
        (896, 1344),
        (1000, 1000),
        (3000, 1000),
        (448, 448),
        (800, 2000),
        (1920, 1080),
    ]
    requests = []
    for i, (w, h) in enumerate(sizes):
        template = edit_template(f"edit number {i}") if i % 2 else None
        if template is None:
            request, _, _ = chat_case(
                llm_engine, reference, [noise_image(w, h, 10 + i)], f"Q{i}?", 30
            )
        else:
            request = LLMRequest(
                request_id("edit"),
                build_prompt(llm_engine.tokenizer, template).ids,
                (noise_image(640, 480, 10 + i),),
                SamplingOptions(max_tokens=80),
                image_required=True,
            )
        requests.append(request)

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(
            *(
                collect(llm_engine, dataclasses.replace(r, request_id=request_id("conc")))
                for r in requests
            )
        )

    alone = [engine_loop.run(collect(llm_engine, r)) for r in requests]
    together = engine_loop.run(all_at_once())
    for a, b in zip(alone, together, strict=True):
        assert a.output_ids == b.output_ids
        assert len(a.images) == len(b.images)
        for x, y in zip(a.images, b.images, strict=True):
            assert torch.allclose(x.embedding, y.embedding, atol=EMBED_TOL, rtol=0)
    assert sum(len(a.images) for a in alone) == 4
