"""``SeedXForCausalLM``: SEED-X as an out-of-tree vLLM multimodal model.

* Trunk: vLLM's own ``LlamaForCausalLM`` (paged attention, fused QKV/MLP, tensor parallel), fed
  embeddings; its output is the hidden state **after** the final RMSNorm, the tensor §5.2 reads.
* Encoder: ``engine.agent.PictureEncoder`` (Qwen ViT + input resampler + per-tile position
  embedding), the same module the PyTorch reference runs, so there is one implementation of
  "pixels to LLM input embeddings". It returns one ``[n * 64, hidden]`` tensor per user image.
* The output resampler (``encoder.agent.output_resampler``) lives here too, so the engine holds
  the only copy of every weight; ``engine.vllm_plugin.capture`` calls it on captured rows.
* Weights load from the serving layout: ``model.*``/``lm_head.*`` into the trunk, ``vit.*`` and
  ``agent.*`` into the encoder.

The encoder is deliberately not wrapped in ``_mark_tower_model``: vLLM would replace a tower
with a stub when images are disabled (``limit_mm_per_prompt={"image": 0}``), and the agent's
output resampler is needed by every generated image, images in or not.

Tensor parallelism and fp8 (``SEEDX_LLM_TENSOR_PARALLEL_SIZE``, ``SEEDX_LLM_QUANTIZATION``):

* Only the trunk is built from vLLM's layers and receives ``vllm_config`` (hence the parallel
  state and ``vllm_config.quant_config``): column/row-parallel attention and MLP, and a
  ``VocabParallelEmbedding``/``ParallelLMHead`` pair that pads SEED-X's 32330 rows to 32384 (a
  multiple of 64), splits them evenly over the ranks and gathers the logits back to 32330.
* The encoder and the output resampler are plain ``torch.nn`` modules built **without** the
  quant config: on every TP rank a full copy (vLLM's default loader copies their weights whole),
  each computing the same result, in the checkpoint's fp16/bf16 even under fp8. vLLM's online
  fp8 (``fp8_per_tensor``) quantizes only ``LinearBase`` layers created with the quant config,
  so it cannot reach them, and it must not: the ViT's picture embeddings and the output
  resampler's visual embedding are the image features checked against the PyTorch reference
  (``tests/integration/llm/test_parity.py``, docs/parity.md), and fp8 there would move every
  generated image, not just the trunk's token choices. ``tests/unit/llm/test_tensor_parallel.py``
  checks that no encoder module is one that online fp8 would quantize, and
  ``tests/integration/llm/test_tensor_parallel.py`` builds this class under fp8 engine arguments
  and finds vLLM's fp8 method on the trunk's linear layers only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from engine.agent import PictureEncoder, SeedXAgent
from engine.arch import NUM_QUERY_TOKENS, SeedXArch
from engine.vit import QwenViT
from engine.vllm_plugin.processor import (
    SeedXDummyInputsBuilder,
    SeedXMultiModalProcessor,
    SeedXProcessingInfo,
)


def _as_list(value: Any) -> list[torch.Tensor]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return list(value) if value.ndim == 3 else [value]
    return [t for item in value for t in _as_list(item)]


@MULTIMODAL_REGISTRY.register_processor(
    SeedXMultiModalProcessor, info=SeedXProcessingInfo, dummy_inputs=SeedXDummyInputsBuilder
)
class SeedXForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    """SEED-X LLM stage: LLaMA trunk + picture encoder + output resampler."""

    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
            "vit.": "encoder.vit.",
            "agent.": "encoder.agent.",
        }
    )

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        seedx = getattr(config, "seedx", None)
        if not isinstance(seedx, dict):
            raise ValueError("config.json has no 'seedx' section: run `seedx convert` first")
        self.config = config
        self.arch = SeedXArch.from_dict(seedx["arch"])
        # Plain torch modules, no quant config: replicated per TP rank, never fp8 (module doc).
        self.encoder = PictureEncoder(
            QwenViT(self.arch.vit), SeedXAgent(self.arch, config.hidden_size)
        )
        with self._mark_language_model(vllm_config):
            self.language_model = LlamaForCausalLM(
                vllm_config=vllm_config, prefix=maybe_prefix(prefix, "language_model")
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        # Prompts are token ids with the blocks expanded by our prompt builder; there is no
        # text placeholder to expand (vLLM's chat templating is not used for SEED-X).
        return None

    # -- multimodal ----------------------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object) -> tuple[torch.Tensor, ...]:
        """One ``[n_i * 64, hidden]`` tensor per image item, pictures in any-res order."""
        embeds = _as_list(kwargs.get("image_embeds"))
        if embeds:
            dtype = self.encoder.agent.patch_pos_embed.dtype
            return tuple(e.to(dtype).reshape(-1, e.shape[-1]) for e in embeds)
        pixels = kwargs.get("pixel_values")
        if pixels is None:
            return ()
        pixels = torch.cat(_as_list(pixels)) if not isinstance(pixels, torch.Tensor) else pixels
        centres = kwargs["image_centres"]
        centres = torch.cat(_as_list(centres)) if not isinstance(centres, torch.Tensor) else centres
        counts = [int(n) for n in torch.as_tensor(kwargs["num_pictures"]).flatten().tolist()]
        pictures = self.encoder(pixels, centres)  # [sum n_i, 64, hidden]
        if pictures.shape[0] != sum(counts):
            raise ValueError(f"{pictures.shape[0]} pictures for image counts {counts}")
        hidden = pictures.shape[-1]
        return tuple(p.reshape(n * NUM_QUERY_TOKENS, hidden) for p, n in _split(pictures, counts))

    # -- trunk ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        """Final-norm hidden states ``[tokens, hidden]`` (last PP rank)."""
        return self.language_model.model(  # type: ignore[no-any-return]
            input_ids, positions, intermediate_tensors, inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)  # type: ignore[no-any-return]

    @torch.no_grad()
    def visual_embedding(self, query_hidden: torch.Tensor) -> torch.Tensor:
        """Output resampler: ``[k, 64, hidden]`` final-norm rows -> ``[k, 64, D]`` (§5.2.4)."""
        return self.encoder.agent.visual_embedding(query_hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = AutoWeightsLoader(self)
        return loader.load_weights(weights, mapper=self.hf_to_vllm_mapper)


def _split(pictures: torch.Tensor, counts: list[int]) -> Iterable[tuple[torch.Tensor, int]]:
    start = 0
    for n in counts:
        yield pictures[start : start + n], n
        start += n
