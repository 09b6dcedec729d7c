"""File names of the released SEED-X-17B tree (§6 of the model spec) and of our serving layout.

One module owns every path so that ``make-tiny``, ``convert`` and the loaders cannot drift apart.

Released tree (what ``seedx make-tiny`` writes and ``seedx convert`` reads)::

    SRC/
      seedx_arch.json                         only for non-17B sizes (engine/arch.py)
      cvlm_llama2_tokenizer_100img_and_224loc_addpatch/
          tokenizer.model added_tokens.json special_tokens_map.json tokenizer_config.json
      seed_x/ seed_x_i/ seed_x_edit/
          llm/    pytorch_model-0000k-of-0000N.bin, pytorch_model.bin.index.json,
                  config.json, generation_config.json   (config.json may sit in the model root)
          agent/  pytorch_model.bin                      (resamplers + patch_pos_embed)
      QwenViT/qwen_vit_G.pt
      seed_detokenizer/first_stage/pytorch_model.bin     (resampler + UNet to_k/to_v)
      seed_detokenizer/second_stage/pytorch_model.bin    (resampler + whole 8-channel UNet)
      stable-diffusion-xl-base-1.0/{unet,vae,scheduler}/

Serving tree (what ``seedx convert`` writes and the workers load)::

    OUT/
      seedx_serving.json                      manifest: models and de-tokenizers present
      seed-x-i/ seed-x/ seed-x-edit/          one HF-style folder per LLM (SeedXForCausalLM)
          config.json  model-0000k-of-0000N.safetensors  model.safetensors.index.json
          tokenizer.model added_tokens.json special_tokens_map.json tokenizer_config.json
      detokenizer/first_stage/ detokenizer/second_stage/
          seedx_detokenizer.json unet/ vae/ scheduler/ resampler/ vit/ negative.safetensors
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_DIR = "cvlm_llama2_tokenizer_100img_and_224loc_addpatch"
TOKENIZER_FILES = (
    "tokenizer.model",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
)

# Public model names (what API users write) and the released folder of each.
MODEL_FOLDERS: dict[str, str] = {
    "seed-x": "seed_x",
    "seed-x-i": "seed_x_i",
    "seed-x-edit": "seed_x_edit",
}
LLM_SUBDIR = "llm"
AGENT_FILE = "agent/pytorch_model.bin"
LLM_INDEX_FILE = "pytorch_model.bin.index.json"

VIT_FILE = "QwenViT/qwen_vit_G.pt"
SDXL_DIR = "stable-diffusion-xl-base-1.0"
DETOKENIZER_STAGES = ("first_stage", "second_stage")
RELEASED_DETOKENIZER_FILE = "seed_detokenizer/{stage}/pytorch_model.bin"

# Which de-tokenizer each LLM feeds (§6.5).
DETOKENIZER_FOR_MODEL: dict[str, str] = {
    "seed-x": "first_stage",
    "seed-x-i": "first_stage",
    "seed-x-edit": "second_stage",
}

SERVING_MANIFEST = "seedx_serving.json"
SERVING_DETOKENIZER_DIR = "detokenizer/{stage}"
DETOKENIZER_MANIFEST = "seedx_detokenizer.json"


def released_detokenizer_file(root: Path, stage: str) -> Path:
    return root / RELEASED_DETOKENIZER_FILE.format(stage=stage)


def serving_detokenizer_dir(root: Path, stage: str) -> Path:
    return root / SERVING_DETOKENIZER_DIR.format(stage=stage)
