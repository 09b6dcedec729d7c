"""Settings of the Redis connection and of the job transport.

Both are nested into each process's settings (``GatewaySettings``, ``LLMWorkerSettings``, ...)
with ``env_nested_delimiter="__"`` (STYLE.md §3), and can also be built on their own (tests, the
benchmark). Nothing here is read at import time: build them in ``main`` and pass them down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers import keys

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class SentinelTarget:
    """A ``redis+sentinel://`` URL taken apart: where the sentinels are, which master set to
    ask them for, and how to talk to that master once found."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """``[redis|rediss]+sentinel://[user:password@]host1:port1,host2:port2/master[/db]`` ->
    :class:`SentinelTarget`; None for any other scheme; ValueError naming what is wrong.

    One URL rather than separate settings: every process already takes its Redis as one URL
    (``--redis-url``, ``SEEDX_*_REDIS__URL``, the chart's Secret), so a Sentinel-managed Redis
    is switched to by changing that one value. The credentials are the master's (the ACL user
    of docs/deploy.md); the sentinels' own password, if they have one, is ``sentinel_password``.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in SENTINEL_SCHEMES:
        return None
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, sep, port = host.rpartition(":")
        if not sep or not port.isdigit() or not name:
            raise ValueError(f"sentinel address {host!r} must be host:port")
        sentinels.append((name.strip("[]"), int(port)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not sentinels or not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            "a Sentinel URL is redis+sentinel://[user:password@]host:port[,host:port...]"
            "/master-set-name[/db]"
        )
    return SentinelTarget(
        sentinels=tuple(sentinels),
        master=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=parts.scheme.lower() == "rediss+sentinel",
    )


class RedisSettings(BaseSettings):
    """How to reach Redis, and how hard to try before reporting ``Unavailable``."""

    model_config = SettingsConfigDict(env_prefix="SEEDX_REDIS_", frozen=True, extra="forbid")

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis/Valkey URL (redis://, rediss:// or unix://), database included; "
        "or a Sentinel-managed master: redis+sentinel://[user:password@]host:port[,host:port...]"
        "/master-set-name[/db] (rediss+sentinel:// for TLS to sentinels and master).",
    )
    sentinel_password: str | None = Field(
        default=None,
        description="redis+sentinel:// only: the sentinels' own password (their requirepass), "
        "when they have one; the URL's credentials are the master's.",
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

    @field_validator("url")
    @classmethod
    def _check_sentinel_url(cls, url: str) -> str:
        parse_sentinel_url(url)  # a malformed Sentinel URL is refused with the form it must have
        return url

    @property
    def sentinel(self) -> SentinelTarget | None:
        """The Sentinel set and master the URL names (None: a plain Redis URL)."""
        return parse_sentinel_url(self.url)

    def connection_kwargs(self) -> dict[str, Any]:
        """The TLS arguments of redis-py's connections (none unless the URL is rediss:// or
        rediss+sentinel://)."""
        if not self.url.startswith(("rediss://", "rediss+sentinel://")):
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
