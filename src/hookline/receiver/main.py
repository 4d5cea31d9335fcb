"""``hookline receiver``: builds the receiver's dependencies and serves until SIGTERM.

Called by :func:`hookline.cli.main` (and by the local stack) with the configuration;
the ingest API and its probes are served on ``HOOKLINE_RECEIVER_PORT``.
"""

from __future__ import annotations

import asyncio

from hookline import runtime, telemetry
from hookline.config import Config
from hookline.metrics import Metrics
from hookline.receiver.app import create_app
from hookline.receiver.frontdoor import serve
from hookline.store import RegistryCache, Store


async def run(config: Config, stop: asyncio.Event) -> None:
    store = Store.connect(config)
    bodies = runtime.body_store(config)
    tracing = telemetry.setup(config, telemetry.RECEIVER)
    cache = RegistryCache(store.registry, config.registry_refresh)
    metrics = Metrics()
    app = create_app(config, cache, store.queue, bodies, metrics, tracing)
    runtime.tune_gc(config)
    try:
        await serve(app, config, metrics, stop)
    finally:
        await tracing.close()
        await bodies.close()
        await store.aclose()
