"""The ingest baseline: a bare aiohttp handler that reads the body and answers ``202``.

Served exactly as hookline's receiver is (``AppRunner`` without access log,
the same backlog, uvloop), so the ratio measures what hookline's own work
costs: key lookup, header filtering, packing and the Redis round trip.

With ``--forward URL`` it is the cost part's floor instead: a bare relay that posts
each body on to ``URL`` (an aiohttp client, the raw client's connector settings)
and answers ``202`` once that endpoint has answered — one process, two HTTP hops,
no queue, no durability. What it spends per webhook at 100/s against saturation is
what an event's own wake-ups cost on this machine, whatever the relay does.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop
from aiohttp import web

ANSWER = b'{"id":"msg_01J0000000000000000000000"}'


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202, body=ANSWER, content_type="application/json")


def relay(
    url: str, session: aiohttp.ClientSession
) -> Callable[[web.Request], Awaitable[web.Response]]:
    ids = itertools.count()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        wid = f"relay_{next(ids)}"
        headers = {"Content-Type": "application/json", "webhook-id": wid}
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
        return web.Response(status=202, body=b'{"id":"%s"}' % wid.encode())

    return forward


async def serve(port: int, forward: str | None) -> None:
    app = web.Application()
    session = None  # the ingest baseline has no client: no resolver thread, nothing more
    if forward:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, enable_cleanup_closed=True)
        session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )
    app.router.add_post(
        "/webhooks/send", relay(forward, session) if forward and session else accept
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    if session:
        await session.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--forward", metavar="URL", help="relay each body to URL (the cost floor)")
    args = p.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port, args.forward))


if __name__ == "__main__":
    main()
