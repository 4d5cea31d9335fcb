"""The end-to-end load: POSTs webhooks to the receiver at a fixed offered rate.

Open loop: webhook *i* is due at ``start + i / rate`` whatever the earlier
ones are doing, and goes out on the first of ``--connections`` keep-alive
connections that is free, so a slow receiver shows up as latency, not as a
lower rate. HTTP/1.1 is spoken directly over asyncio streams: an aiohttp
client would cost the shared CPUs more than the receiver it measures.
Writes ``webhook-id<TAB>accept ns`` (monotonic, when the ``202`` arrived) per
accepted webhook to ``--out`` and prints one JSON summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import uvloop


class Load:
    def __init__(self, url: str, key: str, body: bytes) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nX-WH-Endpoint-Key: {key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.due: asyncio.Queue[None] = asyncio.Queue()
        self.accepted: list[tuple[str, int]] = []
        self.refused = 0

    async def connection(self) -> None:
        while True:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                while True:
                    await self.due.get()
                    try:
                        await self.exchange(reader, writer)
                    finally:
                        self.due.task_done()
            except (OSError, asyncio.IncompleteReadError):
                self.refused += 1  # no answer: not accepted; reconnect
            finally:
                writer.close()

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        at = time.monotonic_ns()
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        payload = await reader.readexactly(length)
        if head.startswith(b"HTTP/1.1 202"):
            self.accepted.append((json.loads(payload)["id"], at))
        else:
            self.refused += 1

    async def run(self, rate: float, duration: float, connections: int) -> dict[str, float]:
        workers = [asyncio.create_task(self.connection()) for _ in range(connections)]
        total = int(rate * duration)
        start = time.monotonic()
        max_lag = 0.0
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            self.due.put_nowait(None)
        await asyncio.wait_for(self.due.join(), 30.0)
        elapsed = time.monotonic() - start
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        return {
            "offered": total,
            "accepted": len(self.accepted),
            "refused": self.refused,
            "seconds": round(elapsed, 3),
            "max_schedule_lag_ms": round(max_lag * 1000, 2),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--body-bytes", type=int, default=1024)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    body = b'{"type":"bench","pad":"' + b"x" * (args.body_bytes - 25) + b'"}'
    load = Load(args.url, args.key, body)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        summary = runner.run(load.run(args.rate, args.duration, args.connections))
    with open(args.out, "w") as f:
        f.writelines(f"{wid}\t{t}\n" for wid, t in load.accepted)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
