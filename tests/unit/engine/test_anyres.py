"""Any-resolution preprocessing against model spec §4 (tables, order, centres, normalisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.anyres import (
    CLIP_MEAN,
    CLIP_STD,
    candidate_resolutions,
    choose_resolution,
    clip_transform,
    parse_grid,
    preprocess_anyres,
    preprocess_global_view,
    preprocess_reconstruction,
    select_best_resolution,
    select_best_resolution_v2,
    tile_centres,
)
from engine.arch import SeedXArch

ARCH = SeedXArch()
CANDIDATES = candidate_resolutions(ARCH.resolution_grids, ARCH.base_resolution)


def _solid(rgb: tuple[int, int, int], size: tuple[int, int] = (448, 448)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def _expected(rgb: tuple[int, int, int]) -> torch.Tensor:
    """Hand-computed §4.4 values for one colour: (v/255 - mean) / std in float32."""
    v = torch.tensor(rgb, dtype=torch.float32) / 255
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    return ((v - mean) / std).view(3, 1, 1).expand(3, 448, 448)


def test_candidates_follow_grid_order() -> None:
    assert CANDIDATES == [
        (448, 448),
        (448, 896),
        (448, 1344),
        (896, 448),
        (1344, 448),
        (448, 1792),
        (1792, 448),
        (896, 896),
    ]


@pytest.mark.parametrize(
    ("size", "choice", "tiles"),
    [
        ((1344, 896), (896, 448), (2, 1)),
        ((1920, 1080), (896, 448), (2, 1)),
        ((896, 1344), (448, 896), (1, 2)),
        ((1024, 1024), (896, 896), (2, 2)),
        ((1000, 1000), (896, 896), (2, 2)),
        ((640, 480), (448, 448), (1, 1)),
        ((448, 448), (448, 448), (1, 1)),
        ((200, 150), (448, 448), (1, 1)),
        ((3000, 1000), (1344, 448), (3, 1)),
        ((800, 2000), (448, 1344), (1, 3)),
    ],
)
def test_spec_table(size: tuple[int, int], choice: tuple[int, int], tiles: tuple[int, int]) -> None:
    assert choose_resolution(size, CANDIDATES) == choice
    out = preprocess_anyres(Image.new("RGB", size))
    assert out.grid == tiles
    assert out.num_pictures == tiles[0] * tiles[1] + 1
    assert out.pixels.shape == (out.num_pictures, 3, 448, 448)
    assert out.pixels.dtype == torch.float32
    assert out.original_size == size


def test_smaller_of_the_two_rules_wins() -> None:
    # §9: Rule A gives (896, 896), Rule B gives (896, 448), the smaller wins.
    assert select_best_resolution((1344, 896), CANDIDATES) == (896, 896)
    assert select_best_resolution_v2((1344, 896), CANDIDATES) == (896, 448)
    # 640x480: A picks (896, 896) (no waste beats upscaling), B and the final choice (448, 448).
    assert select_best_resolution((640, 480), CANDIDATES) == (896, 896)
    assert choose_resolution((640, 480), CANDIDATES) == (448, 448)


def test_equal_areas_prefer_rule_a() -> None:
    # A small tall image fits both at full resolution: Rule A ties and keeps the first
    # candidate (wide), Rule B picks the tall one; equal areas, so Rule A's choice is kept.
    cands = [(896, 448), (448, 896)]
    assert select_best_resolution((100, 200), cands) == (896, 448)
    assert select_best_resolution_v2((100, 200), cands) == (448, 896)
    assert choose_resolution((100, 200), cands) == (896, 448)


def test_tiles_are_row_major_and_global_is_last() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    image = Image.new("RGB", (896, 896))
    for k, colour in enumerate(colours):
        image.paste(colour, ((k % 2) * 448, (k // 2) * 448, (k % 2 + 1) * 448, (k // 2 + 1) * 448))
    out = preprocess_anyres(image)  # 896x896 picks the 2x2 grid: no resampling of the tiles
    assert out.grid == (2, 2)
    for k, colour in enumerate(colours):
        torch.testing.assert_close(out.pixels[k], _expected(colour), rtol=0, atol=0)
    global_view = clip_transform(image.resize((448, 448), Image.Resampling.BICUBIC))
    torch.testing.assert_close(out.pixels[4], global_view, rtol=0, atol=0)


def test_global_view_alone_is_the_any_res_global_view() -> None:
    """A generated image sent back in an assistant turn: one picture, the any-res global view
    (BICUBIC 448x448, centre (0.5, 0.5)), bit for bit, whatever the image's size."""
    rng = np.random.default_rng(1)
    for size in ((500, 300), (1024, 1024), (448, 448)):
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        full, alone = preprocess_anyres(image), preprocess_global_view(image)
        assert alone.num_pictures == 1
        assert (alone.grid, alone.original_size) == ((0, 0), size)
        torch.testing.assert_close(alone.pixels[0], full.pixels[-1], rtol=0, atol=0)
        torch.testing.assert_close(alone.centres, full.centres[-1:], rtol=0, atol=0)


