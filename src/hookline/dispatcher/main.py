"""``hookline dispatcher``: builds a dispatcher's dependencies and delivers until SIGTERM.

Called by :func:`hookline.cli.main` (and by the local stack) with the configuration;
probes and metrics are served on ``HOOKLINE_DISPATCHER_PORT`` when it is set.
``/readyz`` means the endpoint registry is loaded and Redis answers on the connection
every settle takes.
"""

from __future__ import annotations

import asyncio

from hookline import runtime, telemetry
from hookline.config import Config
from hookline.dispatcher.worker import Dispatcher
from hookline.errors import StoreUnavailable
from hookline.http import serve_probes
from hookline.metrics import Metrics
from hookline.store import RegistryCache, Store


async def run(config: Config, stop: asyncio.Event) -> None:
    store = Store.connect(config)
    bodies = runtime.body_store(config)
    cache = RegistryCache(store.registry, config.registry_refresh)
    metrics = Metrics()
    tracing = telemetry.setup(config, telemetry.DISPATCHER)
    session = runtime.client_session(config)
    dispatcher = Dispatcher(config, cache, store, bodies, metrics, session, tracing=tracing)
    runtime.tune_gc(config)

    async def ready() -> str | None:
        if not cache.loaded.is_set():
            return "endpoint registry not loaded"
        try:
            await store.ping()
        except StoreUnavailable as exc:
            return str(exc)
        return None

    tasks = [asyncio.create_task(dispatcher.run(stop))]
    if config.dispatcher_port:
        tasks.append(
            asyncio.create_task(
                serve_probes(metrics, ready, config.dispatcher_host, config.dispatcher_port, stop)
            )
        )
    try:
        await asyncio.gather(*tasks)
    finally:
        await session.close()
        await tracing.close()
        await bodies.close()
        await store.aclose()
