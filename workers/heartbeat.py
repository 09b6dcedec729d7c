"""Worker heartbeats: which workers are alive, for which model and stage, with what load.

A worker rewrites ``seedx:worker:{id}`` (its :class:`~workers.protocol.WorkerInfo` as JSON) every
``heartbeat_interval_s`` with a TTL of ``lease_s`` (arq's ``record_health``); the key vanishing is
the definition of a dead worker. The gateway reads them for ``/v1/models``, ``/readyz`` and
admission control through :meth:`WorkerRegistry.list_workers`. Job leases are kept separately,
on the stream entries themselves (``workers.consumer``).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from workers import keys
from workers.connection import unavailable_on_disconnect
from workers.protocol import WorkerInfo
from workers.settings import QueueSettings

logger = logging.getLogger(__name__)


class WorkerRegistry:
    """Publish and list worker heartbeats."""

    def __init__(self, redis: Redis, settings: QueueSettings) -> None:
        self._redis = redis
        self._ttl_ms = int(settings.lease_s * 1000)

    def publish_in(self, pipe: Pipeline, info: WorkerInfo) -> None:
        """Queue the heartbeat of ``info`` on ``pipe`` (expires after one lease)."""
        pipe.set(keys.worker_key(info.worker_id), info.model_dump_json(), px=self._ttl_ms)
        pipe.zadd(keys.WORKER_INDEX, {info.worker_id: info.heartbeat_at})

    async def publish(self, info: WorkerInfo) -> None:
        """Write the heartbeat of ``info`` now."""
        pipe = self._redis.pipeline(transaction=False)
        self.publish_in(pipe, info)
        await pipe.execute()

    async def remove(self, worker_id: str) -> None:
        """Forget a worker that is shutting down cleanly (so it is not listed until expiry)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(keys.worker_key(worker_id))
        pipe.zrem(keys.WORKER_INDEX, worker_id)
        await pipe.execute()

    async def is_alive(self, worker_id: str) -> bool:
        """Whether ``worker_id`` heartbeated within the last lease."""
        return bool(await self._redis.exists(keys.worker_key(worker_id)))

    async def list_workers(
        self, stage: keys.Stage | None = None, model: str | None = None
    ) -> list[WorkerInfo]:
        """Live workers, optionally of one stage and/or model; prunes the dead from the index."""
        async with unavailable_on_disconnect("listing workers"):
            members: list[Any] = await self._redis.zrange(keys.WORKER_INDEX, 0, -1)
            if not members:
                return []
            values: list[Any] = await self._redis.mget(
                [keys.worker_key(m.decode()) for m in members]
            )
            dead = [member for member, value in zip(members, values, strict=True) if not value]
            if dead:
                await self._redis.zrem(keys.WORKER_INDEX, *dead)
        infos = [info for value in values if value and (info := _parse(value))]
        return [
            info
            for info in infos
            if (stage is None or info.stage == stage) and (model is None or info.model == model)
        ]


def _parse(value: bytes) -> WorkerInfo | None:
    try:
        return WorkerInfo.model_validate_json(value)
    except ValidationError:
        logger.warning("ignoring a heartbeat this gateway cannot read: %.200r", value)
        return None
