"""Input image checks: data URLs, formats, dimensions, frames, truncation, bombs."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from server.errors import InvalidImage, PayloadTooLarge
from server.media.decode import check_image
from server.media.inputs import decode_data_url
from server.settings import MediaLimits
from tests.unit.server.fakes import png_bytes

LIMITS = MediaLimits(max_image_bytes=64 * 1024, max_image_pixels=1_000_000)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
async def test_allowed_formats_pass(fmt: str) -> None:
    checked = await check_image(encoded(fmt), LIMITS, "image")
    assert (checked.width, checked.height) == (40, 30)
    assert checked.content_type == f"image/{fmt.lower()}"


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF", "ICO"])
async def test_formats_outside_the_allow_list_are_refused(fmt: str) -> None:
    with pytest.raises(InvalidImage, match="accepted format"):
        await check_image(encoded(fmt), LIMITS, "image")


async def test_huge_dimensions_are_refused_from_the_header() -> None:
    bomb = huge_png_header(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(PayloadTooLarge, match=r"pixels|decompression") as info:
        await check_image(bomb, LIMITS, "messages[0].content[1].image_url")
    assert info.value.param == "messages[0].content[1].image_url"


async def test_truncated_image_is_refused() -> None:
    data = encoded("PNG")
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        await check_image(data[: len(data) // 2], LIMITS, "image")


async def test_animated_gif_beyond_frame_limit_is_refused() -> None:
    frames = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    limits = MediaLimits(formats=("gif",), max_frames=2)
    with pytest.raises(InvalidImage, match="frames"):
        await check_image(buffer.getvalue(), limits, "image")


async def test_oversized_bytes_are_413() -> None:
    with pytest.raises(PayloadTooLarge):
        await check_image(b"\0" * (LIMITS.max_image_bytes + 1), LIMITS, "image")


def test_data_url_decodes() -> None:
    url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    assert decode_data_url(url, LIMITS, "p") == png_bytes()


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png,rawbytes",
        "data:text/html;base64,PGgxPg==",
        "data:image/png;base64,!!!notbase64",
        "data:image/png;base64,QUJD\nREVG",
        "data:;base64",
    ],
)
def test_bad_data_urls_are_400(url: str) -> None:
    with pytest.raises(InvalidImage):
        decode_data_url(url, LIMITS, "p")


def test_data_url_size_is_checked_before_decoding() -> None:
    url = "data:image/png;base64," + "A" * (LIMITS.max_image_bytes * 2)
    with pytest.raises(PayloadTooLarge):
        decode_data_url(url, LIMITS, "p")


@pytest.mark.parametrize(("width", "height"), [(2000, 1000), (10_000, 10_000)])
async def test_dimensions_over_the_configured_limit_are_413(width: int, height: int) -> None:
    with pytest.raises(PayloadTooLarge, match=r"pixels|decompression"):
        await check_image(huge_png_header(width, height), LIMITS, "image")
