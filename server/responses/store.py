"""Stored responses (``store: true``): what ``GET /v1/responses/{id}`` and
``previous_response_id`` read back.

One record per response, self-contained: the Response object as answered, plus the
conversation *before* its output, in chat-completions message form (instructions excluded:
OpenAI does not carry them over). A follow-up's conversation is that list plus the assistant
turn rebuilt from the stored output, so one Redis read resolves any chain, and an expired
ancestor never breaks a younger response.

Size: images are kept as they came. Input images sent as http(s) URLs (or this gateway's content
URLs) are stored as the URL and fetched again when the conversation continues; ``data:`` URLs
and generated images (the ``result`` base64 of ``image_generation_call`` items, stored once, in
the Response) are stored inline. A record is therefore about the size of its request body plus
its output images, bounded by ``max_body_bytes`` and ``media.max_images`` per conversation;
``response_store_ttl_s`` (default one hour) keeps Redis memory in check.

Ids are 192-bit random (``resp_...``), never derived from client-chosen request ids, so one
client cannot guess or overwrite another's responses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.backend import Backend, RedisBackend
from workers.errors import Unavailable
from workers.keys import response_key

logger = logging.getLogger(__name__)


def new_response_id() -> str:
    """A fresh, unguessable response id."""
    return f"resp_{secrets.token_hex(24)}"


@dataclass(frozen=True)
class StoredResponse:
    """A finished response and the conversation that led to it."""

    response: dict[str, Any]
    conversation: list[dict[str, Any]]

    def dumps(self) -> bytes:
        return json.dumps(
            {"response": self.response, "conversation": self.conversation},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def loads(cls, data: bytes | str) -> StoredResponse:
        record = json.loads(data)
        return cls(record["response"], record["conversation"])


class ResponseStore(Protocol):
    """Where stored responses live; every method raises ``Unavailable`` when it cannot."""

    async def save(self, record: StoredResponse) -> None:
        """Store ``record`` under its response id, replacing any earlier one, with the TTL."""
        ...

    async def load(self, response_id: str) -> StoredResponse | None:
        """The record of ``response_id``, or None when unknown or expired."""
        ...

    async def delete(self, response_id: str) -> bool:
        """Forget ``response_id``; whether it existed."""
        ...


class RedisResponseStore:
    """:class:`ResponseStore` in Redis: one string key per response, ``PX`` the TTL."""

    def __init__(self, redis: Redis, ttl_s: float) -> None:
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_s * 1000))

    async def save(self, record: StoredResponse) -> None:
        key = response_key(record.response["id"])
        try:
            await self._redis.set(key, record.dumps(), px=self._ttl_ms)
        except RedisError as exc:
            raise Unavailable(f"the response store is unavailable: {exc}") from exc

    async def load(self, response_id: str) -> StoredResponse | None:
        try:
            data = await self._redis.get(response_key(response_id))
        except RedisError as exc:
            raise Unavailable(f"the response store is unavailable: {exc}") from exc
        return None if data is None else StoredResponse.loads(data)

    async def delete(self, response_id: str) -> bool:
        try:
            return bool(await self._redis.delete(response_key(response_id)))
        except RedisError as exc:
            raise Unavailable(f"the response store is unavailable: {exc}") from exc


class MemoryResponseStore:
    """:class:`ResponseStore` in this process (tests, and gateways on a fake backend).

    Not shared between replicas: production gateways use :class:`RedisResponseStore`.
    """

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._records: dict[str, tuple[float, bytes]] = {}
        self._lock = asyncio.Lock()

    def _prune(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._records.items() if expires <= now]:
            del self._records[key]

    async def save(self, record: StoredResponse) -> None:
        now = time.monotonic()
        async with self._lock:
            self._prune(now)
            self._records[record.response["id"]] = (now + self._ttl_s, record.dumps())

    async def load(self, response_id: str) -> StoredResponse | None:
        entry = self._records.get(response_id)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return StoredResponse.loads(entry[1])

    async def delete(self, response_id: str) -> bool:
        async with self._lock:
            return self._records.pop(response_id, None) is not None


def store_for(backend: Backend, ttl_s: float) -> ResponseStore:
    """Redis beside the job transport when the backend is Redis; else this process's memory."""
    if isinstance(backend, RedisBackend):
        return RedisResponseStore(backend.transport.redis, ttl_s)
    logger.info("responses are stored in memory: the backend is not Redis")
    return MemoryResponseStore(ttl_s)
