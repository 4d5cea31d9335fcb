"""The HTTP pieces every component shares: JSON errors, the probes, a server runner.

Each component serves ``/healthz``, ``/readyz`` and ``/metrics`` (the receiver on
its ingest port, the dispatcher and the operator on a port of their own);
every error answer is ``{"error": code, "reason": text}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from hookline.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)


def error(status: int, code: str, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status, headers=headers)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error answer is JSON with a reason, also for routes that do not exist."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error(exc)


def http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's own error answer (no such route, a method the route lacks) as JSON."""
    return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)


def probe_routes(
    metrics: Metrics, ready: Callable[[], Awaitable[str | None]]
) -> list[web.RouteDef]:
    """``/healthz`` (the process answers), ``/readyz`` (``ready()`` returns no reason not to
    be) and ``/metrics``: the same three on every component."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reason = await ready()
        if reason:
            return web.json_response({"status": "unavailable", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    async def render(_: web.Request) -> web.Response:
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE
        return resp

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", render)]


async def serve(app: web.Application, host: str, port: int, stop: asyncio.Event) -> None:
    """Run ``app`` until ``stop`` is set, then drain open requests and close."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    log.info("listening on %s:%s", host, port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def serve_probes(
    metrics: Metrics,
    ready: Callable[[], Awaitable[str | None]],
    host: str,
    port: int,
    stop: asyncio.Event,
) -> None:
    """The probes and metrics on a port of their own (dispatcher, operator)."""
    app = web.Application(middlewares=[json_errors])
    app.add_routes(probe_routes(metrics, ready))
    await serve(app, host, port, stop)
