"""Hostile input through the real gateway (issue 9, items 6-10 and 12): the SSRF matrix, media
bombs and malformed bodies, special-token injection, auth on every route, schemathesis, logs.

The SSRF canary and the allow-listed redirector listen on loopback only (127.0.0.1 and
127.0.0.2); private and metadata addresses are refused by the guard before any connection, so
nothing here ever connects to 169.254.169.254 or a private range. DNS names that resolve to
private addresses are checked against the guard in-process with a resolver stub (the gateway
process resolves with the system resolver, which knows only ``localhost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from seedx.chaos.load import chat_body, client_for, data_url, png_bytes, post
from seedx.chaos.stack import KEY, Stack

Figures = dict[str, Any]
REDIRECTOR_HOST = "127.0.0.2"
"""The one address the stack's gateway may fetch from (``fetch.allow_networks``)."""


class Canary:
    """A loopback listener that only counts the connections it accepts."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket()
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


@contextmanager
def redirector(targets: dict[str, str]) -> Iterator[int]:
    """An HTTP server on 127.0.0.2: ``/img`` serves a PNG, ``/to/NAME`` redirects to a target."""
    image = png_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/img":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)
                return
            self.send_response(302)
            self.send_header("Location", targets.get(self.path.removeprefix("/to/"), "/img"))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((REDIRECTOR_HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def ssrf_urls(canary: int) -> dict[str, str]:
    """Name -> URL that must be refused (the canary is on 127.0.0.1:``canary``)."""
    c = canary
    return {
        "loopback": f"http://127.0.0.1:{c}/a.png",
        "localhost name": f"http://localhost:{c}/a.png",
        "loopback 127.1": f"http://127.1:{c}/a.png",
        "loopback 0": f"http://0:{c}/a.png",
        "decimal ip": f"http://2130706433:{c}/a.png",
        "hex ip": f"http://0x7f000001:{c}/a.png",
        "octal ip": f"http://0177.0.0.1:{c}/a.png",
        "ipv6 loopback": f"http://[::1]:{c}/a.png",
        "ipv4-mapped ipv6": f"http://[::ffff:127.0.0.1]:{c}/a.png",
        "ipv4-mapped hex": f"http://[::ffff:7f00:1]:{c}/a.png",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "metadata mapped": "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "metadata nat64": "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "metadata 6to4": "http://[2002:a9fe:a9fe::1]/latest/meta-data/",
        "metadata decimal": "http://2852039166/latest/meta-data/",
        "private 10/8": "http://10.0.0.1/a.png",
        "private 172.16/12": "http://172.16.0.1/a.png",
        "private 192.168/16": "http://192.168.0.1/a.png",
        "cgnat": "http://100.64.0.1/a.png",
        "ula ipv6": "http://[fd00::1]/a.png",
        "link-local ipv6": "http://[fe80::1]/a.png",
        "unspecified": f"http://0.0.0.0:{c}/a.png",
        "file scheme": "file:///etc/passwd",
        "gopher scheme": f"gopher://127.0.0.1:{c}/_GET",
        "ftp scheme": f"ftp://127.0.0.1:{c}/a.png",
        "dict scheme": f"dict://127.0.0.1:{c}/info",
        "userinfo": f"http://user:pass@127.0.0.1:{c}/a.png",
        "userinfo public-looking": f"http://example.com@127.0.0.1:{c}/a.png",
        "backslash trick": f"http://127.0.0.1:{c}\\@example.com/a.png",
        "encoded at": f"http://example.com%40127.0.0.1:{c}/a.png",
        "uppercase scheme": f"HTTP://127.0.0.1:{c}/a.png",
    }


def redirect_targets(canary: int) -> dict[str, str]:
    """Where the allow-listed redirector sends the fetch (each must be refused)."""
    return {
        "loopback": f"http://127.0.0.1:{canary}/a.png",
        "decimal": f"http://2130706433:{canary}/a.png",
        "mapped": f"http://[::ffff:127.0.0.1]:{canary}/a.png",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "private": "http://10.0.0.1/a.png",
        "file": "file:///etc/passwd",
        "gopher": f"gopher://127.0.0.1:{canary}/_GET",
    }


async def _dns_names_refused() -> dict[str, bool]:
    """Names resolving to private addresses, through the gateway's own guard (stub resolver)."""
    from server.errors import InvalidImage
    from server.media import netguard

    answers = {
        "metadata.internal": "169.254.169.254",
        "intranet.example": "10.1.2.3",
        "rebind.example": "127.0.0.1",
        "v6.example": "fd12::1",
        "mapped.example": "::ffff:192.168.1.1",
    }
    loop = asyncio.get_running_loop()
    original = loop.getaddrinfo

    async def stub(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        ip = answers[host]
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (ip, port))]

    loop.getaddrinfo = stub  # type: ignore[method-assign]
    refused = {}
    try:
        for name in answers:
            try:
                await netguard.resolve(f"http://{name}/a.png", (), "image_url")
                refused[name] = False
            except InvalidImage:
                refused[name] = True
    finally:
        loop.getaddrinfo = original  # type: ignore[method-assign]
    return refused


