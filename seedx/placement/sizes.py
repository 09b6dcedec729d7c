"""What each stage needs in GPU memory: weights, KV cache per token, diffusion activations.

Two sources, one shape. For a serving tree (``seedx plan --model DIR``) the weights are counted
from the safetensors shard headers (the 8-byte header length and the JSON header of each shard,
read with plain Python: no torch, no tensor data), the KV cache from each LLM's ``config.json``.
Without a tree, the released SEED-X-17B sizes are computed from the architecture:
:data:`RELEASED_LLAMA` (LLaMA-2-13B with SEED-X's 32,330-token vocabulary) and
``engine.arch.SeedXArch()``'s defaults for the ViT and the resamplers, the SDXL UNet and VAE
from their parameter counts. ``tests/unit/placement`` checks every count against the model
classes built on PyTorch's meta device, and the totals against docs/deploy.md.

Parameters are kept as counts, split by how the LLM worker holds them, because bytes depend on
the plan: the dtype it serves in, fp8 or not, how many GPUs share the LLaMA (tensor parallel).

* ``linear``: the decoder layers' projections (q, k, v, o, gate, up, down): split over the
  tensor-parallel ranks, and what vLLM's fp8 quantization turns into 1 byte per weight.
* ``vocab``: ``embed_tokens`` and ``lm_head``: split over the ranks (vocab-parallel), never fp8.
* ``replicated``: RMSNorms, the ViT, the resamplers and the tile embedding: every rank holds a
  full copy (they are plain PyTorch modules beside vLLM's LLaMA) in the serving dtype.

All memory figures are estimates of peaks, in bytes; GB in tables is 10**9 bytes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.arch import DetokenizerArch, ResamplerArch, SeedXArch, VitArch

MIB = 2**20

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
SERVING_DTYPE = "float16"
"""What a GPU plan serves in when the tree is stored in float32 (the CPU tests' trees)."""

# -- the constants of the estimates ---------------------------------------------------------

CUDA_CONTEXT_BYTES = 768 * MIB
"""Per process and GPU: the CUDA context, cuBLAS/cuDNN handles and workspaces. With CUDA 12's
lazy module loading a PyTorch process holds 0.4-0.6 GiB before its first tensor; rounded up."""

NCCL_BYTES = 512 * MIB
"""Per GPU of a tensor-parallel LLM (TP > 1): NCCL's communicator buffers and vLLM's custom
all-reduce buffers."""

LLM_OVERHEAD_BYTES = 2_500_000_000
"""Per GPU of an LLM worker, beside weights and KV cache: vLLM's activation peak (profiled with a
batch of ``max_num_batched_tokens`` and the ViT on a full grid of pictures), the sampler's
logits, and the CUDA graphs it captures (~0.5-1 GB). docs/deploy.md's sizing section uses the
same 2.5 GB (the middle of "~2-3 GB"); the GPU check is where it gets measured."""

TOKENS_PER_REQUEST = 512
"""KV tokens planned per concurrent request: a chat turn with one photo is 300-700 tokens (64 per
any-res tile; docs/deploy.md). An LLM's KV cache is at least ``capacity`` x this, and at least
one full ``max_model_len`` context (vLLM refuses to start with less)."""

UNET_ROW_BYTES_PER_LATENT_PIXEL = 15_000
"""SDXL UNet activations in fp16 with SDPA, per guidance row (a UNet batch row) and latent pixel
(an 8x8 block of the output). ``scripts/diffusion_activation_count.py`` counts every tensor alive
during one forward pass of the real SDXL UNet on PyTorch's meta device, SDPA holding only its
output as the memory-efficient kernel does: 0.165 GB at 1024x1024 (10,080 bytes a latent pixel;
0.048 GB and 11,761 at 512x512, where fixed parts weigh more). 15,000 is that times ~1.5 for what
the count cannot see: cuDNN convolution workspaces and allocator rounding. So a 1024x1024 image
costs 0.25 GB per row: 2 rows with classifier-free guidance (first_stage), 3 with the edit's
three-branch guidance (second_stage). An estimate: ``seedx bench gpu-check`` measures the peak
CUDA memory per batch size on a GPU."""

VAE_DECODE_BYTES_PER_LATENT_PIXEL = 216_000
"""SDXL VAE decode in fp32 (``force_upcast``: the worker keeps the VAE in fp32), per image and
latent pixel. Counted the same way: 3.22 GB for one 1024x1024 image (196,624 bytes a latent pixel
at 512x512 and 1024x1024 alike: the last up-block holds several [128, 1024, 1024] fp32 tensors),
times 1.1 for workspaces and rounding: 3.54 GB. The worker decodes ``decode_batch`` images at once
(4 by default), so at 1024x1024 this, not the UNet, is the diffusion worker's peak."""

VAE_TILE_SIDE = 1024
"""With VAE tiling (sides >= ``vae_tiling_min_side``, 2048 by default) diffusers decodes tiles of
SDXL's ``sample_size`` (1024 pixels a side) one at a time: the decode peak is a 1024x1024 one."""

# -- the released SEED-X-17B ----------------------------------------------------------------

SDXL_UNET_PARAMS = 2_567_463_684
"""``UNet2DConditionModel(**sdxl_unet_config())``: stabilityai/stable-diffusion-xl-base-1.0."""
SDXL_VAE_PARAMS = 83_653_863
"""``AutoencoderKL(**sdxl_vae_config())``, encoder included (edits encode their source)."""
SDXL_CONV_IN = (320, 3, 3)  # conv_in: 320 filters of 3x3 per input channel
STAGE_IN_CHANNELS = {"first_stage": 4, "second_stage": 8}
STAGE_GUIDANCE_ROWS = {"first_stage": 2, "second_stage": 3}
RELEASED_MODELS = ("seed-x", "seed-x-i", "seed-x-edit")
RELEASED_DTYPE = "float16"


@dataclass(frozen=True)
class LlamaShape:
    """The parts of a LLaMA ``config.json`` that size it."""

    hidden_size: int = 5120
    intermediate_size: int = 13824
    num_hidden_layers: int = 40
    num_attention_heads: int = 40
    num_key_value_heads: int = 40
    vocab_size: int = 32330  # LLaMA-2's 32,000 pieces + SEED-X's 330 image and box tokens
    head_dim: int = 0  # 0: hidden_size // num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LlamaShape:
        heads = int(config["num_attention_heads"])
        return cls(
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            vocab_size=int(config["vocab_size"]),
            head_dim=int(config.get("head_dim") or 0),
        )

    def linear_params(self) -> int:
        h, q, kv = self.hidden_size, self.num_attention_heads, self.num_key_value_heads
        attention = h * q * self.head_size * 2 + h * kv * self.head_size * 2  # q, o; k, v
        return self.num_hidden_layers * (attention + 3 * h * self.intermediate_size)

    def vocab_params(self) -> int:
        return 2 * self.vocab_size * self.hidden_size  # embed_tokens + lm_head (not tied)

    def norm_params(self) -> int:
        return (2 * self.num_hidden_layers + 1) * self.hidden_size


RELEASED_LLAMA = LlamaShape()


def _linear(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def resampler_params(arch: ResamplerArch) -> int:
    """``engine.resampler.Resampler``: queries, the sin-cos table (a stored parameter), kv_proj
    when the widths differ, one ``nn.MultiheadAttention`` and two LayerNorms."""
    e = arch.embed_dim
    tables = 2 * arch.grid * arch.grid * e
    kv_proj = arch.kv_dim * e if arch.kv_dim != e else 0
    return tables + kv_proj + (4 * e * e + 4 * e) + 4 * e


def vit_params(arch: VitArch) -> int:
    """``engine.vit.QwenViT``: patch conv, position table, 48 pre-LN blocks, attention pool."""
    w = arch.width
    block = 4 * w + _linear(w, 3 * w) + _linear(w, w) + _linear(w, arch.mlp_dim)
    block += _linear(arch.mlp_dim, w)
    pool = ResamplerArch(
        grid=arch.pool_grid, embed_dim=arch.output_dim, heads=arch.pool_heads, kv_dim=w
    )
    stem = 3 * w * arch.patch_size**2 + arch.pos_grid**2 * w + 2 * w
    head = 2 * arch.output_dim + arch.output_dim**2  # ln_post, proj
    return stem + arch.layers * block + resampler_params(pool) + head


def agent_params(arch: SeedXArch, llm_hidden: int) -> int:
    """``engine.agent.SeedXAgent``: both resamplers and the per-tile position embedding."""
    resamplers = resampler_params(arch.input_resampler) + resampler_params(arch.output_resampler)
    return resamplers + arch.patch_pos_rows * llm_hidden


def detokenizer_resampler_params(arch: DetokenizerArch) -> int:
    """``engine.detokenizer.ResamplerXLV2``: Perceiver layers, projections, attention pool."""
    d, inner = arch.dim, arch.dim_head * arch.heads
    attention = 4 * d + d * inner * 3 + inner * d  # two LayerNorms, to_q, to_kv, to_out
    feed_forward = 2 * d + 2 * d * d * arch.ff_mult
    pool = (arch.num_queries + 1) * d + 3 * _linear(d, d) + _linear(d, arch.output2_dim)
    return (
        arch.num_queries * d
        + _linear(arch.embedding_dim, d)
        + arch.depth * (attention + feed_forward)
        + 2 * d
        + _linear(d, arch.output1_dim)
        + _linear(d, arch.output2_dim)
        + pool
    )


# -- the sizes a plan works with ------------------------------------------------------------


@dataclass(frozen=True)
class LlmSize:
    """One LLM worker's model: parameter counts by how they are held, and its attention shape."""

    name: str
    linear_params: int
    vocab_params: int
    replicated_params: int
    stored_bytes: int  # on disk: sum of dtype size x elements over the shards
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int

    @property
    def params(self) -> int:
        return self.linear_params + self.vocab_params + self.replicated_params

    def weight_bytes_per_gpu(self, dtype_bytes: int, tp: int = 1, fp8: bool = False) -> int:
        """Weights one GPU holds with ``tp`` ranks (fp8: the linear layers at 1 byte each)."""
        linear = self.linear_params * (1 if fp8 else dtype_bytes)
        sharded = math.ceil((linear + self.vocab_params * dtype_bytes) / tp)
        return sharded + self.replicated_params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of every layer for one token, all ranks together (2 x L x kv heads x d x b);
        a rank of ``tp`` holds 1/tp of it (its share of the KV heads)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def tp_sizes(self) -> list[int]:
        """Tensor-parallel sizes vLLM accepts for it: powers of two up to 8 that divide the
        attention heads and the KV heads."""
        return [
            tp for tp in (1, 2, 4, 8) if self.attention_heads % tp == 0 and self.kv_heads % tp == 0
        ]


@dataclass(frozen=True)
class DetokenizerSize:
    """One diffusion worker's de-tokenizer: parameter counts of its parts."""

    stage: str
    unet_params: int
    vae_params: int
    resampler_params: int
    vit_params: int
    fixed_bytes: int  # held as stored whatever the dtype: the fp32 negative features
    vae_fp32: bool  # force_upcast: the worker keeps the VAE in fp32
    guidance_rows: int  # UNet rows per image: 2 (classifier-free), 3 (edits' three branches)

    def weight_bytes(self, dtype_bytes: int, load_vit: bool = True) -> int:
        vae = self.vae_params * (4 if self.vae_fp32 else dtype_bytes)
        vit = self.vit_params if load_vit else 0
        return (
            (self.unet_params + self.resampler_params + vit) * dtype_bytes + vae + self.fixed_bytes
        )


@dataclass(frozen=True)
class ModelSizes:
    """Every LLM and de-tokenizer a plan may place, and the dtype it serves them in."""

    source: str
    dtype: str
    llms: dict[str, LlmSize]
    detokenizers: dict[str, DetokenizerSize]

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


def latent_pixels(width: int, height: int) -> int:
    return (width // 8) * (height // 8)


def diffusion_activation_bytes(
    rows: int, width: int, height: int, max_batch: int, decode_batch: int, tiling_min_side: int
) -> int:
    """Peak activations of a diffusion worker beside its weights, at ``width`` x ``height``.

    ``max_batch`` images denoise in one UNet batch of ``rows`` rows each; then their latents are
    decoded ``decode_batch`` at a time. The two are added rather than maxed: PyTorch's caching
    allocator keeps the denoising loop's freed blocks, whose sizes differ from the decode's, so
    the decode cannot count on reusing them (it would, after a retry, at a cost; we plan without).
    """
    pixels = latent_pixels(width, height)
    unet = max_batch * rows * pixels * UNET_ROW_BYTES_PER_LATENT_PIXEL
    decode_pixels = pixels
    if tiling_min_side and max(width, height) >= tiling_min_side:
        decode_pixels = min(pixels, latent_pixels(VAE_TILE_SIDE, VAE_TILE_SIDE))
    decode = min(max_batch, decode_batch) * decode_pixels * VAE_DECODE_BYTES_PER_LATENT_PIXEL
    return unet + decode


def released_sizes(arch: SeedXArch | None = None, llama: LlamaShape = RELEASED_LLAMA) -> ModelSizes:
    """SEED-X-17B as released, served in float16: three LLMs of one size, two de-tokenizers."""
    arch = arch or SeedXArch()
    vit = vit_params(arch.vit)
    replicated = llama.norm_params() + vit + agent_params(arch, llama.hidden_size)
    params = llama.linear_params() + llama.vocab_params() + replicated
    llms = {
        name: LlmSize(
            name=name,
            linear_params=llama.linear_params(),
            vocab_params=llama.vocab_params(),
            replicated_params=replicated,
            stored_bytes=params * DTYPE_BYTES[RELEASED_DTYPE],
            layers=llama.num_hidden_layers,
            attention_heads=llama.num_attention_heads,
            kv_heads=llama.num_key_value_heads,
            head_dim=llama.head_size,
        )
        for name in RELEASED_MODELS
    }
    conv_in = SDXL_CONV_IN[0] * SDXL_CONV_IN[1] * SDXL_CONV_IN[2]
    negative = (arch.vit.pool_grid**2 + arch.detokenizer.num_queries) * arch.vit.output_dim * 4
    detokenizers = {
        stage: DetokenizerSize(
            stage=stage,
            unet_params=SDXL_UNET_PARAMS + (channels - 4) * conv_in,
            vae_params=SDXL_VAE_PARAMS,
            resampler_params=detokenizer_resampler_params(arch.detokenizer),
            vit_params=vit,
            fixed_bytes=negative,
            vae_fp32=True,
            guidance_rows=STAGE_GUIDANCE_ROWS[stage],
        )
        for stage, channels in STAGE_IN_CHANNELS.items()
    }
    return ModelSizes("released SEED-X-17B", RELEASED_DTYPE, llms, detokenizers)


# -- a serving tree, from its headers ------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: ``{name: {dtype, shape, data_offsets}}`` plus an
    optional ``__metadata__``. Reads 8 + header-length bytes; the tensor data is not touched."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100 * MIB:
            raise ValueError(f"{path}: not a safetensors file (header of {length} bytes)")
        header: dict[str, Any] = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


def _tensors_of_file(path: Path) -> dict[str, tuple[int, int]]:
    """``name -> (elements, stored bytes)`` of one safetensors file, from its header."""
    out = {}
    for name, info in read_safetensors_header(path).items():
        numel = math.prod(int(d) for d in info["shape"])
        out[name] = (numel, numel * SAFETENSORS_DTYPE_BYTES[info["dtype"]])
    return out


def _tensors(folder: Path) -> dict[str, tuple[int, int]]:
    """``name -> (elements, stored bytes)`` over every ``*.safetensors`` file of ``folder``."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no .safetensors files (run `seedx convert` first)")
    out: dict[str, tuple[int, int]] = {}
    for path in files:
        out.update(_tensors_of_file(path))
    return out


def _is_linear(name: str) -> bool:
    return name.startswith("model.layers.") and name.endswith("_proj.weight")


def _is_vocab(name: str) -> bool:
    return name in ("model.embed_tokens.weight", "lm_head.weight")


def read_llm(folder: Path, name: str) -> LlmSize:
    """An LLM folder of the serving layout: counts from its shard headers, shape from config."""
    config = json.loads((folder / "config.json").read_text())
    shape = LlamaShape.from_config(config)
    tensors = _tensors(folder)
    linear = sum(n for key, (n, _) in tensors.items() if _is_linear(key))
    vocab = sum(n for key, (n, _) in tensors.items() if _is_vocab(key))
    total = sum(n for n, _ in tensors.values())
    return LlmSize(
        name=name,
        linear_params=linear,
        vocab_params=vocab,
        replicated_params=total - linear - vocab,
        stored_bytes=sum(b for _, b in tensors.values()),
        layers=shape.num_hidden_layers,
        attention_heads=shape.num_attention_heads,
        kv_heads=shape.num_key_value_heads,
        head_dim=shape.head_size,
    )


def _count(folder: Path) -> int:
    return sum(n for n, _ in _tensors(folder).values()) if folder.is_dir() else 0


def read_detokenizer(folder: Path, stage: str) -> DetokenizerSize:
    """A de-tokenizer folder: unet/, vae/, resampler/, vit/ counted; the negative file as is."""
    manifest = json.loads((folder / "seedx_detokenizer.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    negative = folder / "negative.safetensors"
    fixed = sum(b for _, b in _tensors_of_file(negative).values()) if negative.is_file() else 0
    return DetokenizerSize(
        stage=stage,
        unet_params=_count(folder / "unet"),
        vae_params=_count(folder / "vae"),
        resampler_params=_count(folder / "resampler"),
        vit_params=_count(folder / "vit"),
        fixed_bytes=fixed,
        vae_fp32=bool(vae_config.get("force_upcast", False)),
        guidance_rows=3 if int(manifest.get("in_channels", 4)) == 8 else 2,
    )


def read_serving_tree(root: Path) -> ModelSizes:
    """Sizes of what ``seedx convert`` wrote under ``root`` (its ``seedx_serving.json``)."""
    path = root / "seedx_serving.json"
    if not path.is_file():
        raise ValueError(f"--model {root}: no seedx_serving.json (run `seedx convert` first)")
    manifest = json.loads(path.read_text())
    llms = {
        name: read_llm(root / entry["path"], name)
        for name, entry in sorted(manifest.get("models", {}).items())
    }
    detokenizers = {
        stage: read_detokenizer(root / entry["path"], stage)
        for stage, entry in sorted(manifest.get("detokenizers", {}).items())
    }
    stored = str(manifest.get("dtype", SERVING_DTYPE))
    dtype = stored if stored in ("float16", "bfloat16") else SERVING_DTYPE
    return ModelSizes(str(root), dtype, llms, detokenizers)
