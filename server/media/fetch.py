"""Fetching an http(s) ``image_url`` without becoming an SSRF proxy (issue 9, item 6).

Each hop is resolved once and checked by :mod:`server.media.netguard`; the connection is then
*pinned* to the checked address by a network backend that refuses to connect anywhere else, so
a DNS answer that changes between check and connect (rebinding) cannot redirect us. TLS still
verifies the certificate against the URL's host name (SNI and Host header are the name, only
the socket goes to the pinned IP). Redirects are followed by hand, at most
``fetch.max_redirects``, each one checked like the first URL. The body is read in chunks and
abandoned at ``max_image_bytes``; the whole fetch, redirects included, is bounded by
``fetch.timeout_s``. No proxy from the environment is used (it would bypass the pinning).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from urllib.parse import urljoin

import httpcore

from server.errors import InvalidImage, PayloadTooLarge
from server.media.netguard import IPNetwork, Target, resolve
from server.settings import FetchSettings

logger = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK_LIMIT = 64 * 1024


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to ``target.ip``:``target.port``, whatever host name it is asked for."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if host != self._target.host or port != self._target.port:
            raise httpcore.ConnectError(f"connection to {host}:{port} is not the checked target")
        return await self._inner.connect_tcp(
            self._target.ip, port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class ImageFetcher:
    """Fetches image bytes from public http(s) URLs within the configured limits."""

    def __init__(self, settings: FetchSettings, max_bytes: int) -> None:
        self._settings = settings
        self._max_bytes = max_bytes
        self._allow: tuple[IPNetwork, ...] = tuple(settings.allow_networks)

    async def fetch(self, url: str, param: str) -> bytes:
        """The body of ``url`` (status 200); 400 for refused/failed fetches, 413 when too big."""
        if not self._settings.enabled:
            raise InvalidImage("fetching image URLs is disabled; send a data: URL", param=param)
        try:
            return await asyncio.wait_for(self._follow(url, param), self._settings.timeout_s)
        except asyncio.TimeoutError:
            raise InvalidImage(
                f"fetching the image took longer than {self._settings.timeout_s:g}s", param=param
            ) from None

    async def _follow(self, url: str, param: str) -> bytes:
        for _ in range(self._settings.max_redirects + 1):
            target = await resolve(url, self._allow, param)
            status, location, body = await self._get(target, param)
            if status in _REDIRECTS and location:
                url = urljoin(url, location)
                continue
            if status != 200:
                raise InvalidImage(f"fetching the image failed with HTTP {status}", param=param)
            return body
        raise InvalidImage(
            f"image URL redirected more than {self._settings.max_redirects} times", param=param
        )

    async def _get(self, target: Target, param: str) -> tuple[int, str | None, bytes]:
        timeout = self._settings.timeout_s
        url = httpcore.URL(
            scheme=target.scheme.encode(),
            host=target.host.encode("idna"),
            port=target.port,
            target=target.target.encode(),
        )
        headers = [(b"User-Agent", self._settings.user_agent.encode()), (b"Accept", b"image/*")]
        extensions = {"timeout": {"connect": timeout, "read": timeout, "write": timeout}}
        try:
            async with (
                httpcore.AsyncConnectionPool(
                    network_backend=PinnedBackend(target), max_connections=1, retries=0
                ) as pool,
                pool.stream("GET", url, headers=headers, extensions=extensions) as response,
            ):
                if response.status != 200:
                    location = _header(response.headers, b"location")
                    return response.status, location, b""
                return 200, None, await self._read(response, param)
        except httpcore.TimeoutException:
            raise InvalidImage("fetching the image timed out", param=param) from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            logger.info("image fetch from %s failed: %s", target.host, exc)
            raise InvalidImage(f"fetching the image failed: {exc}", param=param) from None

    async def _read(self, response: httpcore.Response, param: str) -> bytes:
        declared = _header(response.headers, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            raise PayloadTooLarge(
                f"the image at the URL is {declared} bytes, over {self._max_bytes}", param=param
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_stream():
            size += len(chunk)
            if size > self._max_bytes:
                raise PayloadTooLarge(
                    f"the image at the URL exceeds {self._max_bytes} bytes", param=param
                )
            chunks.append(chunk)
        return b"".join(chunks)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
