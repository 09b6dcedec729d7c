"""The SEED-X de-tokenizer pipelines on diffusers components (§5.2 step 5, §5.3, §5.4).

``DetokenizerPipeline`` receives its parts typed, as a diffusers pipeline does, and offers what
its UNet allows:

* first stage (4-channel UNet, SDXL with replaced k/v): ``generate`` and ``reconstruct``;
* second stage (8-channel UNet): ``edit`` and conditioned ``reconstruct``.

Every entry point has a batch form taking independent jobs (own embedding, seed and guidance;
shared ``SamplingOptions``) that run in one UNet batch through ``engine.sampling.sample``; the
single-image forms are that with one job. Each visual embedding goes through the resampler as
its own row with its own negative, never split out of a concatenation (hazard §8.6).

The negative conditioning (resampler of ViT(zeros), pooled or not) is computed once per pipeline
and cached; a serving folder ships the ViT(zeros) features precomputed, so generation and edit
need no ViT at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from engine.anyres import preprocess_reconstruction
from engine.detokenizer import ResamplerXLV2
from engine.image_output import tensor_to_images
from engine.pipeline_inputs import (
    EditJob,
    GenerateJob,
    NegativeFeatures,
    ReconstructJob,
    check_image_embeds,
    check_jobs,
    compute_negative_features,
    vae_pixels,
)
from engine.sampling import (
    BatchStepCallback,
    Conditioning,
    ParameterError,
    SamplingJob,
    SamplingOptions,
    StepCallback,
    resolve_seed,
)
from engine.schedulers import make_scheduler
from engine.step_batch import BatchResult, StepBatch, sample, sample_batch
from engine.vit import QwenViT

logger = logging.getLogger(__name__)

STAGE_CHANNELS = {"first_stage": 4, "second_stage": 8}


class DetokenizerPipeline:
    """SDXL UNet + VAE + scheduler config + ResamplerXLV2 (+ ViT for reconstruction).

    ``scheduler`` supplies the stored config; each run builds a fresh scheduler of the
    requested name from it (schedulers are stateful). With ``force_upcast`` the VAE is moved
    to fp32 once here, so encode and decode always run in fp32 as in the reference.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
        resampler: ResamplerXLV2,
        vit: QwenViT | None = None,
        negative: NegativeFeatures | None = None,
    ) -> None:
        in_channels = unet.config.in_channels
        if in_channels not in STAGE_CHANNELS.values():
            raise ValueError(f"UNet in_channels must be 4 or 8, got {in_channels}")
        if 2 ** (len(vae.config.block_out_channels) - 1) != 8:
            raise ValueError("the VAE must downsample by 8 (SDXL latents are h/8 x w/8)")
        if vit is None and negative is None:
            raise ValueError("give `vit` or precomputed `negative` features")
        self.unet = unet.eval()
        self.vae = vae.eval()
        if vae.config.force_upcast:
            self.vae.float()  # nn.Module.float: diffusers' `to(dtype)` logs a spurious warning
        self.scheduler_config = dict(scheduler.config)
        self.resampler = resampler.eval()
        self.vit = vit.eval() if vit is not None else None
        self._negative = negative
        self._negative_cond: dict[bool, Conditioning] = {}

    @property
    def stage(self) -> str:
        return "second_stage" if self.unet.config.in_channels == 8 else "first_stage"

    # The first parameter's device and dtype: diffusers' ``ModelMixin.device``/``dtype`` walk
    # every module (about 14 ms a call on the tiny UNet, paid per job prepared and per join).
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # --- conditioning -------------------------------------------------------------------

    def negative_features(self) -> NegativeFeatures:
        """ViT(zeros) features, computed at most once (or as given to the constructor)."""
        if self._negative is None:
            assert self.vit is not None
            self._negative = compute_negative_features(self.vit)
        return self._negative

    def negative_conditioning(self, pooled: bool) -> Conditioning:
        """Resampler output of the pooled (64-token) or unpooled (256-token) negative, cached."""
        cached = self._negative_cond.get(pooled)
        if cached is None:
            features = self.negative_features()
            cached = self.encode(features.pooled if pooled else features.tokens)[0]
            self._negative_cond[pooled] = cached
        return cached

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> list[Conditioning]:
        """ResamplerXLV2 on ``[n, L, D]`` features -> one ``Conditioning`` per row."""
        features = features.to(self.resampler.proj_in.weight.device)
        prompt_embeds, pooled = self.resampler(features)
        prompt_embeds, pooled = prompt_embeds.to(self.dtype), pooled.to(self.dtype)
        return [
            Conditioning(prompt_embeds[i : i + 1], pooled[i : i + 1]) for i in range(len(features))
        ]

    @torch.no_grad()
    def encode_condition(
        self, images: Sequence[Image.Image], height: int, width: int
    ) -> torch.Tensor:
        """VAE mode latents of the stretched images, fp32 encode, *not* scaled (§2.7, §8.4)."""
        pixels = vae_pixels(list(images), height, width).to(self.vae.device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode()
        return latents.to(self.device, self.dtype)

    @torch.no_grad()
    def vit_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """256 unpooled ViT tokens per image after the whole-image bilinear transform (§5.4)."""
        if self.vit is None:
            raise ValueError("reconstruction needs the ViT: load the pipeline with its vit/")
        side = self.vit.arch.image_size
        pixels = torch.cat([preprocess_reconstruction(image, side) for image in images])
        return self.vit(pixels.to(self.vit.conv1.weight.device))

    # --- sampling and decoding ----------------------------------------------------------

    def sample(
        self,
        jobs: Sequence[SamplingJob],
        options: SamplingOptions,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Final latents ``[n, 4, h/8, w/8]`` of prepared jobs (see ``engine.sampling``)."""
        options.validate()
        scheduler = make_scheduler(options.scheduler, self.scheduler_config)
        return sample(self.unet, scheduler, jobs, options, callback)

    def sample_batch(
        self,
        jobs: Sequence[SamplingJob],
        options: SamplingOptions,
        on_step: BatchStepCallback | None = None,
    ) -> BatchResult:
        """``sample`` where ``on_step`` may drop jobs between steps (``engine.sampling``)."""
        options.validate()
        scheduler = make_scheduler(options.scheduler, self.scheduler_config)
        return sample_batch(self.unet, scheduler, jobs, options, on_step)

    def step_batch(self, options: SamplingOptions) -> StepBatch[Any]:
        """An empty step-level batch for ``options`` (jobs join it between steps)."""
        return StepBatch(
            self.unet, make_scheduler(options.scheduler, self.scheduler_config), options
        )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """VAE decode of ``latents / scaling_factor`` (fp32 under ``force_upcast``) to PIL."""
        scaled = latents.to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor
        return tensor_to_images(self.vae.decode(scaled).sample)

    def _require(self, stage: str, what: str) -> None:
        if self.stage != stage:
            raise ValueError(
                f"{what} needs the {stage} de-tokenizer; this pipeline holds {self.stage}"
            )

    # --- the three tasks ----------------------------------------------------------------

    def _positive(self, image_embeds: torch.Tensor) -> Conditioning:
        width = self.resampler.arch.embedding_dim
        return self.encode(check_image_embeds(image_embeds, width))[0]

    def prepare_generate(self, jobs: Sequence[GenerateJob]) -> list[SamplingJob]:
        """Checks the jobs and resamples their embeddings (first stage)."""
        self._require("first_stage", "generation")
        check_jobs(jobs)
        negative = self.negative_conditioning(pooled=True)
        return [
            SamplingJob(
                self._positive(j.image_embeds), negative, resolve_seed(j.seed), j.guidance_scale
            )
            for j in jobs
        ]

    def prepare_edit(self, jobs: Sequence[EditJob], options: SamplingOptions) -> list[SamplingJob]:
        """Checks the jobs, resamples their embeddings, encodes their sources (second stage)."""
        self._require("second_stage", "editing")
        check_jobs(jobs)
        options.validate()
        positives = [self._positive(j.image_embeds) for j in jobs]  # cheap checks first
        negative = self.negative_conditioning(pooled=True)
        conds = self.encode_condition([j.source for j in jobs], options.height, options.width)
        return [
            SamplingJob(pos, negative, resolve_seed(j.seed), j.guidance_scale,
                        j.image_guidance_scale, conds[i : i + 1])
            for i, (j, pos) in enumerate(zip(jobs, positives, strict=True))
        ]  # fmt: skip

    def prepare_reconstruct(
        self, jobs: Sequence[ReconstructJob], options: SamplingOptions
    ) -> list[SamplingJob]:
        """ViT features of the images (+ condition latents on the second stage)."""
        check_jobs(jobs)
        conditioned = self.stage == "second_stage"
        if any((j.condition is not None) != conditioned for j in jobs):
            raise ParameterError(
                "condition", f"is required on the second stage only; this is {self.stage}"
            )
        options.validate()
        # Hazard §8.3: 256 un-pooled tokens for the image and for the negative, as written.
        positives = self.encode(self.vit_features([j.image for j in jobs]))
        negative = self.negative_conditioning(pooled=False)
        conds: list[torch.Tensor | None] = [None] * len(jobs)
        if conditioned:
            images = [j.condition for j in jobs if j.condition is not None]
            latents = self.encode_condition(images, options.height, options.width)
            conds = [latents[i : i + 1] for i in range(len(jobs))]
        return [
            SamplingJob(pos, negative, resolve_seed(j.seed), j.guidance_scale,
                        j.image_guidance_scale, cond)
            for j, pos, cond in zip(jobs, positives, conds, strict=True)
        ]  # fmt: skip

    def generate_batch(
        self,
        jobs: Sequence[GenerateJob],
        options: SamplingOptions | None = None,
        callback: StepCallback | None = None,
    ) -> list[Image.Image]:
        """Text-to-image for independent jobs sharing ``options`` (first stage)."""
        options = options or SamplingOptions()
        options.validate()
        return self.decode(self.sample(self.prepare_generate(jobs), options, callback))

    def edit_batch(
        self,
        jobs: Sequence[EditJob],
        options: SamplingOptions | None = None,
        callback: StepCallback | None = None,
    ) -> list[Image.Image]:
        """Image editing for independent jobs sharing ``options`` (second stage)."""
        options = options or SamplingOptions()
        return self.decode(self.sample(self.prepare_edit(jobs, options), options, callback))

    def reconstruct_batch(
        self,
        jobs: Sequence[ReconstructJob],
        options: SamplingOptions | None = None,
        callback: StepCallback | None = None,
    ) -> list[Image.Image]:
        """Variations from the images' own ViT features (conditioned on the second stage)."""
        options = options or SamplingOptions()
        return self.decode(self.sample(self.prepare_reconstruct(jobs, options), options, callback))

    def generate(
        self,
        image_embeds: torch.Tensor,
        *,
        seed: int | None = None,
        guidance_scale: float = 7.5,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 50,
        scheduler: str = "euler",
        callback: StepCallback | None = None,
    ) -> Image.Image:
        """One image from one visual embedding ``[1, 64, D]`` (§5.2: 1024², 50 Euler steps)."""
        options = SamplingOptions(height, width, num_inference_steps, scheduler)
        return self.generate_batch(
            [GenerateJob(image_embeds, seed, guidance_scale)], options, callback
        )[0]

    def edit(
        self,
        image_embeds: torch.Tensor,
        source: Image.Image,
        *,
        seed: int | None = 42,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 50,
        scheduler: str = "euler",
        callback: StepCallback | None = None,
    ) -> Image.Image:
        """The edited ``source`` from the edit embedding ``[1, 64, D]`` (§5.3, seed 42)."""
        options = SamplingOptions(height, width, num_inference_steps, scheduler)
        job = EditJob(image_embeds, source, seed, guidance_scale, image_guidance_scale)
        return self.edit_batch([job], options, callback)[0]

    def reconstruct(
        self,
        image: Image.Image,
        *,
        condition: Image.Image | None = None,
        seed: int | None = None,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 50,
        scheduler: str = "euler",
        callback: StepCallback | None = None,
    ) -> Image.Image:
        """A variation of ``image`` (§5.4); ``condition`` is required on the second stage."""
        options = SamplingOptions(height, width, num_inference_steps, scheduler)
        job = ReconstructJob(image, condition, seed, guidance_scale, image_guidance_scale)
        return self.reconstruct_batch([job], options, callback)[0]
