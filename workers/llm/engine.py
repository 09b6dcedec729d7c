"""``SeedXLLMEngine``: SEED-X generation on one vLLM ``AsyncLLM``, independent of Redis.

The engine owns the only copy of the weights (trunk, ViT, resamplers) inside vLLM's processes.
``generate(request)`` yields text deltas, boxes, image embeddings, one ``ChoiceFinished`` per
choice and a final ``Usage``; ``abort(request_id)`` stops every vLLM request of a generation.
How image blocks are computed and captured: ``workers.llm.choice`` and
``engine.vllm_plugin.capture``.

Engine settings that matter for SEED-X: prompts are token ids and text is rendered with our
4.30.2-semantics tokenizer (requests never detokenize in vLLM; EOS is a ``stop_token_id``).
vLLM still loads the folder's tokenizer when ``structured_outputs`` is on, because its grammar
backend (llguidance) needs the vocabulary's strings to mask tokens; the ids are the same. The
§5.5 rules are the ``logits_processors`` entry; the row capture is the
``worker_extension_cls``; prefix caching stays on (it is what makes the block resubmission cheap).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from engine.anyres import GlobalViewImage
from engine.image_rules import ImageRules
from engine.tokenizer import SeedXTokenizer
from engine.vllm_plugin.capture import capture_args, reader_answer, unpack_tensor
from engine.vllm_plugin.ids import SeedXTokenIds
from engine.vllm_plugin.processor import image_rules
from workers.llm.choice import ChoiceRun, ChoiceSettings, Step
from workers.llm.prompting import BadRequest
from workers.llm.startup_checks import check_engine
from workers.llm.text import AnswerText
from workers.llm.types import (
    ChoiceFinished,
    Event,
    ImageData,
    ImageEmbedding,
    LLMRequest,
    TokenLogprob,
    TokenObserver,
    Usage,
)

logger = logging.getLogger(__name__)

ENGINE_SHUTDOWN_TIMEOUT_S = 12.0
"""How long vLLM's engine core and its workers get to exit in order before vLLM kills them.
vLLM's own default is 5 s: on a busy CPU host its worker process took longer, was killed, and
left its shared memory to Python's resource tracker (the ``leaked shared_memory`` warnings of
issue 16 came back under load). 12 s stays inside the margin that the chart's worker
termination grace adds to the job drain (``shutdown.marginSeconds``, 15 s) and inside the
supervisor's 30 s grace (``seedx.supervisor``)."""


@dataclass(frozen=True)
class EngineConfig:
    """How to build the vLLM engine for one served model folder."""

    model: Path
    dtype: str = "auto"
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    tensor_parallel_size: int = 1  # the trunk sharded over this many GPUs (CPU: processes)
    quantization: str | None = None  # "fp8": online fp8 of the trunk's linear layers
    kv_cache_bytes: int | None = None  # explicit KV size; overrides gpu_memory_utilization
    max_num_seqs: int = 64
    max_images_per_prompt: int = 8
    enable_mm_embeds: bool = False
    capture_entries: int = 256
    capture_every_rank: bool = False  # tests: every TP rank keeps rows (seedx_row_digests)
    strict_suppression: bool = False  # -inf instead of the reference's 0.0 (§8.5)
    structured_outputs: bool = True  # JSON answers (response_format); loads vLLM's tokenizer
    extra: dict[str, Any] = field(default_factory=dict)  # more AsyncEngineArgs fields

    def engine_args(self) -> Any:
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        from engine.vllm_plugin.rules import SeedXImageTokenRules

        # llguidance, not xgrammar: xgrammar's JSON strings admit raw control characters (a tab
        # token passed, which json.loads rejects) and SEED-X's added tokens (<loc-7> inside a
        # string). Compact JSON: a grammar with whitespace anywhere lets a model spend its whole
        # budget on blank runs (seen at once on the random tiny model); clients lose nothing.
        structured = StructuredOutputsConfig(backend="guidance", disable_any_whitespace=True)
        return AsyncEngineArgs(
            model=str(self.model),
            dtype=self.dtype,  # type: ignore[arg-type]  # checked by vLLM at start
            tensor_parallel_size=self.tensor_parallel_size,
            quantization=vllm_quantization(self.quantization),
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization,
            kv_cache_memory_bytes=self.kv_cache_bytes,
            enforce_eager=self.enforce_eager,
            max_num_seqs=self.max_num_seqs,
            skip_tokenizer_init=not self.structured_outputs,
            enable_prefix_caching=True,
            enable_mm_embeds=self.enable_mm_embeds,
            limit_mm_per_prompt={"image": self.max_images_per_prompt},
            logits_processors=[SeedXImageTokenRules],
            worker_extension_cls="engine.vllm_plugin.capture.SeedXWorkerExtension",
            structured_outputs_config=structured,
            **self.extra,
        )