def test_stretch_and_global_view_use_bicubic() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
    out = preprocess_anyres(image)  # 500x300 -> (896, 448)
    stretched = image.resize((896, 448), Image.Resampling.BICUBIC)
    torch.testing.assert_close(out.pixels[1], clip_transform(stretched.crop((448, 0, 896, 448))))
    bicubic = clip_transform(image.resize((448, 448), Image.Resampling.BICUBIC))
    bilinear = clip_transform(image.resize((448, 448), Image.Resampling.BILINEAR))
    torch.testing.assert_close(out.pixels[-1], bicubic, rtol=0, atol=0)
    assert not torch.equal(out.pixels[-1], bilinear)


def test_worked_example_of_section_9() -> None:
    out = preprocess_anyres(_solid((10, 20, 30), (1344, 896)))
    assert out.pixels.shape == (3, 3, 448, 448)
    assert out.centres.tolist() == [[0.25, 0.5], [0.75, 0.5], [0.5, 0.5]]


@pytest.mark.parametrize(
    ("cols", "rows", "expected"),
    [
        (1, 1, [[0.5, 0.5], [0.5, 0.5]]),
        (2, 2, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75], [0.5, 0.5]]),
        (3, 1, [[1 / 6, 0.5], [0.5, 0.5], [5 / 6, 0.5], [0.5, 0.5]]),
        (1, 3, [[0.5, 1 / 6], [0.5, 0.5], [0.5, 5 / 6], [0.5, 0.5]]),
    ],
)
def test_tile_centres(cols: int, rows: int, expected: list[list[float]]) -> None:
    centres = tile_centres(cols, rows)
    assert centres.dtype == torch.float32
    torch.testing.assert_close(centres, torch.tensor(expected))


def test_normalisation_values() -> None:
    pixel = clip_transform(_solid((255, 0, 128)))
    assert pixel.shape == (3, 448, 448)
    torch.testing.assert_close(pixel, _expected((255, 0, 128)), rtol=0, atol=0)
    # Spot values, computed by hand: (1 - 0.48145466) / 0.26862954 and -0.4578275 / 0.26130258.
    assert pixel[0, 0, 0].item() == pytest.approx(1.9303361, abs=1e-6)
    assert pixel[1, 0, 0].item() == pytest.approx(-1.7520971, abs=1e-6)


def test_images_become_rgb_first() -> None:
    rgba = Image.new("RGBA", (448, 448), (200, 100, 50, 0))
    grey = Image.new("L", (448, 448), 77)
    assert torch.equal(
        preprocess_anyres(rgba).pixels, preprocess_anyres(_solid((200, 100, 50))).pixels
    )
    assert torch.equal(clip_transform(grey), _expected((77, 77, 77)))


def test_edit_grid_gives_two_identical_pictures() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 160, 3), np.uint8))
    out = preprocess_anyres(image, ARCH.edit_resolution_grids)
    assert out.grid == (1, 1)
    assert out.num_pictures == 2
    assert torch.equal(out.pixels[0], out.pixels[1])
    assert out.centres.tolist() == [[0.5, 0.5], [0.5, 0.5]]


def test_reconstruction_is_a_bilinear_stretch() -> None:
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (120, 200, 3), np.uint8))
    pixels = preprocess_reconstruction(image)
    assert pixels.shape == (1, 3, 448, 448)
    torch.testing.assert_close(
        pixels[0], clip_transform(image.resize((448, 448), Image.Resampling.BILINEAR))
    )


@pytest.mark.parametrize("spec", ["2", "x1", "0x1", "ax2", "2x-1", ""])
def test_bad_grid_strings_are_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match="grid"):
        parse_grid(spec)


def test_empty_image_is_rejected() -> None:
    with pytest.raises(ValueError, match="no pixels"):
        preprocess_anyres(Image.new("RGB", (0, 10)))
