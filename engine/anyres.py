"""Any-resolution preprocessing (model spec §4), as ``src/inference/any_res.py`` does it.

An image of any size becomes ``n`` pictures of 448x448 for the ViT: the image stretched (no
padding, aspect ratio not kept) to the chosen grid and cut into row-major tiles, then the whole
original stretched to 448x448 as the global view, last. Each picture gets a normalised centre
for the per-tile position embedding (§2.3); the global view's is (0.5, 0.5). An image the model
generated, sent back in an assistant turn, is its global view alone (:class:`GlobalViewImage`).

Images are converted to RGB first, as the SEED-X scripts do with ``Image.open(p).convert("RGB")``
(alpha is dropped, not composited; no EXIF rotation is applied, matching the reference). Every
resize names its filter: BICUBIC for the any-res stretch and the global view (Pillow's default in
the reference), BILINEAR for the §4.4 ``Resize`` (torchvision's default on PIL images, which
calls ``PIL.Image.resize``; torchvision itself is not a dependency).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from engine.arch import SeedXArch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DEFAULT = SeedXArch()


@dataclass(frozen=True)
class AnyResImage:
    """The ViT input of one image."""

    pixels: torch.Tensor  # [n, 3, S, S] float32, CLIP-normalised; tiles row-major, global last
    centres: torch.Tensor  # [n, 2] float32 (x, y) in [0, 1], same order
    grid: tuple[int, int]  # (columns, rows) of tiles; (0, 0): the global view alone
    original_size: tuple[int, int]  # (width, height) of the input image

    @property
    def num_pictures(self) -> int:
        return int(self.pixels.shape[0])


def parse_grid(spec: str) -> tuple[int, int]:
    """``"AxB"`` -> (A columns, B rows)."""
    cols, sep, rows = spec.partition("x")
    if not (sep and cols.isdigit() and rows.isdigit() and int(cols) > 0 and int(rows) > 0):
        raise ValueError(f"grid must look like '2x1', got {spec!r}")
    return int(cols), int(rows)


def candidate_resolutions(grids: Sequence[str], base: int) -> list[tuple[int, int]]:
    """§4.1: each grid ``"AxB"`` becomes the candidate (width, height) = (A·base, B·base)."""
    return [(cols * base, rows * base) for cols, rows in map(parse_grid, grids)]


def select_best_resolution(
    size: tuple[int, int], candidates: Sequence[tuple[int, int]]
) -> tuple[int, int]:
    """Rule A (LLaVA-NeXT): most effective resolution, then least waste, then first."""
    width, height = size
    best, best_eff, best_waste = candidates[0], 0, float("inf")
    for w, h in candidates:
        scale = min(w / width, h / height)
        eff = min(int(width * scale) * int(height * scale), width * height)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (w, h), eff, waste
    return best


def select_best_resolution_v2(
    size: tuple[int, int], candidates: Sequence[tuple[int, int]]
) -> tuple[int, int]:
    """Rule B: closest aspect ratio, then closest area, then first."""
    width, height = size
    ratio, area = height / width, width * height
    best, best_d, best_r = candidates[0], float("inf"), float("inf")
    for w, h in candidates:
        d = max(h / w, ratio) / min(h / w, ratio)
        r = max(w * h, area) / min(w * h, area)
        if d < best_d or (d == best_d and r < best_r):
            best, best_d, best_r = (w, h), d, r
    return best


def choose_resolution(
    size: tuple[int, int], candidates: Sequence[tuple[int, int]]
) -> tuple[int, int]:
    """§4.2: the smaller of Rule A's and Rule B's choices, Rule A's on equal areas."""
    if not candidates:
        raise ValueError("no candidate resolutions")
    a = select_best_resolution(size, candidates)
    b = select_best_resolution_v2(size, candidates)
    return b if a[0] * a[1] > b[0] * b[1] else a


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as the scripts' ``convert("RGB")``; rejects empty images early."""
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels: {image.size}")
    return image if image.mode == "RGB" else image.convert("RGB")


