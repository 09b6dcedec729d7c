"""The SSRF address policy: which hosts an ``image_url`` fetch may connect to.

Only public unicast addresses are allowed by default. Refused: loopback, private (RFC 1918, ULA),
link-local (169.254.0.0/16 holds the cloud metadata endpoint; fe80::/10), carrier-grade NAT,
multicast, reserved, unspecified, documentation and benchmark ranges — everything Python's
``ipaddress`` does not call *global* — and IPv6 forms that embed an IPv4 address (v4-mapped
``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4, Teredo) are judged by that IPv4 address.
Operators allow-list networks explicitly (``fetch.allow_networks``).

URLs are checked before resolution too: http(s) only, no userinfo (``http://good@evil``), no
control characters or backslashes (parser differentials). Decimal, octal and hex IPv4 spellings
need no special case: the *resolved* address is what is checked, and it is the one connected to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from server.errors import InvalidImage

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``ip``) and what to ask for (``host``, ``target``)."""

    scheme: str
    host: str
    port: int
    target: str
    ip: str


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def is_allowed(ip: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    """Whether connecting to ``ip`` is allowed (see the module docstring)."""
    if any(ip.version == net.version and ip in net for net in allow):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_allowed(inner, allow)
    return ip.is_global and not ip.is_multicast


def _split(url: str, param: str) -> SplitResult:
    if any(ord(c) < 0x21 or c in "\\\x7f" for c in url):
        raise InvalidImage("image URL contains whitespace, control characters or '\\'", param=param)
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a bad port
    except ValueError as exc:
        raise InvalidImage(f"malformed image URL: {exc}", param=param) from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise InvalidImage("image URLs must be http(s) or data: URLs", param=param)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidImage("image URLs may not carry credentials", param=param)
    if not parts.hostname:
        raise InvalidImage("image URL has no host", param=param)
    return parts


async def resolve(url: str, allow: Sequence[IPNetwork], param: str) -> Target:
    """Check ``url``, resolve its host once, and refuse it unless every address is allowed."""
    parts = _split(url, param)
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError):
        raise InvalidImage(f"cannot resolve the image URL's host {host!r}", param=param) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses or not all(is_allowed(ip, allow) for ip in addresses):
        raise InvalidImage(
            "the image URL points to a non-public address, which is not allowed", param=param
        )
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Target(parts.scheme, host, port, target, str(addresses[0]))