def vllm_quantization(quantization: str | None) -> str | None:
    """vLLM's ``quantization`` argument for the worker's setting.

    ``fp8`` is vLLM's *online* fp8: ``fp8_per_tensor`` in vLLM 0.32, which quantizes the 16-bit
    weights of every ``LinearBase`` layer given the quant config while they load (per-tensor
    weight scales, dynamic activation scales). vLLM 0.32 still maps ``quantization="fp8"`` on a
    16-bit checkpoint to the same method, but as a deprecated path ("--quantization fp8 is
    deprecated for online quantization; use --quantization fp8_per_tensor instead",
    ``vllm/model_executor/model_loader/weight_utils.py``), so the worker names it directly.
    """
    if quantization is None:
        return None
    if quantization == "fp8":
        return "fp8_per_tensor"
    raise ValueError(f"unknown quantization {quantization!r} (supported: fp8)")


def _image_digest(image: ImageData) -> str:
    """The item's vLLM ``multi_modal_uuids`` entry: its content, and how it is written."""
    if isinstance(image, GlobalViewImage):
        return "global-" + _image_digest(image.image)
    if isinstance(image, torch.Tensor):
        data = image.detach().to("cpu").contiguous()
        raw = data.view(torch.uint8).numpy().tobytes()
        return hashlib.sha256(repr((tuple(data.shape), str(data.dtype))).encode() + raw).hexdigest()
    header = repr((image.mode, image.size)).encode()
    return hashlib.sha256(header + image.tobytes()).hexdigest()


def clean_rgb(image: Image.Image) -> Image.Image:
    """RGB as the reference's ``convert("RGB")`` (alpha dropped, no EXIF rotation).

    vLLM's image parser would rotate by EXIF and composite alpha on white; a fresh RGB image
    without metadata makes both no-ops, so vLLM sees exactly the reference's pixels.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.info or rgb.getexif():
        rgb = Image.frombytes("RGB", rgb.size, rgb.tobytes())
    return rgb


def _clean(image: ImageData) -> ImageData:
    """Pixels as the reference sees them (:func:`clean_rgb`); vLLM parses only PIL items, so a
    :class:`GlobalViewImage` is cleaned here or never."""
    if isinstance(image, GlobalViewImage):
        return GlobalViewImage(clean_rgb(image.image))
    if isinstance(image, Image.Image):
        return clean_rgb(image)
    return image


def _logprobs(completion: Any, top: int | None) -> list[TokenLogprob] | None:
    """vLLM's logprobs of one output delta as plain entries (``top`` likeliest, best first)."""
    if top is None or completion.logprobs is None:
        return None
    entries = []
    for token_id, candidates in zip(completion.token_ids, completion.logprobs, strict=True):
        ranked = sorted(candidates.items(), key=lambda item: item[1].rank)
        chosen = candidates[token_id].logprob
        best = tuple((int(i), float(c.logprob)) for i, c in ranked[:top])
        entries.append(TokenLogprob(int(token_id), float(chosen), best))
    return entries


