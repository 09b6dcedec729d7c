"""Box parsing (§3.6, §9): centre/size on the 224 scale -> pixel corners of the original image."""

from __future__ import annotations

import pytest

from engine.boxes import PixelBox, box_from_locs, parse_boxes, parse_boxes_from_ids
from engine.checkpoint.tokenizer_files import write_tokenizer_folder
from engine.tokenizer import SeedXTokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> SeedXTokenizer:
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer_folder(folder)
    return SeedXTokenizer(folder)


def _markup(a: int, b: int, c: int, d: int) -> str:
    return f"<box_start><loc-{a}><loc-{b}><loc-{c}><loc-{d}><box_end>"


def test_worked_example_of_section_9() -> None:
    # 1344x896 image: centre (112/224·1344, 112/224·896) = (672, 448), size (336, 448).
    box = box_from_locs((112, 112, 56, 112), (1344, 896))
    assert box.pixels == PixelBox(504, 224, 840, 672)
    assert box.clamped == box.pixels
    assert box.loc == (112, 112, 56, 112)
    assert box.image_size == (1344, 896)


def test_int_truncates_toward_zero_and_clamping_is_separate() -> None:
    box = box_from_locs((0, 223, 10, 30), (1000, 500))
    # x: 0 ± 22.32 -> int() gives -22 and 22 (not floor's -23); y: 497.77 ± 33.48.
    assert box.pixels == PixelBox(-22, 464, 22, 531)
    assert box.clamped == PixelBox(0, 464, 22, 500)


def test_instruct_form_from_text() -> None:
    text = f"A mask {_markup(40, 100, 60, 80)} and a cup {_markup(1, 2, 3, 4)}."
    boxes = parse_boxes(text, (224, 448))
    assert [b.loc for b in boxes] == [(40, 100, 60, 80), (1, 2, 3, 4)]
    assert boxes[0].pixels == PixelBox(10, 120, 70, 280)


def test_base_form_whose_prompt_ended_in_box_start() -> None:
    generated = (
        "<loc-10><loc-20><loc-30><loc-40><box_end> and [[ "
        "<box_start><loc-5><loc-6><loc-7><loc-8><box_end>"
    )
    boxes = parse_boxes(generated, (224, 224), prompt_ends_with_box_start=True)
    assert [b.loc for b in boxes] == [(10, 20, 30, 40), (5, 6, 7, 8)]
    assert parse_boxes(generated, (224, 224)) == boxes[1:]  # the instruct regex needs the start


def test_malformed_boxes_are_skipped() -> None:
    text = (
        "<box_start><loc-1><loc-2><loc-3><box_end> "
        "<box_start><loc-1>\n<loc-2><loc-3><loc-4><box_end>"
    )
    assert parse_boxes(text, (100, 100)) == []  # three locations; a box across a newline


def test_from_generated_ids(tok: SeedXTokenizer) -> None:
    ids = tok.encode(f"The car {_markup(112, 112, 56, 112)} is red.</s>")
    (box,) = parse_boxes_from_ids(ids, tok, (1344, 896))
    assert box.pixels == PixelBox(504, 224, 840, 672)
    base = [*tok.loc_ids[:4], tok.box_end_id]
    (box,) = parse_boxes_from_ids(base, tok, (224, 224), prompt_ends_with_box_start=True)
    assert box.loc == (0, 1, 2, 3)


def test_image_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        box_from_locs((1, 2, 3, 4), (0, 10))
