"""Start-up failures that a restart cannot mend, and the exit code that says so.

A port another process holds, a model folder that is not there: restarting the process changes
nothing, so a supervisor that restarts it with backoff only hides the message under its own
(``seedx serve`` once restarted a gateway on a taken port forever, never printing ready nor
exiting). Every ``seedx`` process reports such a failure as :class:`StartupError`; ``seedx``'s
command line prints its message once and exits with :data:`EXIT_STARTUP`, which the supervisor
does not restart.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.settings import RedisSettings

logger = logging.getLogger(__name__)

EXIT_STARTUP = 78
"""``EX_CONFIG`` of BSD's sysexits.h: a configuration error; do not restart."""


class StartupError(RuntimeError):
    """The process cannot start for a reason outside it; the message says what to change."""


def listening_socket(host: str, port: int, hint: str = "") -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening, or a :class:`StartupError` saying
    the port is taken (and ``hint``: what to do). Bound by us rather than by the server
    library, so that the failure is a clear line, not a traceback followed by a restart loop."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            advice = f" ({hint})" if hint else ""
            raise StartupError(f"port {port} on {host} is already in use{advice}") from exc
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        raise
    sock.listen(2048)
    return sock


async def check_redis(settings: RedisSettings, *, reachable_now: bool = False) -> None:
    """One PING at start-up, without retries: a rejected password or a server certificate that
    does not verify is a :class:`StartupError` naming it (a restart sends the same password
    again), not a reconnect loop. An unreachable Redis is only logged: it may come up later,
    and the gateway and workers reconnect to it on their own. ``reachable_now``: unreachable is
    a StartupError too (``seedx serve --redis-url``: a user who named a Redis that does not
    answer wants to hear it before any worker loads a model)."""
    import ssl

    from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

    from workers.connection import (
        CONNECTION_ERRORS,
        create_redis,
        refuse_cluster,
        refuse_cluster_url,
    )

    refuse_cluster_url(settings.url)
    client = create_redis(settings.model_copy(update={"retry_attempts": 0}))
    where = _redacted(settings.url)
    try:
        await client.ping()
        await refuse_cluster(client)  # a Cluster: exit 78 now, not at the first multi-key script
    except AuthenticationError as exc:  # WRONGPASS, NOAUTH
        raise StartupError(
            f"Redis at {where} refused authentication ({exc}): check the user and password "
            "in the Redis URL"
        ) from exc
    except NoPermissionError as exc:
        raise StartupError(
            f"Redis at {where}: the ACL user may not run PING ({exc}); docs/deploy.md lists "
            "the commands the stack needs"
        ) from exc
    except CONNECTION_ERRORS as exc:
        cause = _ssl_cause(exc, ssl.SSLError)
        if cause is not None:
            raise StartupError(
                f"TLS to Redis at {where} failed ({_tls_reason(cause)}): check the "
                "ssl_ca_certs, ssl_certfile and ssl_keyfile settings"
            ) from exc
        if reachable_now:
            raise StartupError(f"no Redis answers at {where} ({exc})") from exc
        logger.warning(
            "Redis at %s is not reachable yet (%s); retrying in the background", where, exc
        )
    except ResponseError as exc:
        raise StartupError(f"Redis at {where} answered PING with an error ({exc})") from exc
    finally:
        await client.aclose()


def _ssl_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` or the first of its causes that is a ``kind``, else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        if "CERTIFICATE_VERIFY_FAILED" in str(seen) or "SSL" in type(seen).__name__:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_reason(cause: BaseException) -> str:
    """The OpenSSL reason in ``cause`` (``[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify
    failed: ...``), not the whole text: through Sentinel it is repeated once per sentinel
    inside a description of each connection."""
    text = str(cause)
    match = re.search(r"\[SSL[^\]]*\][^(]*", text)
    return match.group(0).strip(" .") if match else text


def _redacted(url: str) -> str:
    """``url`` without its password (``redis://user:***@host``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
