"""``redis+sentinel://`` URLs: taken apart into sentinels, master set, db and credentials, and
turned by the one client factory into redis-py's Sentinel master client (pure logic: nothing
connects here; tests/integration/gateway/test_redis_failover.py runs real sentinels)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workers.connection import SentinelMasterRedis, create_redis
from workers.settings import RedisSettings, SentinelTarget, parse_sentinel_url


def test_full_form() -> None:
    target = parse_sentinel_url("redis+sentinel://seedx:p%40ss@s1:26379,s2:26380/mymaster/3")
    assert target == SentinelTarget(
        sentinels=(("s1", 26379), ("s2", 26380)),
        master="mymaster",
        db=3,
        username="seedx",
        password="p@ss",
        tls=False,
    )


def test_defaults_and_tls() -> None:
    target = parse_sentinel_url("rediss+sentinel://:pw@[::1]:26379/m")
    assert target is not None
    assert (target.sentinels, target.db, target.username, target.password, target.tls) == (
        (("::1", 26379),),
        0,
        None,
        "pw",
        True,
    )


def test_plain_urls_are_not_sentinel() -> None:
    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None
    assert RedisSettings(url="rediss://h:1/0").sentinel is None


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26379",  # no master set
        "redis+sentinel://s1/m",  # no port
        "redis+sentinel://s1:26379/m/x",  # db not a number
        "redis+sentinel:///m",  # no sentinel
    ],
)
def test_malformed_urls_are_refused_with_the_form(url: str) -> None:
    with pytest.raises(ValidationError, match=r"master-set-name|host:port"):
        RedisSettings(url=url)


async def test_the_factory_builds_a_sentinel_master_client() -> None:
    settings = RedisSettings(
        url="rediss+sentinel://seedx:pw@127.0.0.1:1,127.0.0.1:2/m/2",
        sentinel_password="spw",
        ssl_ca_certs="/ca.pem",
    )
    client = create_redis(settings)
    try:
        assert isinstance(client, SentinelMasterRedis)
        assert client.sentinel_manager is not None
        assert [
            s.connection_pool.connection_kwargs["port"] for s in client.sentinel_manager.sentinels
        ] == [1, 2]
        sentinel_kwargs = client.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
        assert sentinel_kwargs["password"] == "spw"
        assert sentinel_kwargs["ssl_ca_certs"] == "/ca.pem"
        pool = client.connection_pool
        assert pool.service_name == "m"  # type: ignore[attr-defined]
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (2, "seedx", "pw")
        assert kwargs["ssl_ca_certs"] == "/ca.pem"
        assert "SSL" in pool.connection_class.__name__
    finally:
        await client.aclose()
