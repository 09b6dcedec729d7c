"""The reference LLM stage: one-pass query rows equal the 65-step forced decode (§5.2, §5.5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from engine import flows
from engine.prompts import Turn, build_prompt, chat_template, text_to_image_template
from engine.reference import SeedXReference
from engine.runner import load_reference


@pytest.fixture(scope="module")
def reference(serving_tree: Path) -> SeedXReference:
    return load_reference(serving_tree, "seed-x", torch.float32, "cpu")


def _t2i_ids(reference: SeedXReference, caption: str = "a red cube") -> list[int]:
    template = text_to_image_template("seed-x", caption)
    return list(build_prompt(reference.tokenizer, template).ids)


def test_one_pass_query_rows_equal_forced_decode(reference: SeedXReference) -> None:
    ids = _t2i_ids(reference)
    assert ids[-1] == reference.tokenizer.boi_id  # "{caption}<img>" forces the block at once
    one = reference.generate(ids, max_new_tokens=80, query_rows="one_pass")
    forced = reference.generate(ids, max_new_tokens=80, query_rows="forced")
    assert one.output_ids == forced.output_ids
    assert one.output_ids[:65] == reference.image_ids[1:]
    assert len(one.images) == len(forced.images) == 1
    diff = (one.images[0].query_hidden - forced.images[0].query_hidden).abs().max()
    assert float(diff) <= 1e-4
    assert one.images[0].embedding.shape == (64, reference.folder.arch.output_resampler.embed_dim)
    assert one.images[0].position == -1


def test_query_rows_are_post_norm_states_at_query_inputs(reference: SeedXReference) -> None:
    """A plain full-sequence forward over prompt + block gives the same rows (§8.7's recipe)."""
    ids = _t2i_ids(reference)
    gen = reference.generate(ids, max_new_tokens=65)
    full = ids + gen.output_ids[:64]
    with torch.no_grad():
        out = reference.llm.model(input_ids=torch.tensor([full]))
    rows = out.last_hidden_state[0, len(ids) : len(ids) + 64]
    torch.testing.assert_close(rows, gen.images[0].query_hidden, atol=1e-5, rtol=1e-5)


def test_truncated_block_yields_no_image(reference: SeedXReference) -> None:
    gen = reference.generate(_t2i_ids(reference), max_new_tokens=30)
    assert len(gen.output_ids) == 30
    assert gen.images == []


def test_forced_image_for_image_requests(serving_tree: Path) -> None:
    reference = load_reference(serving_tree, "seed-x-i", torch.float32, "cpu")
    template = text_to_image_template("seed-x-i", "a red cube")
    ids = list(build_prompt(reference.tokenizer, template).ids)
    free = reference.generate(ids, max_new_tokens=20)
    assert reference.tokenizer.boi_id not in free.output_ids  # random weights: no image by itself
    forced = reference.generate(ids, max_new_tokens=80, force_image_after=5)
    assert forced.output_ids[5] == reference.tokenizer.boi_id
    assert len(forced.images) == 1
    assert forced.images[0].position == 5


def test_suppression_keeps_query_tokens_out_of_text(reference: SeedXReference) -> None:
    strict = SeedXReference(
        reference.llm,
        reference.encoder,
        reference.tokenizer,
        reference.folder,
        suppress_value=float("-inf"),
    )
    gen = strict.generate(_t2i_ids(reference, "plain text")[:-1], max_new_tokens=20)
    assert not set(gen.output_ids) & set(reference.image_ids[1:])


def test_picture_features_fill_the_query_slots_in_order(reference: SeedXReference) -> None:
    tok = reference.tokenizer
    from engine.prompts import ImageInput

    template = chat_template("seed-x", [Turn("user", "what is it?", (ImageInput(3),))])
    prompt = build_prompt(tok, template)
    pictures = torch.randn(3, 64, reference.folder.hidden_size)
    embeds = reference.prompt_embeddings(list(prompt.ids), pictures)
    positions = list(prompt.query_positions)
    torch.testing.assert_close(embeds[0, positions], pictures.reshape(-1, pictures.shape[-1]))
    token_rows = reference.llm.model.embed_tokens(torch.tensor(prompt.ids))
    others = [i for i in range(len(prompt.ids)) if i not in set(positions)]
    torch.testing.assert_close(embeds[0, others], token_rows[others])
    with pytest.raises(ValueError, match="query slots"):
        reference.prompt_embeddings(list(prompt.ids), pictures[:2])


def test_chat_flow_with_a_wide_image(serving_tree: Path) -> None:
    reference = load_reference(serving_tree, "seed-x-i", torch.float32, "cpu")
    image = Image.new("RGB", (1344, 896), (200, 30, 30))
    dump = flows.TensorDump()
    result = flows.chat(reference, [image], "Describe the image.", max_new_tokens=8, dump=dump)
    assert len(result.generation.output_ids) <= 8
    assert dump.tensors["pictures"].shape == (3, 3, 448, 448)  # 2x1 grid + global view (§9)
    assert dump.tensors["tile_centres"].tolist() == [[0.25, 0.5], [0.75, 0.5], [0.5, 0.5]]
    assert dump.tensors["input_resampler_features"].shape == (3, 64, 128)
    assert dump.tensors["prompt_ids"].numel() > 198


def test_context_length_is_enforced(reference: SeedXReference) -> None:
    with pytest.raises(ValueError, match="2048 positions"):
        reference.generate(_t2i_ids(reference), max_new_tokens=2048)
