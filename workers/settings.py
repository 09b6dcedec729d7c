"""Settings of the Redis connection and of the job transport.

Both are nested into each process's settings (``GatewaySettings``, ``LLMWorkerSettings``, ...)
with ``env_nested_delimiter="__"`` (STYLE.md §3), and can also be built on their own (tests, the
benchmark). Nothing here is read at import time: build them in ``main`` and pass them down.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers import keys


class RedisSettings(BaseSettings):
    """How to reach Redis, and how hard to try before reporting ``Unavailable``."""

    model_config = SettingsConfigDict(env_prefix="SEEDX_REDIS_", frozen=True, extra="forbid")

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis/Valkey URL (redis://, rediss:// or unix://), database included.",
    )
    socket_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Read/write timeout of one command; must exceed queue block_s.",
    )
    connect_timeout_s: float = Field(default=2.0, gt=0, description="Timeout of one TCP connect.")
    retry_attempts: int = Field(
        default=3, ge=0, description="Retries of a command after a connection error, with backoff."
    )
    retry_backoff_base_s: float = Field(
        default=0.05, gt=0, description="First retry delay; doubles per attempt (with jitter)."
    )
    retry_backoff_cap_s: float = Field(
        default=1.0, gt=0, description="Largest delay between retries."
    )
    max_connections: int = Field(
        default=512, ge=4, description="Connection pool size (each blocking read holds one)."
    )
    health_check_interval_s: int = Field(
        default=30, ge=0, description="PING idle pooled connections older than this before reuse."
    )
    client_name: str | None = Field(
        default=None,
        description="CLIENT SETNAME for this process's connections (visible in CLIENT LIST).",
    )
    ssl_ca_certs: str | None = Field(
        default=None,
        description="rediss:// only: CA bundle (PEM file) that signs the server's certificate "
        "(default: the system's CAs).",
    )
    ssl_certfile: str | None = Field(
        default=None,
        description="rediss:// only: client certificate (PEM) when the server asks for one.",
    )
    ssl_keyfile: str | None = Field(
        default=None, description="rediss:// only: the client certificate's private key (PEM)."
    )
    ssl_cert_reqs: Literal["required", "optional", "none"] = Field(
        default="required",
        description="rediss:// only: verify the server's certificate (none: encrypt only).",
    )
    ssl_check_hostname: bool = Field(
        default=True,
        description="rediss:// only: the certificate must name the URL's host.",
    )

    def connection_kwargs(self) -> dict[str, Any]:
        """The TLS arguments of redis-py's ``from_url`` (none unless the URL is rediss://)."""
        if not self.url.startswith("rediss://"):
            return {}
        return {
            "ssl_ca_certs": self.ssl_ca_certs,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_cert_reqs": self.ssl_cert_reqs,
            "ssl_check_hostname": self.ssl_check_hostname and self.ssl_cert_reqs != "none",
        }


class QueueSettings(BaseSettings):
    """Timing and bounds of the job protocol: leases, retries, TTLs, queue depth."""

    model_config = SettingsConfigDict(env_prefix="SEEDX_QUEUE_", frozen=True, extra="forbid")

    lease_s: float = Field(
        default=keys.DEFAULT_LEASE_S,
        gt=0,
        description="A job whose worker stopped heartbeating for this long is reclaimed.",
    )
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, description="How often a worker refreshes its heartbeat and job leases."
    )
    reclaim_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often an idle worker looks for abandoned jobs (XAUTOCLAIM).",
    )
    max_deliveries: int = Field(
        default=3, ge=1, description="Deliveries after which a job goes to the dead-letter stream."
    )
    block_s: float = Field(
        default=1.0, gt=0, description="Longest blocking XREAD/XREADGROUP; bounds shutdown latency."
    )
    max_queue_depth: int = Field(
        default=10_000,
        ge=0,
        description="Queued+running jobs per stream before enqueue fails (0: off).",
    )
    trim_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="How often workers trim acknowledged entries from job streams.",
    )
    blob_ttl_s: float = Field(
        default=keys.DEFAULT_BLOB_TTL_S, gt=0, description="Lifetime of a blob."
    )
    cancel_ttl_s: float = Field(
        default=keys.DEFAULT_CANCEL_TTL_S, gt=0, description="Lifetime of a cancellation flag."
    )
    idempotency_ttl_s: float = Field(
        default=keys.DEFAULT_IDEMPOTENCY_TTL_S,
        gt=0,
        description="Window in which the same idempotency key returns the same job.",
    )
    reply_stream_ttl_s: float = Field(
        default=keys.DEFAULT_REPLY_STREAM_TTL_S,
        gt=0,
        description="A reply stream expires this long after its reader last touched it.",
    )
    reply_stream_maxlen: int = Field(
        default=keys.DEFAULT_REPLY_STREAM_MAXLEN,
        ge=1000,
        description="Approximate cap of a reply stream (guards against a dead reader).",
    )
    dead_letter_maxlen: int = Field(
        default=keys.DEFAULT_DEAD_LETTER_MAXLEN,
        ge=1,
        description="Approximate cap of the dead letters.",
    )
    reply_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="How long past a job's deadline a waiter still waits for its final event.",
    )
    reply_outage_s: float = Field(
        default=10.0,
        gt=0,
        description="After the reply reader is disconnected this long, waiters get Unavailable.",
    )
    reconnect_backoff_cap_s: float = Field(
        default=2.0,
        gt=0,
        description="Largest sleep between reconnect attempts of long-running loops.",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="On stop, how long a worker lets running jobs finish."
    )

    @model_validator(mode="after")
    def _check_lease(self) -> QueueSettings:
        """Refuse settings where a healthy worker could lose its jobs to a reclaim."""
        if self.heartbeat_interval_s * 2 > self.lease_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s}) must be at most half of "
                f"lease_s ({self.lease_s}), or a live job could be reclaimed"
            )
        return self
