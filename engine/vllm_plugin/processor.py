"""SEED-X's multimodal processor for vLLM: any-res pictures in, query slots located.

The multimodal item is **one image**. As pixels (a PIL image) it becomes ``n`` pictures
(any-res tiles + the global view, ``engine.anyres.preprocess_anyres``, §4) with their tile
centres; wrapped in :class:`~engine.anyres.GlobalViewImage` (a generated image sent back in an
assistant turn) it is the global view alone, one picture; as a precomputed embedding it is a
``[n * 64, hidden]`` tensor (``enable_mm_embeds``). The wrapper travels in the ordinary
``"image"`` list (vLLM leaves non-PIL items alone), so the item says what it is: the processor
cache, keyed per item, never needs the prompt or per-request kwargs to tell the two apart.
Callers give a global-view item its own ``multi_modal_uuids`` entry (the engine prefixes it),
or its cache entry would be shared with the same picture given as a user image.

Prompts are token ids built by our prompt builder (``engine.prompts.build_prompt``), with every
image block **already expanded** (``<patch>`` + 64 queries + ``</patch>`` per tile, then
``<img>`` + 64 + ``</img>``), so the ids are exactly SEED-X's trained ones and vLLM never
tokenizes. The prompt update is therefore an identity ``PromptReplacement``: its target and its
content are the item's own block, and ``select_token_ids(queries)`` marks only the 64-query runs
as embedding slots, so the markers keep their token embeddings (§3.3 ``ids_cmp_mask``). vLLM
matches items to blocks left to right, which is prompt order, as the reference scatters them.

The grid set is the model's (``seed-x-edit``: the 1x1 grid only, §4.1), read from the
``seedx`` section of ``config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import (
    ImageEmbeddingItems,
    ImageProcessorItems,
    MultiModalDataItems,
)
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    ProcessorInputs,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)

from engine.anyres import (
    AnyResImage,
    GlobalViewImage,
    preprocess_anyres,
    preprocess_global_view,
)
from engine.arch import NUM_QUERY_TOKENS
from engine.image_rules import ImageRules, rules_from_seedx
from engine.vllm_plugin.ids import SeedXTokenIds, token_ids_for


def image_rules(hf_config: Any) -> ImageRules:
    """The grid set of the model described by a serving ``config.json`` (``seedx`` section)."""
    seedx = getattr(hf_config, "seedx", None)
    if not isinstance(seedx, dict):
        raise ValueError("config.json has no 'seedx' section: is this a `seedx convert` folder?")
    return rules_from_seedx(seedx)


class SeedXProcessingInfo(BaseProcessingInfo):
    """What the processor needs to know about the served SEED-X model."""

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    @cached_property
    def token_ids(self) -> SeedXTokenIds:
        return token_ids_for(str(self.ctx.model_config.model))

    @cached_property
    def rules(self) -> ImageRules:
        return image_rules(self.get_hf_config())


class SeedXDummyInputsBuilder(BaseDummyInputsBuilder[SeedXProcessingInfo]):
    """Profiling inputs: images of the size whose grid has the most tiles."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""  # the processor builds the dummy prompt as ids (get_dummy_inputs)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any
    ) -> dict[str, Any]:
        width, height = self.info.rules.largest_size()
        count = mm_counts.get("image", 0)
        return {"image": self._get_dummy_images(width=width, height=height, num_images=count)}


class SeedXMultiModalProcessor(BaseMultiModalProcessor[SeedXProcessingInfo]):
    """Any-res pixels (or precomputed embeddings) per image; identity prompt updates."""

    # Prompts are ids and outputs are detokenized by our own SEED-X tokenizer (4.30.2 rules), so
    # the engine runs with ``skip_tokenizer_init=True``: nothing here may need vLLM's tokenizer.
    requires_tokenizer = False

    def get_dummy_inputs(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any
    ) -> ProcessorInputs:
        """The dummy prompt as ids (our blocks), so profiling never runs vLLM's tokenizer."""
        data = self.dummy_inputs.get_dummy_mm_data(seq_len, mm_counts, mm_options)
        items = self.info.parse_mm_data(data, validate=False)
        width, height = self.info.rules.largest_size()
        block = self.info.token_ids.image_block(self.info.rules.num_pictures(width, height))
        ids = [self.info.token_ids.bos] + block * mm_counts.get("image", 0)
        return ProcessorInputs(prompt=ids, mm_data_items=items)

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        images = hf_data.get("images") or []
        if not isinstance(images, Sequence):
            raise TypeError(f"images must be a list, got {type(images).__name__}")
        prepared = [self._preprocess(image) for image in images]
        return BatchFeature(
            {
                "pixel_values": torch.cat([p.pixels for p in prepared]),
                "image_centres": torch.cat([p.centres for p in prepared]),
                "num_pictures": torch.tensor([p.num_pictures for p in prepared]),
            }
        )

    def _preprocess(self, image: object) -> AnyResImage:
        rules = self.info.rules
        if isinstance(image, GlobalViewImage):
            return preprocess_global_view(image.image, rules.base_resolution)
        if not isinstance(image, Image.Image):
            raise TypeError(f"image items must be PIL images, got {type(image).__name__}")
        return preprocess_anyres(image, rules.grids, rules.base_resolution)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        sizes = hf_inputs.get("num_pictures", torch.empty(0, dtype=torch.long))
        return {
            "pixel_values": MultiModalFieldConfig.flat_from_sizes("image", sizes),
            "image_centres": MultiModalFieldConfig.flat_from_sizes("image", sizes),
            "num_pictures": MultiModalFieldConfig.batched("image"),
            "image_embeds": MultiModalFieldConfig.batched("image"),
        }

    def _item_pictures(self, mm_items: MultiModalDataItems, item_idx: int) -> int:
        items = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
        if isinstance(items, ImageEmbeddingItems):
            rows = items.get_feature_size(item_idx)
            if rows % NUM_QUERY_TOKENS:
                raise ValueError(
                    f"image_embeds item {item_idx} has {rows} rows, not a multiple of "
                    f"{NUM_QUERY_TOKENS} (one [64, hidden] block per picture)"
                )
            return rows // NUM_QUERY_TOKENS
        assert isinstance(items, ImageProcessorItems)
        item = items.get(item_idx)
        if isinstance(item, GlobalViewImage):
            return 1
        size = items.get_image_size(item_idx)
        return self.info.rules.num_pictures(size.width, size.height)

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        ids = self.info.token_ids

        def block(item_idx: int) -> list[int]:
            return ids.image_block(self._item_pictures(mm_items, item_idx))

        def slots(item_idx: int) -> PromptUpdateDetails:
            return PromptUpdateDetails.select_token_ids(block(item_idx), list(ids.queries))

        return [PromptReplacement(modality="image", target=block, replacement=slots)]
