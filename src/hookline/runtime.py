"""What every hookline process is made of, built in one place for the entry points.

The event loop (uvloop when installed) that runs until SIGTERM or SIGINT, the body
store the configuration names, and the dispatcher's outbound HTTP session. The
components never build these: ``receiver/main.py``, ``dispatcher/main.py``,
``operator/main.py`` and the local stack do, and hand them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from hookline import outbound
from hookline.bodies import BodyStore, FilesystemBodyStore
from hookline.config import Config


def run(factory: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``factory(stop)`` under uvloop (when installed); SIGTERM and SIGINT set ``stop``."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await factory(stop)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def tune_gc(config: Config) -> None:
    """Make the garbage collector cheap for a process that is about to serve: what exists
    now (modules, configuration, clients) is moved out of the collector's sight for good
    (``gc.freeze``), and young collections run every ``HOOKLINE_GC_YOUNG`` allocations
    instead of every 700. A request or a delivery allocates a few hundred objects that
    nearly all die by reference counting; with Python's defaults the collector ran every
    few of them and, every hundredth time, walked every object of the process
    (docs/benchmarks.md, "Garbage collection")."""
    if config.gc_young <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(config.gc_young, middle, old)


def body_store(config: Config) -> BodyStore:
    if config.body_store == "gcs":
        from hookline.gcs import GcsBodyStore

        return GcsBodyStore(
            config.gcs_bucket,
            chunk_size=config.gcs_chunk_size,
            threads=config.gcs_threads,
            timeout=config.gcs_timeout,
        )
    return FilesystemBodyStore(config.body_dir)


def client_session(config: Config) -> aiohttp.ClientSession:
    """The dispatcher's HTTP client: connects only where :mod:`hookline.outbound` permits."""
    connector = outbound.connector(
        config,
        limit=config.concurrency,
        limit_per_host=0,
        ttl_dns_cache=10,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        # The endpoint gets the documented headers only (docs/delivery.md), none of
        # aiohttp's defaults: no Accept, Accept-Encoding or made-up Content-Type.
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )
