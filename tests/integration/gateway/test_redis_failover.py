"""A Sentinel failover under load, on real servers: nothing accepted is lost.

Debian's ``redis-server`` runs a master, a replica and three sentinels on free ports
(:class:`seedx.chaos.redis_servers.SentinelSet`, down-after 1 s); the gateway app and real worker
loops (FAKE handlers, as in ``test_gateway_redis``) reach it by a ``redis+sentinel://`` URL as
the ACL user of docs/deploy.md. Under steady chat and image load the master is SIGKILLed:
every request accepted is answered once and correctly (a job whose enqueue the replica never
got is enqueued again by the gateway's lost-job watch), requests keep being answered within
10 s of the kill, the only errors are 503 refusals of requests sent during the election, and
the ACL LOG of the new master stays empty.

Needs Debian's ``redis-server``; skipped without it.
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from seedx.chaos.backbone import load_through
from seedx.chaos.redis_servers import SentinelSet
from tests.integration.conftest import fast_queue_settings, fast_redis_settings
from tests.integration.gateway.test_gateway_redis import (
    CHAT,
    gateway_and_workers,
)
from tests.integration.gateway.test_redis_auth_tls import (
    ADMIN_PASSWORD,
    PASSWORD,
    documented_acl,
)
from workers.lost_jobs import LOST_JOBS_REENQUEUED

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")

RECOVERY_BOUND_S = 10.0


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(
        tmp_path / "redis",
        auth=[f"user default on >{ADMIN_PASSWORD} ~* &* +@all", documented_acl()],
        admin_password=ADMIN_PASSWORD,
    )
    try:
        servers.wait_in_sync()
        yield servers
    finally:
        servers.close()


# redis-py's connection pools lose track of a connection now and then while Sentinel moves the
# master (a socket to the dead master garbage-collected unclosed: a ResourceWarning, about one run
# in six; the pools of the sentinels' clients hold one connection each for the same reason).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "lose_writes_s",
    [0.0, 0.5],
    ids=["replica-in-sync", "last-writes-lost"],
)
async def test_failover_under_load_loses_nothing(
    sentinel_set: SentinelSet, lose_writes_s: float
) -> None:
    redis_settings = fast_redis_settings(
        sentinel_set.url("seedx", PASSWORD), client_name="seedx-failover-test"
    )
    # reply_outage_s above an election: the reader waits it out rather than ending waiters.
    queue = fast_queue_settings(reply_outage_s=10.0)
    reenqueued = LOST_JOBS_REENQUEUED._value.get()
    async with gateway_and_workers(redis_settings, queue, timeout_s=40) as c:
        figures = await load_through(
            c,
            lambda: sentinel_set.kill_master(lose_writes_s),
            chat=CHAT,
            image={"prompt": "x", "response_format": "b64_json"},
        )
    print(figures, "re-enqueued:", LOST_JOBS_REENQUEUED._value.get() - reenqueued)
    assert figures["lost"] == 0, figures
    assert figures["duplicated"] == 0, figures
    assert figures["answered"] > 0, figures
    assert figures["recovery_s"] < RECOVERY_BOUND_S, figures
    assert set(figures["statuses"]["during"]) <= {"200", "503"}, figures
    assert set(figures["statuses"]["after"]) == {"200"}, figures
    gc.collect()  # such a socket: collected here, under this test's filter, not in a later test
    master = sentinel_set.master()
    admin = Redis(port=master.port, username="default", password=ADMIN_PASSWORD)
    try:
        assert await admin.acl_log() == []
    finally:
        await admin.aclose()
