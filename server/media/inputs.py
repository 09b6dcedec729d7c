"""Turning an ``image_url`` (or an uploaded file) into checked image bytes.

Three sources: ``data:image/...;base64,...`` URLs (size checked on the *encoded* length before
decoding, strict base64), this gateway's own content URLs (read from the blob store, never
fetched over HTTP), and public http(s) URLs (:class:`~server.media.fetch.ImageFetcher`). Every
result goes through :func:`~server.media.decode.check_image`. Callers run this only after
admission control has accepted the request.
"""

from __future__ import annotations

import base64
import binascii
import re

from server.errors import InvalidImage
from server.media.decode import CheckedImage, check_image, check_size
from server.media.fetch import ImageFetcher
from server.published import ImagePublisher
from server.settings import MediaLimits

_DATA_URL = re.compile(r"^data:([a-zA-Z0-9.+/-]*)((?:;[a-zA-Z0-9=.+-]+)*?)(;base64)?,", re.ASCII)


def decode_data_url(url: str, limits: MediaLimits, param: str) -> bytes:
    """The bytes of a base64 ``data:`` URL of an image type; 400/413 naming ``param``."""
    match = _DATA_URL.match(url)
    if match is None or match.group(3) is None:
        raise InvalidImage("image data URLs must be 'data:image/<type>;base64,<data>'", param=param)
    media_type = match.group(1).lower()
    if media_type and not media_type.startswith("image/"):
        raise InvalidImage(f"data URL of type {media_type!r} is not an image", param=param)
    payload = url[match.end() :]
    check_size(len(payload) * 3 // 4, limits, param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("image data URL is not valid base64", param=param) from None


class ImageLoader:
    """Resolves image URLs and uploads into :class:`CheckedImage` values."""

    def __init__(
        self, limits: MediaLimits, fetcher: ImageFetcher, publisher: ImagePublisher
    ) -> None:
        self.limits = limits
        self._fetcher = fetcher
        self._publisher = publisher

    async def load_url(self, url: str, param: str) -> CheckedImage:
        """Fetch or decode ``url`` and check the image."""
        if url[:5].lower() == "data:":
            data = decode_data_url(url, self.limits, param)
        elif (image_id := self._publisher.id_from_url(url)) is not None:
            data = (await self._publisher.read(image_id)).data
        elif url[:7].lower() == "http://" or url[:8].lower() == "https://":
            data = await self._fetcher.fetch(url, param)
        else:
            raise InvalidImage("image_url must be a data: URL or an http(s) URL", param=param)
        return await check_image(data, self.limits, param)

    async def load_bytes(self, data: bytes, param: str) -> CheckedImage:
        """Check uploaded bytes."""
        return await check_image(data, self.limits, param)