class SeedXLLMEngine:
    """Async SEED-X generation over one vLLM ``AsyncLLM`` (see module doc)."""

    def __init__(self, llm: Any, config: EngineConfig) -> None:
        self.llm = llm
        self.config = config
        self.tokenizer = SeedXTokenizer(config.model)
        self.ids = SeedXTokenIds.from_tokenizer(self.tokenizer)
        model_config = llm.model_config
        self.image_rules: ImageRules = image_rules(model_config.hf_config)
        self.model_name: str = model_config.hf_config.seedx["model"]
        self.max_model_len: int = model_config.max_model_len
        self._suppress = -math.inf if config.strict_suppression else 0.0
        self._active: dict[str, set[str]] = {}
        self._cancelled: set[str] = set()

    @classmethod
    async def start(
        cls, config: EngineConfig, stat_loggers: list[Any] | None = None
    ) -> SeedXLLMEngine:
        """Builds the AsyncLLM (spawns vLLM's engine process) and installs the row capture.

        A tensor parallel size or fp8 setting that this model or host cannot run is refused
        first, as a :class:`~workers.startup.StartupError` (``workers.llm.startup_checks``).

        ``stat_loggers``: vLLM ``StatLoggerFactory`` callables, called after every engine step
        with the scheduler's stats (``workers.llm.metrics.SchedulerStatsLogger``).
        """
        from vllm.v1.engine.async_llm import AsyncLLM

        check_engine(config.model, config.tensor_parallel_size, config.quantization, config.dtype)
        llm = AsyncLLM.from_engine_args(config.engine_args(), stat_loggers=stat_loggers)
        try:
            await llm.collective_rpc(
                "seedx_install_capture",
                args=(config.capture_entries, config.capture_every_rank),
            )
        except BaseException:
            llm.shutdown(timeout=ENGINE_SHUTDOWN_TIMEOUT_S)
            raise
        return cls(llm, config)

    @property
    def alive(self) -> bool:
        """False once vLLM's engine process died or the engine was shut down (liveness)."""
        return self.llm is not None and not self.llm.errored

    def shutdown(self) -> None:
        """Stops vLLM's engine processes (idempotent), giving them
        :data:`ENGINE_SHUTDOWN_TIMEOUT_S` to exit in order."""
        if self.llm is not None:
            self.llm.shutdown(timeout=ENGINE_SHUTDOWN_TIMEOUT_S)
            self.llm = None

    # -- public API ------------------------------------------------------------------------------
    async def generate(
        self, request: LLMRequest, observer: TokenObserver | None = None
    ) -> AsyncIterator[Event]:
        """Yields the events of every choice (interleaved), then one ``Usage``.

        ``observer`` hears of every batch of sampled tokens as it arrives from vLLM.
        """
        request.sampling.validate()
        self.check(request)
        images = tuple(_clean(i) for i in request.images)
        digests = [_image_digest(i) for i in images]
        self._active[request.request_id] = set()
        runner = _VllmSegments(self, request.request_id, images, digests, observer)
        settings = ChoiceSettings(
            self._suppress, hashlib.sha256("".join(digests).encode()).hexdigest()
        )
        queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()

        async def run(choice: int) -> None:
            text = AnswerText(self.tokenizer, request.sampling.stop, request.box_image_size)
            run = ChoiceRun(
                request,
                choice,
                self.ids,
                text,
                runner,
                settings,
                self._is_cancelled(request.request_id),
            )
            try:
                async for event in run.events():
                    await queue.put(event)
            except BaseException as exc:  # surfaced to the consumer below
                await queue.put(exc)
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(run(c)) for c in range(request.sampling.n)]
        completion, images_out, running = 0, 0, len(tasks)
        try:
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, ChoiceFinished):
                    completion += len(item.output_ids)
                elif isinstance(item, ImageEmbedding):
                    images_out += 1
                yield item
            yield Usage.of(request, completion, images_out)
        finally:
            for task in tasks:
                task.cancel()
            await self._abort_all(request.request_id)
            self._active.pop(request.request_id, None)
            self._cancelled.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        """Stops the generation ``request_id``: its vLLM requests are aborted at once."""
        if request_id in self._active:
            self._cancelled.add(request_id)
            await self._abort_all(request_id)

    # -- internals -------------------------------------------------------------------------------
    def _is_cancelled(self, request_id: str) -> Any:
        return lambda: request_id in self._cancelled

    async def _abort_all(self, request_id: str) -> None:
        live = self._active.get(request_id)
        if live:
            await self.llm.abort(list(live))

    def check(self, request: LLMRequest) -> None:
        """Raises ``BadRequest`` (a ``ValueError`` naming the parameter) for a request this
        engine cannot serve, before any work."""
        length = len(request.prompt_ids)
        if not length or request.prompt_ids[0] != self.ids.bos:
            raise BadRequest("prompt_ids must start with BOS (build them with build_prompt)")
        if length >= self.max_model_len:
            raise BadRequest(
                f"prompt is {length} tokens; this model serves at most {self.max_model_len - 1}",
                "messages",
            )
        sampling = request.sampling
        if sampling.structured and not self.config.structured_outputs:
            raise BadRequest(
                "structured outputs are off on this worker (SEEDX_LLM_STRUCTURED_OUTPUTS)",
                "response_format",
            )
        if sampling.structured and request.image_required:
            raise BadRequest("a JSON answer cannot hold an image", "response_format")
        vocab = self.tokenizer.vocab_size
        for token_id, _ in sampling.logit_bias:
            if not 0 <= token_id < vocab:
                raise BadRequest(
                    f"logit_bias: token {token_id} is not in [0, {vocab})", "logit_bias"
                )
        if request.image_required and request.sampling.max_tokens < 66:
            raise BadRequest("max_tokens must be >= 66 when an image is required", "max_tokens")


