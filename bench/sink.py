"""A minimal HTTP/1.1 sink for the benchmarks: answers every request ``204`` with keep-alive.

Run by ``bench/run.py`` on the load core, so the endpoint is never what limits
a delivery figure: it is a bare ``asyncio.Protocol`` that splits requests by
``Content-Length`` and writes a canned answer, with no routing and no header
objects. On SIGTERM it prints one JSON line — requests received and the
monotonic times (ns) of the first and last — and, with ``--record FILE``,
writes ``webhook-id<TAB>receipt ns`` per request for the end-to-end latency.
With ``--hang SECONDS`` it answers each request that many seconds late (the
hanging endpoint of the isolation figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import cast

import uvloop

ANSWER = b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Stats:
    def __init__(self, record: bool, hang: float = 0.0) -> None:
        self.hang = hang
        self.count = 0
        self.first = 0
        self.last = 0
        self.record = record
        self.receipts: list[tuple[bytes, int]] = []


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case) in a raw request head."""
    low = head.lower()
    at = low.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


class SinkProtocol(asyncio.Protocol):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buf = self.buf + data
        answers = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            if _header(head, b"transfer-encoding") is not None:
                self.transport.write(BAD)  # hookline sends inline bodies with a length
                self.transport.close()
                return
            length = int(_header(head, b"content-length") or 0)
            if len(buf) < end + 4 + length:
                break
            buf = buf[end + 4 + length :]
            answers += 1
            now = time.monotonic_ns()
            stats = self.stats
            if not stats.count:
                stats.first = now
            stats.count += 1
            stats.last = now
            if stats.record:
                stats.receipts.append((_header(head, b"webhook-id") or b"-", now))
        self.buf = buf
        if answers and self.stats.hang:
            loop = asyncio.get_running_loop()
            loop.call_later(self.stats.hang, self._answer, ANSWER * answers)
        elif answers:
            self.transport.write(ANSWER * answers)

    def _answer(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def serve(port: int, stats: Stats) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(
        lambda: SinkProtocol(stats), "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    print(json.dumps({"listening": port}), flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--record", help="file for one 'webhook-id<TAB>receipt ns' line per request")
    p.add_argument("--hang", type=float, default=0.0, help="answer this many seconds late")
    args = p.parse_args()
    stats = Stats(record=bool(args.record), hang=args.hang)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port, stats))
    if args.record:
        with open(args.record, "wb") as f:
            f.writelines(wid + b"\t" + str(t).encode() + b"\n" for wid, t in stats.receipts)
    summary = {"received": stats.count, "first_ns": stats.first, "last_ns": stats.last}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