def clip_transform(image: Image.Image, size: int = _DEFAULT.base_resolution) -> torch.Tensor:
    """§4.4: ``Resize((size, size))`` bilinear, ``ToTensor``, CLIP ``Normalize`` -> [3, S, S].

    The arithmetic is torchvision's (uint8 -> float32 / 255, then in-place sub mean, div std),
    so values are bit-identical. The resize is a no-op for pictures already at ``size``.
    """
    image = to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
    array = np.array(image, dtype=np.uint8, copy=True)  # [H, W, 3]
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std)


def tile_centres(cols: int, rows: int) -> torch.Tensor:
    """§4.3 step 5: ((c+0.5)/cols, (r+0.5)/rows) row-major, then (0.5, 0.5) for the global view."""
    x = (torch.arange(cols).repeat(rows, 1) + 0.5) / cols
    y = (torch.arange(rows).unsqueeze(1).repeat(1, cols) + 0.5) / rows
    tiles = torch.stack([x, y], dim=-1).flatten(0, 1)
    return torch.cat([tiles, torch.tensor([[0.5, 0.5]])], dim=0)


def preprocess_anyres(
    image: Image.Image,
    grids: Sequence[str] = _DEFAULT.resolution_grids,
    base_resolution: int = _DEFAULT.base_resolution,
) -> AnyResImage:
    """§4: choose the grid, stretch (BICUBIC), cut row-major tiles, append the global view.

    Comprehension uses ``arch.resolution_grids``; SEED-X-Edit passes
    ``arch.edit_resolution_grids`` (1x1: one tile plus the global view, identical pixels).
    """
    image = to_rgb(image)
    width, height = choose_resolution(image.size, candidate_resolutions(grids, base_resolution))
    stretched = image.resize((width, height), Image.Resampling.BICUBIC)
    pictures = [
        stretched.crop((left, top, left + base_resolution, top + base_resolution))
        for top in range(0, height, base_resolution)
        for left in range(0, width, base_resolution)
    ]
    pictures.append(global_view(image, base_resolution))
    pixels = torch.stack([clip_transform(p, base_resolution) for p in pictures])
    cols, rows = width // base_resolution, height // base_resolution
    return AnyResImage(pixels, tile_centres(cols, rows), (cols, rows), image.size)


def global_view(image: Image.Image, base_resolution: int = _DEFAULT.base_resolution) -> Image.Image:
    """§4.3 step 3: the whole image stretched to ``base x base`` (BICUBIC), the last picture."""
    return to_rgb(image).resize((base_resolution, base_resolution), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class GlobalViewImage:
    """An image written into the prompt as its global view only: one ``<img>`` block.

    That is how a picture the model generated sits in the history when a client sends the
    assistant's answer back (``engine.prompts``: an assistant image is ``ImageInput(1)``). The
    reference's generated block had no tiles, so none are added when it returns as input.
    """

    image: Image.Image

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def preprocess_global_view(
    image: Image.Image, base_resolution: int = _DEFAULT.base_resolution
) -> AnyResImage:
    """One picture: the any-res global view of ``image`` with centre (0.5, 0.5), no tiles.

    Pixel for pixel the last picture :func:`preprocess_anyres` makes of the same image.
    """
    image = to_rgb(image)
    pixels = clip_transform(global_view(image, base_resolution), base_resolution).unsqueeze(0)
    return AnyResImage(pixels, torch.tensor([[0.5, 0.5]]), (0, 0), image.size)


def preprocess_reconstruction(
    image: Image.Image, size: int = _DEFAULT.base_resolution
) -> torch.Tensor:
    """§5.4 input of the de-tokenizer reconstruction: the whole image through §4.4 -> [1,3,S,S].

    A bilinear stretch to ``size`` (not the any-res path), as ``eval_seed_x_detokenizer.py``.
    """
    return clip_transform(image, size).unsqueeze(0)
