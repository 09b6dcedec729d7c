"""The SSRF guard: the address policy, and fetches against local listeners (issue 9, item 6)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from server.errors import InvalidImage, PayloadTooLarge
from server.media.fetch import ImageFetcher
from server.media.netguard import is_allowed, resolve
from server.settings import FetchSettings
from tests.unit.server.fakes import png_bytes

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:0001::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "ff02::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_allowed(ipaddress.ip_address(address), ())


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_allowed(ipaddress.ip_address(address), ())


def test_allow_list_opens_a_network() -> None:
    assert is_allowed(ipaddress.ip_address("127.0.0.1"), LOOPBACK)
    assert not is_allowed(ipaddress.ip_address("127.0.0.2"), LOOPBACK)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost/x.png",
        "http://2130706433/x.png",
        "http://0x7f000001/x.png",
        "http://0177.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:7f00:1]/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "ftp://example.com/x.png",
        "http://user:pass@example.com/x.png",
        "http://example.com@127.0.0.1/x.png",
        "http://exa mple.com/x.png",
        "http://example.com\\@127.0.0.1/",
        "http:///x.png",
        "http://example.com:99999/",
    ],
)
async def test_refused_urls(url: str) -> None:
    with pytest.raises(InvalidImage) as info:
        await resolve(url, (), "image_url")
    assert info.value.param == "image_url"


Handler = Callable[[bytes], bytes]


@asynccontextmanager
async def listener(host: str, respond: Handler) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A one-shot-per-connection HTTP server; yields its port and the requests it saw."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        seen.append(request)
        writer.write(respond(request))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, seen
    finally:
        server.close()
        await server.wait_closed()


def ok(body: bytes) -> Handler:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body)
    return lambda _: head + body


def redirect(location: str) -> Handler:
    return lambda _: (
        f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
    )


def fetcher(**overrides: object) -> ImageFetcher:
    settings = FetchSettings(**{"allow_networks": ["127.0.0.1/32"], "timeout_s": 2, **overrides})
    return ImageFetcher(settings, max_bytes=64 * 1024)


async def test_fetch_from_an_allow_listed_host_pins_the_address() -> None:
    async with listener("127.0.0.1", ok(png_bytes())) as (port, seen):
        data = await fetcher().fetch(f"http://127.0.0.1:{port}/cat.png?x=1", "p")
    assert data == png_bytes()
    assert seen[0].startswith(b"GET /cat.png?x=1 HTTP/1.1")
    assert b"host: 127.0.0.1" in seen[0].lower()


async def test_without_allow_list_the_canary_is_never_reached() -> None:
    async with listener("127.0.0.1", ok(b"x")) as (port, seen):
        for url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"):
            with pytest.raises(InvalidImage, match="non-public"):
                await fetcher(allow_networks=[]).fetch(url, "p")
    assert seen == []


async def test_redirect_to_a_private_address_is_refused() -> None:
    async with (
        listener("127.0.0.2", ok(b"secret")) as (canary_port, canary),
        listener("127.0.0.1", redirect(f"http://127.0.0.2:{canary_port}/")) as (port, _),
    ):
        with pytest.raises(InvalidImage, match="non-public"):
            await fetcher().fetch(f"http://127.0.0.1:{port}/", "p")
    assert canary == []


async def test_redirect_loops_are_bounded() -> None:
    async with listener("127.0.0.1", redirect("/again")) as (port, seen):
        with pytest.raises(InvalidImage, match="redirected"):
            await fetcher(max_redirects=2).fetch(f"http://127.0.0.1:{port}/", "p")
    assert len(seen) == 3


async def test_body_over_the_limit_is_413_even_without_content_length() -> None:
    body = b"\0" * (100 * 1024)
    async with listener("127.0.0.1", lambda _: b"HTTP/1.0 200 OK\r\n\r\n" + body) as (port, _):
        with pytest.raises(PayloadTooLarge):
            await fetcher().fetch(f"http://127.0.0.1:{port}/", "p")


async def test_http_errors_are_400() -> None:
    async with listener("127.0.0.1", lambda _: b"HTTP/1.1 404 Not Found\r\n\r\n") as (port, _):
        with pytest.raises(InvalidImage, match="HTTP 404"):
            await fetcher().fetch(f"http://127.0.0.1:{port}/", "p")


async def test_slow_server_hits_the_time_limit() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # until the client gives up and closes

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(InvalidImage, match=r"longer than|timed out"):
            await fetcher(timeout_s=0.3).fetch(f"http://127.0.0.1:{port}/", "p")
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_fetching_can_be_disabled() -> None:
    with pytest.raises(InvalidImage, match="disabled"):
        await fetcher(enabled=False).fetch("http://example.com/x.png", "p")
