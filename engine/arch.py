"""Architecture hyper-parameters of the SEED-X family that are not in the LLaMA ``config.json``.

The released SEED-X-17B tree carries no file describing the ViT, the resamplers or the
de-tokenizer adapter: their sizes live in the original repository's yaml files. We keep them here
as frozen dataclasses whose defaults are SEED-X-17B's (``docs/model.md`` §2).

A smaller model (the tiny random-weight checkpoints of ``seedx make-tiny``) writes an arch file
``seedx_arch.json`` at the root of its tree. With it any tree in the released layout loads,
whoever wrote it; without it a loader falls back to SEED-X-17B's values. The LLaMA itself is
always described by its own ``llm/config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARCH_FILE_NAME = "seedx_arch.json"

# Fixed by the vocabulary and the prompt format, not by model size: 64 query tokens per picture
# (<img_00000>..<img_00063>) and pictures of 448x448 pixels for the any-res grids.
NUM_QUERY_TOKENS = 64
IMAGE_BLOCK_TOKENS = NUM_QUERY_TOKENS + 2  # <img> + 64 queries + </img>


@dataclass(frozen=True)
class VitArch:
    """Qwen-VL ViT-bigG with attention pool (§2.1). Output: ``[n, pool_grid**2, output_dim]``."""

    image_size: int = 448  # input side in pixels; every any-res picture has this size
    patch_size: int = 14  # conv1 kernel and stride; image_size/patch_size = 32 patches a side
    width: int = 1664  # trunk channels
    layers: int = 48  # pre-LN residual blocks
    heads: int = 16  # trunk attention heads (head dim = width / heads = 104)
    mlp_dim: int = 8192  # c_fc output channels (int(1664 * 4.9231))
    output_dim: int = 4096  # attention-pool embed dim, ln_post and proj width
    pool_heads: int = 32  # attention-pool heads (head dim 128)
    pos_grid: int = 16  # side of the stored positional_embedding table (resized to the patch grid)
    pool_grid: int = 16  # side of the attention-pool query grid (256 output tokens)
    ln_eps: float = 1e-6  # every LayerNorm of the ViT

    @property
    def num_patches_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_output_tokens(self) -> int:
        return self.pool_grid * self.pool_grid


@dataclass(frozen=True)
class ResamplerArch:
    """Qwen-style one-layer cross-attention resampler (§2.2, §2.5): 64 queries, no FFN."""

    grid: int = 8  # query grid side: grid**2 = 64 queries
    embed_dim: int = 5120  # query/output channels
    heads: int = 32  # nn.MultiheadAttention heads
    kv_dim: int = 4096  # input channels (kv_proj maps kv_dim -> embed_dim)
    ln_eps: float = 1e-5  # ln_q, ln_kv (PyTorch default: the yaml passes no norm layer)


@dataclass(frozen=True)
class DetokenizerArch:
    """ResamplerXLV2 of the SDXL de-tokenizer (§2.6) and the UNet conditioning it feeds."""

    dim: int = 1024  # Perceiver width
    depth: int = 4  # Perceiver layers (attention + FF each)
    dim_head: int = 64  # Perceiver head size
    heads: int = 16  # Perceiver heads
    num_queries: int = 64  # learned latents
    embedding_dim: int = 4096  # input feature channels (= ViT output_dim)
    output1_dim: int = 768  # CLIP-L part of the cross-attention states
    output2_dim: int = 1280  # OpenCLIP-bigG part; also the pooled text embedding width
    ff_mult: int = 4  # FF hidden = dim * ff_mult
    pool_heads: int = 16  # heads of the AttentionPool2d producing the pooled vector
    normalize: bool = False  # "no_normalize" configs: no F.normalize on the input (§8.3)
    ln_eps: float = 1e-5

    @property
    def cross_attention_dim(self) -> int:
        return self.output1_dim + self.output2_dim


@dataclass(frozen=True)
class SeedXArch:
    """Everything outside ``llm/config.json`` that sizes a SEED-X tree. Defaults: SEED-X-17B."""

    vit: VitArch = field(default_factory=VitArch)
    input_resampler: ResamplerArch = field(default_factory=ResamplerArch)
    output_resampler: ResamplerArch = field(
        default_factory=lambda: ResamplerArch(embed_dim=4096, heads=32, kv_dim=5120)
    )
    detokenizer: DetokenizerArch = field(default_factory=DetokenizerArch)
    patch_pos_rows: int = 4  # rows of patch_pos_embed: weights [x, y, 1-x, 1-y] / 2 (§2.3)
    base_resolution: int = 448  # side of one any-res tile
    resolution_grids: tuple[str, ...] = ("1x1", "1x2", "1x3", "2x1", "3x1", "1x4", "4x1", "2x2")
    edit_resolution_grids: tuple[str, ...] = ("1x1",)
    default_image_size: int = 1024  # de-tokenizer output side used by the reference

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedXArch:
        """Builds an arch from a (possibly partial) dict; unknown keys are an error, not ignored."""
        data = dict(data)
        kwargs: dict[str, Any] = {}
        sub = {
            "vit": VitArch,
            "input_resampler": ResamplerArch,
            "output_resampler": ResamplerArch,
            "detokenizer": DetokenizerArch,
        }
        defaults = cls()
        for name, klass in sub.items():
            if name in data:
                base = dataclasses.asdict(getattr(defaults, name))
                given = data.pop(name)
                unknown = set(given) - set(base)
                if unknown:
                    raise ValueError(
                        f"{ARCH_FILE_NAME}: unknown keys in {name!r}: {sorted(unknown)}"
                    )
                base.update(given)
                kwargs[name] = klass(**base)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{ARCH_FILE_NAME}: unknown keys: {sorted(unknown)}")
        for key, value in data.items():
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / ARCH_FILE_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SeedXArch:
        """Reads ``seedx_arch.json`` from a tree root; SEED-X-17B's values when it is absent."""
        path = Path(directory) / ARCH_FILE_NAME
        if not path.is_file():
            return cls()
        return cls.from_dict(json.loads(path.read_text()))


def tiny_arch(llm_hidden: int = 128) -> SeedXArch:
    """Sizes of the tiny random-weight checkpoints: every head is 64 wide (vLLM CPU kernels)."""
    vit_out = 128
    return SeedXArch(
        vit=VitArch(width=64, layers=2, heads=1, mlp_dim=128, output_dim=vit_out, pool_heads=2),
        input_resampler=ResamplerArch(embed_dim=llm_hidden, heads=2, kv_dim=vit_out),
        output_resampler=ResamplerArch(embed_dim=vit_out, heads=2, kv_dim=llm_hidden),
        detokenizer=DetokenizerArch(
            dim=64,
            depth=2,
            dim_head=32,
            heads=2,
            embedding_dim=vit_out,
            output1_dim=32,
            output2_dim=64,
            pool_heads=2,
        ),
    )
