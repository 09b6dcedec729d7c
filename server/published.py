"""Images served by URL (``response_format=url``): ``GET /v1/images/{image_id}/content``.

The image is stored as an ordinary blob with ``image_url_ttl_s`` and no owner (it outlives the
request). Its id is ``{blob id}.{format}.{expiry}.{signature}``, the signature an HMAC of the
first three parts under ``url_signing_key``: the content route serves only ids this gateway (or
a replica sharing the key) minted, so it can never be used to read other blobs (input images,
embeddings) by guessing keys, and it needs no Redis key of its own.

The signed id is the capability, as OpenAI's image URLs are: the content route needs no API key
(``is_content_path``), so an answer's ``url`` works in an ``<img>`` tag or in another service's
hands until it expires. The expiry (epoch seconds) is signed into the id, so a URL dies on time
even if its blob were kept longer, and ``Cache-Control`` gives caches the lifetime left.

The same ids let a client send a generated image back in the next chat turn as a URL: the
gateway recognises its own content URLs and reads the blob directly, without an HTTP fetch.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from server.backend import Blobs
from server.errors import NotFound
from workers import keys
from workers.errors import BlobMissing
from workers.protocol import BlobRef

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_ID = re.compile(r"^([0-9a-f]{32})\.(png|jpeg|webp)\.([0-9]{1,12})\.([0-9a-f]{32})$")
_PATH = re.compile(r"/v1/images/([^/]+)/content$")


@dataclass(frozen=True)
class PublishedImage:
    data: bytes
    content_type: str
    expires_at: int  # epoch seconds


def is_content_path(path: str) -> bool:
    """Whether ``path`` is an image content route (served to whoever holds a signed id)."""
    return path.startswith("/v1/images/") and _PATH.search(path) is not None


class ImagePublisher:
    """Publishes image bytes under signed ids and reads them back."""

    def __init__(self, blobs: Blobs, signing_key: bytes, ttl_s: float) -> None:
        self._blobs = blobs
        self._key = signing_key
        self._ttl_s = ttl_s

    def _sign(self, blob_id: str, fmt: str, expires_at: int) -> str:
        mac = hmac.new(self._key, f"{blob_id}.{fmt}.{expires_at}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    async def publish(self, data: bytes, fmt: str) -> str:
        """Store ``data`` for ``ttl_s``; returns its image id."""
        expires_at = int(time.time() + self._ttl_s)  # never after the blob itself expires
        ref = await self._blobs.put(data, content_type=CONTENT_TYPES[fmt], ttl_s=self._ttl_s)
        blob_id = ref.key.removeprefix(keys.BLOB_PREFIX)
        return f"{blob_id}.{fmt}.{expires_at}.{self._sign(blob_id, fmt, expires_at)}"

    def verify(self, image_id: str) -> tuple[str, str, int] | None:
        """``(blob id, format, expiry)`` of a genuine id, else None (expired or not)."""
        match = _ID.match(image_id)
        if match is None:
            return None
        blob_id, fmt, expiry, signature = match.groups()
        if not hmac.compare_digest(signature, self._sign(blob_id, fmt, int(expiry))):
            return None
        return blob_id, fmt, int(expiry)

    async def read(self, image_id: str) -> PublishedImage:
        """The image of ``image_id``; NotFound when unknown, forged or expired."""
        verified = self.verify(image_id)
        if verified is None:
            raise NotFound("no such image", param="image_id")
        blob_id, fmt, expires_at = verified
        if expires_at <= time.time():
            raise NotFound("the image has expired", param="image_id")
        try:
            data = await self._blobs.get(BlobRef(key=keys.blob_key(blob_id)))
        except BlobMissing:
            raise NotFound("the image has expired", param="image_id") from None
        return PublishedImage(data, CONTENT_TYPES[fmt], expires_at)

    def id_from_url(self, url: str) -> str | None:
        """The image id of one of our content URLs (any host), or None."""
        try:
            path = urlsplit(url).path
        except ValueError:
            return None
        match = _PATH.search(path)
        if match is None or self.verify(match.group(1)) is None:
            return None
        return match.group(1)

    @staticmethod
    def url(base_url: str, image_id: str) -> str:
        """The content URL of ``image_id`` under ``base_url``."""
        return f"{base_url.rstrip('/')}/v1/images/{image_id}/content"
