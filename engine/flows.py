"""The four SEED-X flows of §5 end to end on the reference: chat, image, edit, variation.

``seedx run`` and the tests call these. Each flow can record its intermediate tensors in a
``TensorDump`` (``--dump DIR``), the first thing to compare when a serving path disagrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from engine.anyres import AnyResImage, preprocess_anyres
from engine.arch import IMAGE_BLOCK_TOKENS
from engine.boxes import Box, parse_boxes_from_ids
from engine.pipeline_inputs import EditJob, GenerateJob
from engine.pipelines import DetokenizerPipeline
from engine.prompts import (
    ImageInput,
    Template,
    Turn,
    build_prompt,
    chat_template,
    edit_template,
    text_to_image_template,
)
from engine.reference import Generation, SeedXReference
from engine.sampling import SamplingJob, SamplingOptions


@dataclass
class TensorDump:
    """Named tensors of one run, written as one safetensors file."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors[name] = tensor.detach().to("cpu").contiguous()

    def save(self, directory: Path, name: str) -> Path:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.safetensors"
        save_file(dict(sorted(self.tensors.items())), str(path))
        return path


@dataclass
class ChatResult:
    text: str
    boxes: list[Box]
    generation: Generation


def _encode_images(
    reference: SeedXReference, images: list[AnyResImage], dump: TensorDump | None
) -> torch.Tensor | None:
    if not images:
        return None
    pixels = torch.cat([image.pixels for image in images])
    centres = torch.cat([image.centres for image in images])
    encoder = reference.encoder
    with torch.no_grad():
        vit = encoder.vit(pixels.to(reference.device))
        pictures = encoder.encode_features(vit, centres).to(reference.dtype)
    if dump is not None:
        dump.add("pictures", pixels)
        dump.add("tile_centres", centres)
        dump.add("vit_features", vit)
        dump.add("input_resampler_features", pictures)
    return pictures


def _generate(
    reference: SeedXReference,
    template: Template,
    images: list[AnyResImage],
    max_new_tokens: int,
    dump: TensorDump | None,
    *,
    need_image: bool,
) -> Generation:
    prompt = build_prompt(reference.tokenizer, template)
    pictures = _encode_images(reference, images, dump)
    # A request that must return an image opens one, if the model has not, while a whole image
    # block still fits in the budget. A model that answers with an image by itself (the real
    # SEED-X-I and -Edit do) is never affected; random tiny weights rely on it.
    force_after = max(0, max_new_tokens - IMAGE_BLOCK_TOKENS) if need_image else None
    generation = reference.generate(
        list(prompt.ids), pictures, max_new_tokens=max_new_tokens, force_image_after=force_after
    )
    if dump is not None:
        dump.add("prompt_ids", torch.tensor(prompt.ids))
        dump.add("output_ids", torch.tensor(generation.output_ids))
        for i, image in enumerate(generation.images):
            dump.add(f"llm_query_hidden.{i}", image.query_hidden)
            dump.add(f"visual_embedding.{i}", image.embedding)
    return generation


def chat(
    reference: SeedXReference,
    images: list[Image.Image],
    prompt: str,
    max_new_tokens: int = 512,
    dump: TensorDump | None = None,
) -> ChatResult:
    """Comprehension (§5.1): text plus boxes in pixels of the first image."""
    model = reference.folder.model
    arch = reference.folder.arch
    grids = arch.edit_resolution_grids if model == "seed-x-edit" else arch.resolution_grids
    prepared = [preprocess_anyres(image, grids, arch.base_resolution) for image in images]
    turn = Turn("user", prompt, tuple(ImageInput(p.num_pictures) for p in prepared))
    generation = _generate(
        reference, chat_template(model, [turn]), prepared, max_new_tokens, dump, need_image=False
    )
    tok = reference.tokenizer
    boxes = (
        parse_boxes_from_ids(generation.output_ids, tok, prepared[0].original_size)
        if prepared
        else []
    )
    return ChatResult(tok.display_text(generation.output_ids), boxes, generation)


def _sample(
    pipeline: DetokenizerPipeline,
    jobs: list[SamplingJob],
    options: SamplingOptions,
    dump: TensorDump | None,
) -> Image.Image:
    latents = pipeline.sample(jobs, options)
    if dump is not None:
        job = jobs[0]
        dump.add(
            "unet.prompt_embeds",
            torch.cat([job.negative.prompt_embeds, job.positive.prompt_embeds]),
        )
        dump.add("unet.pooled", torch.cat([job.negative.pooled, job.positive.pooled]))
        h, w = options.height, options.width
        dump.add("unet.time_ids", torch.tensor([[h, w, 0, 0, h, w]] * 2, dtype=torch.float32))
        if job.condition_latent is not None:
            dump.add("unet.condition_latent", job.condition_latent)
        dump.add("final_latents", latents)
    return pipeline.decode(latents)[0]


def _first_embedding(generation: Generation) -> torch.Tensor:
    if not generation.images:
        raise RuntimeError("the model produced no image (max_new_tokens too small?)")
    return generation.images[0].embedding[None]


def text_to_image(
    reference: SeedXReference,
    pipeline: DetokenizerPipeline,
    prompt: str,
    options: SamplingOptions,
    *,
    seed: int | None = None,
    guidance_scale: float = 7.5,
    max_new_tokens: int = 120,
    dump: TensorDump | None = None,
) -> Image.Image:
    """§5.2: LLM -> 64 query rows -> visual embedding -> de-tokenizer (first stage)."""
    options.validate()
    template = text_to_image_template(reference.folder.model, prompt)
    generation = _generate(reference, template, [], max_new_tokens, dump, need_image=True)
    jobs = pipeline.prepare_generate(
        [GenerateJob(_first_embedding(generation), seed, guidance_scale)]
    )
    return _sample(pipeline, jobs, options, dump)


def edit(
    reference: SeedXReference,
    pipeline: DetokenizerPipeline,
    source: Image.Image,
    instruction: str,
    options: SamplingOptions,
    *,
    seed: int | None = 42,
    guidance_scale: float = 7.5,
    image_guidance_scale: float = 1.5,
    max_new_tokens: int = 512,
    dump: TensorDump | None = None,
) -> Image.Image:
    """§5.3: SEED-X-Edit on the 1x1-grid source, then the second-stage de-tokenizer."""
    options.validate()
    arch = reference.folder.arch
    prepared = preprocess_anyres(source, arch.edit_resolution_grids, arch.base_resolution)
    template = edit_template(instruction, prepared.num_pictures)
    generation = _generate(reference, template, [prepared], max_new_tokens, dump, need_image=True)
    job = EditJob(_first_embedding(generation), source, seed, guidance_scale, image_guidance_scale)
    return _sample(pipeline, pipeline.prepare_edit([job], options), options, dump)


def variation(
    pipeline: DetokenizerPipeline,
    image: Image.Image,
    options: SamplingOptions,
    *,
    seed: int | None = None,
    guidance_scale: float = 7.5,
    dump: TensorDump | None = None,
) -> Image.Image:
    """§5.4: the image re-drawn from its own 256 ViT tokens (first stage)."""
    from engine.pipeline_inputs import ReconstructJob

    jobs = pipeline.prepare_reconstruct(
        [ReconstructJob(image, None, seed, guidance_scale)], options
    )
    return _sample(pipeline, jobs, options, dump)
