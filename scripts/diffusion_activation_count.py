"""Counts the live activation bytes of the SDXL UNet and VAE decode, the basis of the diffusion
constants in ``seedx/placement/sizes.py``.

The real SDXL UNet (fp16) and VAE (fp32, as the worker holds it) are built on PyTorch's meta
device, so nothing is computed or allocated; a dispatch mode adds up the bytes of every tensor an
operator returns and subtracts them when the tensor dies, keeping the peak. SDPA is replaced by a
function returning an output-sized tensor: what the flash and memory-efficient kernels hold (no
sequence-by-sequence score matrix). What this cannot see: cuDNN workspaces, allocator rounding and
fragmentation; ``sizes.py`` adds a margin for those, and ``seedx bench gpu-check`` measures the
real peak on a GPU.

    python scripts/diffusion_activation_count.py    # ~15 s on 2 CPU cores

Printed on 2026-12-07 (diffusers 0.42, torch 2.13): one UNet row at 1024x1024 0.165 GB (512x512:
0.048 GB); one VAE decode at 1024x1024 3.221 GB (512x512: 0.805 GB).
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class LiveBytes(TorchDispatchMode):
    """The peak of the summed sizes of the storages that operators returned and are alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.refs: dict[int, int] = {}

    def _drop(self, key: int, size: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key, size = storage._cdata, storage.nbytes()
                if key not in self.refs:
                    self.refs[key] = 0
                    self.live += size
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(tensor, self._drop, key, size)
        return out


def _output_sized_sdpa(query: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.empty_like(query)


def unet_row_peak(unet: Any, side: int) -> int:
    latent = side // 8
    meta = {"device": "meta", "dtype": torch.float16}
    sample = torch.empty(1, unet.config.in_channels, latent, latent, **meta)
    states = torch.empty(1, 64, unet.config.cross_attention_dim, **meta)
    added = {"text_embeds": torch.empty(1, 1280, **meta), "time_ids": torch.empty(1, 6, **meta)}
    counter = LiveBytes()
    with torch.no_grad(), counter:
        unet(sample, torch.empty(1, device="meta"), states, added_cond_kwargs=added)
    return counter.peak


def decode_peak(vae: Any, side: int) -> int:
    latents = torch.empty(1, 4, side // 8, side // 8, device="meta", dtype=torch.float32)
    counter = LiveBytes()
    with torch.no_grad(), counter:
        vae.decode(latents)
    return counter.peak


def main() -> int:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from engine.checkpoint.sdxl import sdxl_unet_config, sdxl_vae_config

    F.scaled_dot_product_attention = _output_sized_sdpa
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sdxl_unet_config()).half().eval()
        vae = AutoencoderKL(**sdxl_vae_config()).float().eval()
    for side in (512, 1024):
        pixels = (side // 8) ** 2
        row, decode = unet_row_peak(unet, side), decode_peak(vae, side)
        print(
            f"{side}x{side}: UNet row {row / 1e9:.3f} GB ({row / pixels:,.0f} B/latent pixel), "
            f"VAE decode {decode / 1e9:.3f} GB ({decode / pixels:,.0f} B/latent pixel)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
