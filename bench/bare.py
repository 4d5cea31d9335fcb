"""The ingest baseline: a bare aiohttp handler that reads the body and answers ``202``.

Served exactly as hookline's receiver is (``AppRunner`` without access log,
the same backlog, uvloop), so the ratio measures what hookline's own work
costs: key lookup, header filtering, packing and the Redis round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from aiohttp import web

ANSWER = b'{"id":"msg_01J0000000000000000000000"}'


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202, body=ANSWER, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/webhooks/send", accept)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(p.parse_args().port))


if __name__ == "__main__":
    main()
