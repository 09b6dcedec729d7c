"""Checking an input image before any worker sees it: format, dimensions, frames, integrity.

Order matters (issue 9, item 7): the encoded size is checked first; Pillow then opens the bytes
with only the allowed decoders (``formats=``, so a TIFF or a PSD never reaches a parser we did not
choose) and reads the *header*; width x height is compared with ``max_image_pixels`` before any
pixel is decoded, so a 100k x 100k PNG of a few KiB costs nothing. Only then is the image decoded
in full (in a thread, off the event loop) to catch truncated or corrupt files, with Pillow's own
decompression-bomb check promoted to an error. The worker receives the original bytes.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from server.errors import InvalidImage, PayloadTooLarge
from server.metrics import IMAGES_DECODED
from server.settings import MediaLimits

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
_CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}


@dataclass(frozen=True)
class CheckedImage:
    """Bytes that decoded cleanly within the limits, with what the job needs to know."""

    data: bytes
    width: int
    height: int
    content_type: str


def check_size(nbytes: int, limits: MediaLimits, param: str) -> None:
    """413 when an encoded image is larger than ``max_image_bytes``."""
    if nbytes > limits.max_image_bytes:
        raise PayloadTooLarge(
            f"image of {nbytes} bytes exceeds the limit of {limits.max_image_bytes} bytes",
            param=param,
        )


def _inspect(data: bytes, limits: MediaLimits, param: str) -> CheckedImage:
    formats = tuple(_PIL_FORMATS[name] for name in limits.formats)
    allowed = ", ".join(limits.formats)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=formats) as image:
                width, height = image.size
                if width < 1 or height < 1:
                    raise InvalidImage("image has no pixels", param=param)
                if width * height > limits.max_image_pixels:
                    raise PayloadTooLarge(
                        f"image of {width}x{height} pixels exceeds the limit of "
                        f"{limits.max_image_pixels} pixels",
                        param=param,
                    )
                frames = getattr(image, "n_frames", 1)
                if frames > limits.max_frames:
                    raise InvalidImage(
                        f"animated image with {frames} frames (at most {limits.max_frames})",
                        param=param,
                    )
                kind = image.format or ""
                image.load()
        except UnidentifiedImageError:
            raise InvalidImage(
                f"not an image in an accepted format ({allowed})", param=param
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PayloadTooLarge("image exceeds the decompression limit", param=param) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidImage(f"corrupt or truncated image: {exc}", param=param) from None
    IMAGES_DECODED.inc()
    return CheckedImage(data, width, height, _CONTENT_TYPES.get(kind, "application/octet-stream"))


async def check_image(data: bytes, limits: MediaLimits, param: str) -> CheckedImage:
    """Validate ``data`` as described in the module docstring; 400/413 naming ``param``."""
    check_size(len(data), limits, param)
    return await asyncio.to_thread(_inspect, data, limits, param)
