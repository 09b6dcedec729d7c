"""The any-res rules of one served model: its grid set and base resolution (§4.1).

Shared by the vLLM processor (``engine.vllm_plugin.processor``), the prompt builder of the LLM
worker and any engine without vLLM: it imports nothing of vLLM, so the worker's job handler
runs where vLLM is not installed (the reference engine of the GPU check).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.anyres import candidate_resolutions, choose_resolution
from engine.arch import SeedXArch


@dataclass(frozen=True)
class ImageRules:
    """The any-res settings of one served model."""

    grids: tuple[str, ...]
    base_resolution: int

    def num_pictures(self, width: int, height: int) -> int:
        """Tiles of the chosen grid + the global view, without touching pixels (§4.2)."""
        candidates = candidate_resolutions(self.grids, self.base_resolution)
        w, h = choose_resolution((width, height), candidates)
        return (w // self.base_resolution) * (h // self.base_resolution) + 1

    def largest_size(self) -> tuple[int, int]:
        """An image size whose grid has the most tiles (profiling uses it)."""
        return max(
            candidate_resolutions(self.grids, self.base_resolution), key=lambda s: s[0] * s[1]
        )


def rules_from_seedx(seedx: Mapping[str, Any]) -> ImageRules:
    """The rules of the ``seedx`` section of a serving ``config.json`` (``seed-x-edit``: the 1x1
    grid only, §4.1)."""
    arch = SeedXArch.from_dict(seedx["arch"])
    grids = arch.edit_resolution_grids if seedx["model"] == "seed-x-edit" else arch.resolution_grids
    return ImageRules(tuple(grids), arch.base_resolution)
