"""The diffusion worker (issue 5): the SEED-X de-tokenizer as a batched, cancellable service.

* :mod:`.settings` — ``DiffusionWorkerSettings`` (``SEEDX_DIFFUSION_*``).
* :mod:`.requests` — wire job -> checked :class:`~.requests.DiffusionRequest` (blobs verified).
* :mod:`.batching` — which waiting jobs run together (compatible groups, no starvation).
* :mod:`.dispatcher` — tickets and the single device thread that runs batches.
* :mod:`.runner` — one batch on the pipeline: prepare, sample (drops, previews), decode, OOM split.
* :mod:`.handler` — the ``Worker`` handler: events out, images encoded and stored as blobs.
* :mod:`.acceleration` — device, dtype, attention kernels, compile, channels-last, VAE tiling.
* :mod:`.metrics` — ``seedx_diffusion_*`` Prometheus metrics.
* :mod:`.worker` — the Redis worker process (``seedx worker diffusion``).
* :mod:`.bench` — ``seedx bench diffusion``.
"""