async def ssrf(stack: Stack) -> Figures:
    """Every URL of the matrix, direct and via redirects: refused, and the canary untouched."""
    canary = Canary()
    statuses: dict[str, int] = {}
    try:
        async with client_for(stack) as client:
            for name, url in ssrf_urls(canary.port).items():
                body = chat_body(image_url=url)
                statuses[name] = (await post(client, "/v1/chat/completions", json=body,
                                             timeout_s=30)).status  # fmt: skip
            with redirector(redirect_targets(canary.port)) as port:
                for name in redirect_targets(canary.port):
                    body = chat_body(image_url=f"http://{REDIRECTOR_HOST}:{port}/to/{name}")
                    outcome = await post(client, "/v1/chat/completions", json=body, timeout_s=30)
                    statuses[f"redirect to {name}"] = outcome.status
                control = await post(
                    client,
                    "/v1/chat/completions",
                    json=chat_body(image_url=f"http://{REDIRECTOR_HOST}:{port}/img"),
                    timeout_s=30,
                )
        await asyncio.sleep(0.3)
    finally:
        canary.close()
    dns = await _dns_names_refused()
    return {
        "urls": len(statuses) + len(dns),
        "refused_400": sum(1 for s in statuses.values() if s == 400) + sum(dns.values()),
        "not_refused": sorted(n for n, s in statuses.items() if s != 400)
        + sorted(n for n, ok in dns.items() if not ok),
        "canary_connections": canary.connections,
        "allow_listed_control_200": control.status == 200,
    }


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)


def zeros_png(side: int) -> bytes:
    """A ``side`` x ``side`` black PNG: tiny on the wire, ``3 * side**2`` bytes decoded."""
    row = b"\x00" + b"\x00" * (3 * side)
    raw = zlib.compress(row * side, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw)
            + _png_chunk(b"IEND", b""))  # fmt: skip


def many_frame_gif(frames: int = 500) -> bytes:
    import io

    from PIL import Image

    images = [Image.new("P", (8, 8), i % 256) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def _raw_http(port: int, request: bytes, timeout_s: float = 10.0) -> int:
    """Send raw bytes; the status of the first response (0: none in time)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        with contextlib.suppress(OSError):  # it may close early (413 before the body)
            sock.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout_s
        while b"\r\n" not in data and time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(match.group(1)) if match else 0


def _hwm_bytes(pid: int) -> int:
    from pathlib import Path

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def media(stack: Stack) -> Figures:
    """Bombs and malformed input: each answered 400/413; peak RSS growth of the gateway."""
    good = png_bytes()
    truncated = good[: len(good) // 2]
    big_side = int((stack.config.max_image_bytes) ** 0.5)  # decodes to ~3x the byte limit
    oversized = b"\x89PNG" + b"\x00" * (stack.config.max_image_bytes + 10)
    dense = zeros_png(min(big_side * 2, 4000))
    cases: dict[str, tuple[str, Any]] = {
        "huge-dimension png header": ("url", data_url(huge_png_header())),
        "decompression bomb 20k^2": ("url", data_url(zeros_png(20_000))),
        "accepted: dense zeros within limits": ("url", data_url(dense)),
        "many-frame gif": ("url", data_url(many_frame_gif(), "image/gif")),
        "truncated png": ("url", data_url(truncated)),
        "bad base64": ("url", "data:image/png;base64,%%%not-base64%%%"),
        "base64 of text": ("url", data_url(b"hello, not an image")),
        "non-image data url": ("url", "data:text/html;base64,PGgxPg=="),
        "empty data url": ("url", "data:image/png;base64,"),
        "oversized image": ("url", data_url(oversized)),
        "truncated upload": ("upload", truncated),
        "gif upload": ("upload", many_frame_gif(50)),
    }  # fmt: skip
    gateway_pid = stack.gateway.popen.pid
    statuses: dict[str, int] = {}
    peaks: dict[str, int] = {}
    async with client_for(stack) as client:
        for name, (how, payload) in cases.items():
            before = _hwm_bytes(gateway_pid)
            if how == "url":
                outcome = await post(client, "/v1/chat/completions",
                                     json=chat_body(image_url=payload), timeout_s=60)  # fmt: skip
            else:
                files = {"image": ("in.png", payload, "image/png")}
                form = {"size": "64x64", "steps": "1"}
                outcome = await post(
                    client, "/v1/images/variations", files=files, data=form, timeout_s=60
                )
            statuses[name] = outcome.status
            peaks[name] = _hwm_bytes(gateway_pid) - before
    port = stack.port
    auth = f"Authorization: Bearer {KEY}\r\n".encode()
    limit = stack.config.max_body_bytes
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    raw = {
        "declared length over limit": head + auth + f"Content-Length: {limit * 4}\r\n\r\n".encode(),
        "lying content-length (short)": head + auth + b"Content-Length: 5\r\n\r\n" + b"{" * 5000,
        "invalid content-length": head + auth + b"Content-Length: abc\r\n\r\n{}",
        "chunked body over limit": head + auth + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n" for _ in range(limit // 65536 + 2))
        + b"0\r\n\r\n",
    }  # fmt: skip
    for name, request in raw.items():
        before = _hwm_bytes(gateway_pid)
        statuses[name] = await asyncio.to_thread(_raw_http, port, request)
        peaks[name] = _hwm_bytes(gateway_pid) - before
    # A body shorter than its declared length: 408 once it stalls for body_timeout_s.
    statuses["lying content-length (long)"] = await asyncio.to_thread(
        _raw_http, port, head + auth + b"Content-Length: 1000\r\n\r\n{}", 10.0
    )
    expected_hang = {"accepted: dense zeros within limits"}
    return {
        "cases": len(statuses),
        "statuses": statuses,
        "not_4xx": sorted(
            n for n, s in statuses.items() if s not in (400, 408, 413) and n not in expected_hang
        ),
        "peak_rss_growth_mib": {n: round(p / 2**20, 1) for n, p in peaks.items()},
        "max_peak_rss_growth_mib": round(max(peaks.values()) / 2**20, 1),
        "gateway_alive": stack.gateway.alive,
    }
