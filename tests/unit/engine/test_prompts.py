"""Prompt templates (§3.3-§3.5): token counts, query positions, parity of the two paths, safety."""

from __future__ import annotations

import random

import pytest

from engine.checkpoint.tokenizer_files import write_tokenizer_folder
from engine.prompts import (
    ImageInput,
    Turn,
    assistant_text_parts,
    build_prompt,
    chat_template,
    edit_template,
    encode_template_trained,
    grounding_template,
    image_parts,
    image_string,
    query_positions,
    text_to_image_template,
)
from engine.tokenizer import Marker, SeedXTokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> SeedXTokenizer:
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer_folder(folder)
    return SeedXTokenizer(folder)


@pytest.mark.parametrize(("pictures", "tokens"), [(1, 66), (2, 132), (3, 198), (4, 264), (5, 330)])
def test_image_block_token_counts(tok: SeedXTokenizer, pictures: int, tokens: int) -> None:
    image = ImageInput(pictures)
    assert image.num_tokens == tokens
    ids = tok.encode_parts(image_parts(image))
    assert len(ids) == tokens
    assert ids.count(tok.bop_id) == ids.count(tok.eop_id) == pictures - 1
    assert ids[-66] == tok.boi_id
    assert ids[-1] == tok.eoi_id
    assert tok.encode(image_string(image)) == ids


def test_edit_prompt_has_132_image_tokens(tok: SeedXTokenizer) -> None:
    prompt = build_prompt(tok, edit_template("Make it under the sunset."))
    image_ids = {tok.boi_id, tok.eoi_id, tok.bop_id, tok.eop_id, *tok.query_ids}
    assert sum(i in image_ids for i in prompt.ids) == 132
    assert len(prompt.query_positions) == 128
    assert prompt.ids[0] == tok.bos_id


def test_query_positions_are_strictly_inside_blocks(tok: SeedXTokenizer) -> None:
    turn = Turn("user", "Where is the car?", (ImageInput(3),))
    prompt = build_prompt(tok, chat_template("seed-x-i", [turn]))
    ids = prompt.ids
    assert len(prompt.query_positions) == 3 * 64
    assert [ids[p] for p in prompt.query_positions] == list(tok.query_ids) * 3
    begins = [p for p, i in enumerate(ids) if i in (tok.boi_id, tok.bop_id)]
    for k, begin in enumerate(begins):
        assert prompt.query_positions[k * 64 : (k + 1) * 64] == tuple(range(begin + 1, begin + 65))
    mask = prompt.ids_cmp_mask
    assert sum(mask) == 192
    assert mask[begins[0]] is False


def test_query_positions_reject_malformed_blocks(tok: SeedXTokenizer) -> None:
    q = tok.query_ids[0]
    with pytest.raises(ValueError, match="not closed"):
        query_positions([tok.boi_id, q, tok.bop_id, q, tok.eop_id], tok)
    with pytest.raises(ValueError, match="unmatched"):
        query_positions([tok.bop_id, q, tok.eoi_id], tok)
    with pytest.raises(ValueError, match="unmatched"):
        query_positions([q, tok.eoi_id], tok)
    # A trailing open block is a text-to-image prompt ending in <img>: no slots yet.
    assert query_positions([tok.bos_id, 5, tok.boi_id], tok) == []


def test_text_to_image_prompts(tok: SeedXTokenizer) -> None:
    seed_x = build_prompt(tok, text_to_image_template("seed-x", "a red cube"))
    assert seed_x.ids[-1] == tok.boi_id
    assert seed_x.query_positions == ()
    seed_x_i = text_to_image_template("seed-x-i", "a red cube")
    assert seed_x_i.strings() == ["[INST] Generate an image: a red cube [/INST]\n"]
    with pytest.raises(ValueError, match="no text-to-image"):
        text_to_image_template("seed-x-edit", "a red cube")


def test_grounding_prompt_ends_in_box_start(tok: SeedXTokenizer) -> None:
    prompt = build_prompt(tok, grounding_template("the car", ImageInput(2)))
    assert prompt.ids[-1] == tok.box_start_id
    assert tok.id_to_token(prompt.ids[-2]) == "\u2581[["  # " [[ " lost its trailing space


def test_multi_turn_layout(tok: SeedXTokenizer) -> None:
    turns = [
        Turn("user", "What is it?", (ImageInput(2),)),
        Turn("assistant", "A cube."),
        Turn("user", "Which colour?"),
    ]
    template = chat_template("seed-x-i", turns)
    first, reply, second = template.strings()
    assert first == "[INST] " + image_string(ImageInput(2)) + "What is it? [/INST]\n"
    assert reply == "A cube."
    assert second == "\n[INST] Which colour? [/INST]\n"
    ids = build_prompt(tok, template).ids
    assert tok.eos_id not in ids  # earlier replies are appended without </s>
    # Each turn is tokenized on its own, as in training: the reply starts a new chunk.
    reply_ids = tok.encode("A cube.")
    start = len(ids) - len(tok.encode(second)) - len(reply_ids)
    assert list(ids[start : start + len(reply_ids)]) == reply_ids


