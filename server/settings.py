"""``GatewaySettings``: every knob of the gateway process, from ``SEEDX_GATEWAY_*``.

Nested groups use ``__`` (STYLE.md §3): ``SEEDX_GATEWAY_REDIS__URL``,
``SEEDX_GATEWAY_QUEUE__REPLY_GRACE_S``, ``SEEDX_GATEWAY_MEDIA__MAX_IMAGE_PIXELS``,
``SEEDX_GATEWAY_FETCH__ALLOW_NETWORKS='["10.0.0.0/8"]'``. Build it once in ``main`` (or pass one
to :func:`server.app.create_app`); nothing reads the environment at import time.

Bad configuration fails at startup (``model_validator``): no API keys without an explicit
``allow_unauthenticated``, a URL-signing key shorter than 32 bytes, and so on.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.settings import QueueSettings, RedisSettings

ImageFormatName = Literal["png", "jpeg", "webp", "gif"]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRouting(_Group):
    """Which model each endpoint uses by default, and which de-tokenizer serves each LLM."""

    chat: str = Field(default="seed-x-i", description="Default model of /v1/chat/completions.")
    generations: str = Field(
        default="seed-x-i", description="Default LLM of /v1/images/generations."
    )
    edits: str = Field(default="seed-x-edit", description="Default LLM of /v1/images/edits.")
    variations: str = Field(
        default="first_stage",
        description="Default de-tokenizer (diffusion model) of /v1/images/variations.",
    )
    detokenizers: dict[str, str] = Field(
        default={"seed-x": "first_stage", "seed-x-i": "first_stage", "seed-x-edit": "second_stage"},
        description="LLM model -> the diffusion model (de-tokenizer) that decodes its images.",
    )
    conditioned: tuple[str, ...] = Field(
        default=("second_stage",),
        description="De-tokenizers that render from an input image too (ImageEditJob).",
    )
    readiness: tuple[str, ...] = Field(
        default=(),
        description="Models /readyz waits for: it answers 503 while one of them has no live "
        "worker. Empty: a live worker per stage is enough, so one model down does not take "
        "every gateway replica out of its Service (requests for that model get 503 with "
        "Retry-After); /readyz lists each model's readiness either way, and "
        "/readyz?model=NAME answers for one. seedx serve sets it to the models it starts.",
    )

    def routed(self, stage: str) -> frozenset[str]:
        """The models this routing can send jobs to on ``stage`` (``llm`` or ``diffusion``)."""
        if stage == "llm":
            return frozenset({self.chat, self.generations, self.edits, *self.detokenizers})
        return frozenset({self.variations, *self.detokenizers.values()})


class MediaLimits(_Group):
    """Bounds on input images, checked before anything is decoded in full."""

    max_images: int = Field(default=8, ge=1, le=64, description="Images per request.")
    max_image_bytes: int = Field(
        default=20 * 2**20, ge=1024, description="Encoded size of one image, in bytes."
    )
    max_image_pixels: int = Field(
        default=36_000_000,
        ge=64 * 64,
        description="width*height of one image; larger headers are refused before decoding.",
    )
    formats: tuple[ImageFormatName, ...] = Field(
        default=("png", "jpeg", "webp"),
        min_length=1,
        description="Image formats Pillow may open (an explicit allow-list of decoders).",
    )
    max_frames: int = Field(
        default=1, ge=1, le=1000, description="Frames of an animated image (only one is used)."
    )


class FetchSettings(_Group):
    """Fetching ``image_url`` http(s) URLs, behind an SSRF guard (server/media/fetch.py)."""

    enabled: bool = Field(default=True, description="Whether http(s) image URLs are fetched.")
    timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Whole fetch, redirects included."
    )
    max_redirects: int = Field(default=3, ge=0, le=10, description="Redirects followed.")
    allow_networks: tuple[IPvAnyNetwork, ...] = Field(
        default=(),
        description="Non-public networks that may be fetched anyway (e.g. an internal CDN).",
    )
    user_agent: str = Field(default="seedx-gateway/1", description="User-Agent of fetches.")


class Admission(_Group):
    """Admission control per stage: refuse with 429 before decoding when the queue is full."""

    llm_max_queue: int = Field(
        default=256, ge=1, description="Queued+running LLM jobs of a model before 429."
    )
    diffusion_max_queue: int = Field(
        default=64, ge=1, description="Queued+running diffusion jobs of a model before 429."
    )
    stats_ttl_s: float = Field(
        default=0.05, ge=0, le=5, description="How long one read of a queue's depth is reused."
    )
    stats_max_age_s: float = Field(
        default=1.0,
        ge=0,
        le=30,
        description="Past stats_ttl_s, a read this young still answers while a background read "
        "replaces it, so requests do not wait on Redis for admission; 0: wait for a fresh read.",
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After sent with a 429.")
    directory_ttl_s: float = Field(
        default=1.0, ge=0, le=30, description="How long the list of live workers is reused."
    )
    directory_max_age_s: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="Past directory_ttl_s, a list this young still answers while a background "
        "read replaces it; 0: wait for a fresh read.",
    )
    scale_to_zero: tuple[Literal["llm", "diffusion"], ...] = Field(
        default=(),
        description="Stages allowed to have no live worker (an autoscaler such as KEDA starts "
        "one from the queue): jobs for the models routed there are queued instead of answered "
        "503, and /readyz does not wait for them.",
    )


class Bounds(_Group):
    """Request parameter bounds (OpenAI's where they exist)."""

    max_n: int = Field(default=4, ge=1, le=16, description="Largest n (choices or images).")
    max_tokens: int = Field(default=2048, ge=1, le=32_768, description="Largest max_tokens.")
    default_max_tokens: int = Field(default=512, ge=1, description="max_tokens when not given.")
    image_max_tokens: int = Field(
        default=256, ge=80, description="max_tokens of the LLM half of generate/edit."
    )
    max_steps: int = Field(default=100, ge=1, le=500, description="Largest diffusion steps.")
    default_steps: int = Field(default=50, ge=1, le=500, description="Steps when not given.")
    min_size: int = Field(default=64, ge=64, description="Smallest output side in pixels.")
    max_size: int = Field(default=2048, ge=64, le=4096, description="Largest output side.")
    default_size: str = Field(
        default="1024x1024", pattern=r"^\d{2,4}x\d{2,4}$", description="Size when not given."
    )


class GatewaySettings(BaseSettings):
    """The gateway process (``SEEDX_GATEWAY_*``; Redis as ``SEEDX_GATEWAY_REDIS__URL``)."""

    model_config = SettingsConfigDict(
        env_prefix="SEEDX_GATEWAY_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    host: str = Field(default="127.0.0.1", description="Address uvicorn binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port uvicorn binds.")
    api_keys: tuple[SecretStr, ...] = Field(
        default=(), description="Accepted Bearer keys (JSON list in the environment)."
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file of accepted keys, one per line ('#' comments)."
    )
    allow_unauthenticated: bool = Field(
        default=False, description="Serve without API keys (demos only); refused otherwise."
    )
    public_metrics: bool = Field(
        default=False, description="Serve /metrics without a key (health routes always are)."
    )
    cors_origins: tuple[str, ...] = Field(
        default=(), description="Origins allowed by CORS ('*' for any); empty: CORS off."
    )
    max_body_bytes: int = Field(
        default=64 * 2**20, ge=1024, description="Request body limit, enforced while reading."
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="A request body that stops arriving for this long is answered 408.",
    )
    chat_timeout_s: float = Field(
        default=300.0, gt=0, description="Deadline of a chat request (all its jobs)."
    )
    image_timeout_s: float = Field(
        default=600.0, gt=0, description="Deadline of an image request (all its jobs)."
    )
    image_url_ttl_s: float = Field(
        default=3600.0, gt=0, description="How long a response_format=url image is served."
    )
    response_store_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long a stored /v1/responses answer (store: true) can be retrieved "
        "and continued with previous_response_id; it lives in Redis, images included.",
    )
    redis_full_window_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="How long after Redis refused one of this gateway's writes for want of "
        "memory (maxmemory, noeviction) /readyz stays 503 (check redis_memory false) and "
        "seedx_gateway_redis_full stays 1. Longer than the readiness probe's period, so a probe "
        "sees a refusal that came between two probes.",
    )
    idempotency_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long the answer of a request sent with an Idempotency-Key is kept: a "
        "retry with the same key (and the same API key) gets it again instead of starting new "
        "jobs; later the key runs anew. It lives in Redis, images included.",
    )
    url_signing_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of image content URLs; share it across replicas (default: random).",
    )
    public_base_url: AnyHttpUrl | None = Field(
        default=None, description="Base of image content URLs (default: the request's own)."
    )
    docs_enabled: bool = Field(default=True, description="Serve /docs and /openapi.json.")
    playground_enabled: bool = Field(
        default=True, description="Serve the web playground at / (its API calls need a key)."
    )
    demo: bool = Field(
        default=False,
        description="The workers serve seedx serve's tiny demo checkpoints (random weights): "
        "/v1/models marks each model demo: true, so clients such as the playground can say "
        "that answers are gibberish and images noise, and keep their defaults small. "
        "seedx serve sets it when it serves the demo.",
    )
    models: ModelRouting = Field(default_factory=ModelRouting, description=ModelRouting.__doc__)
    media: MediaLimits = Field(default_factory=MediaLimits, description=MediaLimits.__doc__)
    fetch: FetchSettings = Field(default_factory=FetchSettings, description=FetchSettings.__doc__)
    admission: Admission = Field(default_factory=Admission, description=Admission.__doc__)
    bounds: Bounds = Field(default_factory=Bounds, description=Bounds.__doc__)
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection.")
    queue: QueueSettings = Field(default_factory=QueueSettings, description="Job transport.")

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        """Refuse configurations that would silently be insecure or unusable."""
        if not self.allow_unauthenticated and not self.api_keys and self.api_keys_file is None:
            raise ValueError(
                "no API keys: set api_keys or api_keys_file, or allow_unauthenticated=true"
            )
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"api_keys_file {self.api_keys_file} does not exist")
        if any(len(key.get_secret_value()) < 8 for key in self.api_keys):
            raise ValueError("API keys must be at least 8 characters")
        key = self.url_signing_key
        if key is not None and len(key.get_secret_value().encode()) < 32:
            raise ValueError("url_signing_key must be at least 32 bytes")
        b = self.bounds
        if b.default_max_tokens > b.max_tokens or b.default_steps > b.max_steps:
            raise ValueError("bounds: a default exceeds its maximum")
        if b.min_size > b.max_size:
            raise ValueError("bounds: min_size exceeds max_size")
        return self

    def load_api_keys(self) -> tuple[str, ...]:
        """The accepted keys: ``api_keys`` plus the lines of ``api_keys_file``."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return tuple(keys)

    def signing_key(self) -> bytes:
        """The HMAC key of image URLs (random per process when not configured)."""
        if self.url_signing_key is not None:
            return self.url_signing_key.get_secret_value().encode()
        return _PROCESS_SIGNING_KEY


_PROCESS_SIGNING_KEY = secrets.token_bytes(32)
