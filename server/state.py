"""The per-app objects the routes share, built once by :func:`server.app.create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from server.admission import AdmissionControl, ModelDirectory
from server.backend import Backend
from server.dispatch import Dispatcher
from server.media.fetch import ImageFetcher
from server.media.inputs import ImageLoader
from server.published import ImagePublisher
from server.settings import GatewaySettings


@dataclass
class Gateway:
    """Everything a request handler needs; one per app (``app.state.gateway``)."""

    settings: GatewaySettings
    backend: Backend
    dispatcher: Dispatcher
    directory: ModelDirectory
    admission: AdmissionControl
    loader: ImageLoader
    publisher: ImagePublisher

    @classmethod
    def build(cls, settings: GatewaySettings, backend: Backend) -> Gateway:
        """Wire the parts around ``backend``."""
        publisher = ImagePublisher(backend.blobs, settings.signing_key(), settings.image_url_ttl_s)
        fetcher = ImageFetcher(settings.fetch, settings.media.max_image_bytes)
        return cls(
            settings=settings,
            backend=backend,
            dispatcher=Dispatcher(backend, settings.queue.reply_outage_s),
            directory=ModelDirectory(
                backend,
                settings.admission.directory_ttl_s,
                {s: settings.models.routed(s) for s in settings.admission.scale_to_zero},
                settings.admission.directory_max_age_s,
                heartbeat_ttl_s=settings.queue.lease_s,
                routing=settings.models,
            ),
            admission=AdmissionControl(backend, settings.admission),
            loader=ImageLoader(settings.media, fetcher, publisher),
            publisher=publisher,
        )
