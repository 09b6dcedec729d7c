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
import socket

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