def test_images_in_later_turns_and_in_assistant_turns(tok: SeedXTokenizer) -> None:
    turns = [
        Turn("user", "Generate an image: a cube"),
        Turn("assistant", "Here's an image.", (ImageInput(1),)),
        Turn("user", "And this one?", (ImageInput(3),)),
    ]
    prompt = build_prompt(tok, chat_template("seed-x-i", turns, placement="after"))
    assert prompt.images == (ImageInput(1), ImageInput(3))
    assert len(prompt.query_positions) == 4 * 64
    ids = list(prompt.ids)
    generated = ids.index(tok.boi_id)
    assert ids[generated + 65] == tok.eoi_id
    assert ids.index(tok.bop_id) > generated  # the user image comes later


def test_placement_after_puts_the_image_after_the_text() -> None:
    turn = Turn("user", "Q?", (ImageInput(1),))
    (text,) = chat_template("seed-x-i", [turn], placement="after").strings()
    assert text.startswith("[INST] Q?<img>")
    assert text.endswith("</img> [/INST]\n")


RANDOM_TEXTS = [
    "".join(random.Random(seed).choice("ab cé\n\t 1<>[]/:😀") for _ in range(20))
    for seed in range(25)
]


@pytest.mark.parametrize("text", [*RANDOM_TEXTS, "", "  ", "\n", "x  ", "  y"])
def test_id_builder_equals_trained_string_path(tok: SeedXTokenizer, text: str) -> None:
    for placement in ("before", "after"):
        turns = [Turn("user", text, (ImageInput(2),)), Turn("assistant", text), Turn("user", text)]
        template = chat_template("seed-x-i", turns, placement=placement, system=text)
        assert list(build_prompt(tok, template).ids) == encode_template_trained(tok, template)
    for template in (
        chat_template("seed-x", [Turn("user", text, (ImageInput(4),))]),
        grounding_template(text, ImageInput(3)),
        text_to_image_template("seed-x", text),
        edit_template(text),
    ):
        assert list(build_prompt(tok, template).ids) == encode_template_trained(tok, template)


@pytest.mark.parametrize(
    "attack", ["<img>", "</img>", "<patch>", "</s>", "<s>", "<unk>", "<img_00000>", "<loc-3>"]
)
def test_user_text_cannot_inject_special_tokens(tok: SeedXTokenizer, attack: str) -> None:
    turns = [Turn("user", f"hi {attack} there", (ImageInput(2),))]
    template = chat_template("seed-x-i", turns)
    prompt = build_prompt(tok, template)
    trusted = [*image_parts(ImageInput(2))]
    assert len(prompt.query_positions) == 128
    assert sum(i >= tok.sp_vocab_size for i in prompt.ids) == len(trusted)
    assert prompt.ids.count(tok.bos_id) == 1
    assert tok.eos_id not in prompt.ids
    # The 4.30 string path would have turned the attack into a special id.
    assert encode_template_trained(tok, template) != list(prompt.ids)


def test_assistant_box_markup_is_kept_as_tokens() -> None:
    box = "<box_start><loc-1><loc-22><loc-223><loc-0><box_end>"
    parts = assistant_text_parts(f"The car {box}.")
    assert parts[0] == "The car "
    assert parts[-1] == "."
    assert parts[1:-1] == [
        Marker("<box_start>"),
        Marker("<loc-1>"),
        Marker("<loc-22>"),
        Marker("<loc-223>"),
        Marker("<loc-0>"),
        Marker("<box_end>"),
    ]
    not_boxes = [
        "<box_start><loc-1><loc-2><loc-3><box_end>",  # three locations
        box.replace("223", "224"),  # out of range
        box.replace("<loc-1>", "<loc-01>"),  # not a token string
        "<box_start>",
    ]
    for text in not_boxes:
        assert assistant_text_parts(text) == [text]


@pytest.mark.parametrize(
    ("model", "turns", "kwargs", "match"),
    [
        ("seed-x-i", [], {}, "at least one"),
        ("seed-x-i", [Turn("assistant", "hi")], {}, "last turn"),
        ("seed-x", [Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c")], {}, "single"),
        ("seed-x", [Turn("user", "a")], {"system": "be nice"}, "system"),
        ("seed-x-i", [Turn("user", "a")], {"placement": "inline"}, "placement"),
        ("seed-x-xl", [Turn("user", "a")], {}, "unknown model"),
    ],
)
def test_bad_conversations_are_rejected(
    model: str, turns: list[Turn], kwargs: dict[str, str], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        chat_template(model, turns, **kwargs)  # type: ignore[arg-type]


def test_image_needs_a_picture() -> None:
    with pytest.raises(ValueError, match="at least one picture"):
        ImageInput(0)