class _VllmSegments:
    """The :class:`~workers.llm.choice.SegmentRunner` of one generation on the AsyncLLM."""

    def __init__(
        self,
        engine: SeedXLLMEngine,
        request_id: str,
        images: tuple[ImageData, ...],
        digests: list[str],
        observer: TokenObserver | None = None,
    ) -> None:
        self.engine, self.request_id = engine, request_id
        self.images, self.digests = images, digests
        self.observer = observer

    def _prompt(self, ids: list[int]) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if self.images:
            prompt["multi_modal_data"] = {"image": list(self.images)}
            prompt["multi_modal_uuids"] = {"image": list(self.digests)}
        return prompt

    async def stream(self, request_id: str, ids: list[int], params: Any) -> AsyncIterator[Step]:
        live = self.engine._active.setdefault(self.request_id, set())
        if self.request_id in self.engine._cancelled:
            return
        live.add(request_id)
        finished = False
        try:
            async for out in self.engine.llm.generate(self._prompt(ids), params, request_id):
                completion = out.outputs[0]
                finished = out.finished
                if self.observer is not None:
                    self.observer.on_tokens(request_id, len(completion.token_ids))
                yield (
                    list(completion.token_ids),
                    completion.finish_reason if finished else None,
                    _logprobs(completion, params.logprobs),
                )
        finally:
            live.discard(request_id)
            if not finished:
                with contextlib.suppress(Exception):
                    await self.engine.llm.abort(request_id)

    async def take_image(self, key: str, ids: list[int]) -> tuple[Any, Any]:
        found = await self._take(key)
        if found is None:
            # The rows were prefix-cache hits and their entry left the LRU: recompute them.
            logger.info("query rows of %s not captured (prefix-cache hit); recomputing", key[:12])
            await self._recompute(key, ids)
            found = await self._take(key)
        if found is None:
            raise RuntimeError("image-query rows were not captured")
        return found

    async def _take(self, key: str) -> tuple[Any, Any] | None:
        # One answer per vLLM worker (every TP/PP rank); only the reading rank's is a list.
        results = await self.engine.llm.collective_rpc("seedx_take_images", args=([key],))
        found = reader_answer(results)[0]
        if found is None:
            return None
        return unpack_tensor(found["rows"]), unpack_tensor(found["embedding"])

    async def _recompute(self, key: str, ids: list[int]) -> None:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=1,
            detokenize=False,
            skip_reading_prefix_cache=True,
            extra_args=capture_args(key, len(ids) - 65),
        )
        async for _ in self.stream(f"{self.request_id}-rows-{key[:8]}", ids, params):
            pass
