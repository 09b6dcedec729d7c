"""API keys: ``Authorization: Bearer <key>`` on every route but the health routes and the
signed image content URLs (their signed id is the capability: ``server.published``).

Checked in an ASGI middleware, before the body is read or parsed: an unauthenticated client
cannot make the gateway spend memory on its upload or learn anything from validation errors.
Comparison is constant-time: the SHA-256 of the presented key is compared with the digest of
every accepted key (no early exit), so neither the content nor the length of a key leaks
through timing. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import AuthenticationFailed, error_response
from server.metrics import reject

logger = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/healthz", "/readyz"})


class KeyChecker:
    """Holds the digests of the accepted keys and checks presented ones."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)

    @property
    def enabled(self) -> bool:
        """False when no keys are configured (``allow_unauthenticated``)."""
        return bool(self._digests)

    def accepts(self, presented: str) -> bool:
        """Whether ``presented`` is one of the keys, in time independent of which."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = False
        for accepted in self._digests:
            found |= hmac.compare_digest(digest, accepted)
        return found


def bearer_token(scope: Scope) -> str | None:
    """The token of the ``Authorization: Bearer`` header, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class APIKeyMiddleware:
    """Answers 401 (OpenAI body) unless the request carries an accepted key."""

    def __init__(
        self,
        app: ASGIApp,
        checker: KeyChecker,
        open_paths: frozenset[str],
        is_open: Callable[[str], bool] = lambda path: False,
    ) -> None:
        self.app = app
        self.checker = checker
        self.open_paths = open_paths
        self.is_open = is_open  # paths that carry their own capability (signed image URLs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.checker.enabled
            or scope["path"] in self.open_paths
            or self.is_open(scope["path"])
            or scope["method"] == "OPTIONS"  # CORS preflight carries no credentials
        ):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None:
            error = AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer <key>'", param=None
            )
        elif not self.checker.accepts(token):
            error = AuthenticationFailed("invalid API key")
        else:
            await self.app(scope, receive, send)
            return
        logger.warning("refused %s %s: %s", scope["method"], scope["path"], error.message)
        reject(scope, "auth")
        await error_response(error)(scope, receive, send)
