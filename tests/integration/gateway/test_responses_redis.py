"""``/v1/responses`` on a real Redis: stored responses are Redis keys with the configured TTL,
read back by GET and by ``previous_response_id``, removed by DELETE."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from tests.integration.gateway import test_gateway_redis as chat_tier
from workers.keys import response_key

# the gateway on real Redis with fake worker handlers, as the chat tests use it
app = chat_tier.app
client = chat_tier.client
workers = chat_tier.workers


async def test_stored_response_lives_in_redis_with_its_ttl(
    client: httpx.AsyncClient, redis: Redis, workers: None
) -> None:
    first = await client.post(
        "/v1/responses",
        json={"model": "seed-x-i", "input": "hi", "tools": [{"type": "image_generation"}]},
    )
    assert first.status_code == 200, first.text
    body = first.json()
    kinds = [item["type"] for item in body["output"]]
    assert kinds == ["message", "image_generation_call"]
    ttl_ms = await redis.pttl(response_key(body["id"]))
    assert 0 < ttl_ms <= 3600 * 1000
    assert (await client.get(f"/v1/responses/{body['id']}")).json() == body

    follow = await client.post(
        "/v1/responses",
        json={"model": "seed-x-i", "input": "more", "previous_response_id": body["id"]},
    )
    assert follow.status_code == 200, follow.text
    assert follow.json()["usage"]["input_tokens"] == 3

    assert (await client.delete(f"/v1/responses/{body['id']}")).status_code == 200
    assert await redis.exists(response_key(body["id"])) == 0
    gone = await client.post(
        "/v1/responses",
        json={"model": "seed-x-i", "input": "more", "previous_response_id": body["id"]},
    )
    assert gone.status_code == 400
    assert gone.json()["error"]["code"] == "previous_response_not_found"
