"""Bounding boxes in SEED-X answers (model spec §3.6).

The model writes ``<box_start><loc-a><loc-b><loc-c><loc-d><box_end>``: centre-x, centre-y,
width and height, each on a 224-step scale relative to the *original* image. The reference
(``visualize_bbox`` of the eval scripts) maps them to pixels with ``int()`` truncation and no
clamping; :attr:`Box.pixels` keeps exactly that, and :attr:`Box.clamped` additionally clips to
the image, which is what an API answer should carry (a deviation, kept separate on purpose).

Parsing mirrors the scripts: SEED-X-I's ``<box_start>(.*?)<box_end>`` regex, or for the
pre-trained SEED-X, whose grounding prompt already ends in ``<box_start>``, everything before
each ``<box_end>`` (``(.*?)<box_end>``). Neither regex crosses a newline. A match without exactly
four locations would crash the reference's unpacking; here it is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from engine.checkpoint.tokenizer_files import NUM_LOCATIONS
from engine.tokenizer import SeedXTokenizer

_INSTRUCT_BOX = re.compile("<box_start>(.*?)<box_end>")
_BASE_BOX = re.compile("(.*?)<box_end>")
_LOC = re.compile(r"<loc-(\d+)>")


@dataclass(frozen=True)
class PixelBox:
    """Corners in pixels of the original image: (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True)
class Box:
    """One parsed box: the raw locations and its pixel corners."""

    loc: tuple[int, int, int, int]  # (centre-x, centre-y, width, height) on the 224 scale
    image_size: tuple[int, int]  # (width, height) of the original image
    pixels: PixelBox  # the reference's int() arithmetic, unclamped (may leave the image)
    clamped: PixelBox  # pixels clipped to [0, width] x [0, height]


def box_from_locs(loc: Sequence[int], image_size: tuple[int, int]) -> Box:
    """Reference arithmetic of ``visualize_bbox``, operation for operation (same float rounding)."""
    a, b, c, d = (int(v) for v in loc)
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    x_center = a / NUM_LOCATIONS * width
    y_center = b / NUM_LOCATIONS * height
    box_width = c / NUM_LOCATIONS * width
    box_height = d / NUM_LOCATIONS * height
    pixels = PixelBox(
        int(x_center - box_width / 2),
        int(y_center - box_height / 2),
        int(x_center + box_width / 2),
        int(y_center + box_height / 2),
    )
    clamped = PixelBox(
        min(max(pixels.x1, 0), width),
        min(max(pixels.y1, 0), height),
        min(max(pixels.x2, 0), width),
        min(max(pixels.y2, 0), height),
    )
    return Box((a, b, c, d), (width, height), pixels, clamped)


def parse_boxes(
    text: str, image_size: tuple[int, int], *, prompt_ends_with_box_start: bool = False
) -> list[Box]:
    """Boxes in decoded text (4.30 ``decode`` with special tokens kept), in order."""
    pattern = _BASE_BOX if prompt_ends_with_box_start else _INSTRUCT_BOX
    boxes: list[Box] = []
    for body in pattern.findall(text):
        locs = [int(v) for v in _LOC.findall(body)]
        if len(locs) == 4:
            boxes.append(box_from_locs(locs, image_size))
    return boxes


def parse_boxes_from_ids(
    ids: Sequence[int],
    tokenizer: SeedXTokenizer,
    image_size: tuple[int, int],
    *,
    prompt_ends_with_box_start: bool = False,
) -> list[Box]:
    """Boxes in generated ids: decode as the reference does, then :func:`parse_boxes`."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return parse_boxes(text, image_size, prompt_ends_with_box_start=prompt_ends_with_box_start)
