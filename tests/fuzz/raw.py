"""A raw HTTP/1.1 client for the fuzz tier: any bytes out, one parsed answer back.

aiohttp's client would refuse (or fix up) most of what this tier sends: header
values that are not UTF-8, a request line without a version, two Content-Length
headers, a chunk size of ``ffffffffffffffff``. So requests are plain bytes written
to a TCP connection in pieces, with pauses between them, while the answer is read
back by :func:`parse_response`.

The connection is an :class:`asyncio.Protocol` of its own rather than
``asyncio.open_connection``: a server that answers early and closes while the client
still writes sends a reset, and a ``StreamReader`` then raises on every read even
though the answer is already in its buffer. Here every byte that arrived stays
readable whatever happens to the connection afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# A piece of a request: seconds to wait before writing it, then its bytes.
Piece = tuple[float, bytes]


class Unparseable(Exception):
    """The server's answer is not an HTTP response."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]  # names in lower case, in the order sent
    body: bytes

    def header(self, name: str) -> bytes | None:
        """The first value of header ``name``."""
        wanted = name.lower().encode()
        return next((v for n, v in self.headers if n == wanted), None)

    @property
    def media_type(self) -> str:
        value = self.header("Content-Type") or b""
        return value.split(b";")[0].strip().lower().decode("latin-1")

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def __str__(self) -> str:
        body = self.body[:120] + (b"..." if len(self.body) > 120 else b"")
        return f"{self.status} {self.media_type or '(no content type)'} {body!r}"


@dataclass(frozen=True)
class Exchange:
    """What came back for one request.

    ``response`` is the final (non-1xx) answer, or None; ``elapsed`` counts seconds from
    the first byte written (from the connect when nothing was written) to that answer,
    or to the close when none came, or to the end of the wait."""

    response: Response | None
    closed: bool
    elapsed: float
    error: str | None = None  # the answer could not be parsed

    def __str__(self) -> str:
        if self.error:
            return f"unparseable answer after {self.elapsed:.2f} s: {self.error}"
        if self.response is not None:
            return f"{self.response} after {self.elapsed:.2f} s"
        if self.closed:
            return f"closed without an answer after {self.elapsed:.2f} s"
        return f"no answer and still open after {self.elapsed:.2f} s"


def _head_end(buf: bytes | bytearray) -> int:
    end = buf.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def _chunked(data: bytes) -> tuple[bytes, int] | None:
    """A chunked body at the start of ``data``: (body, bytes used), None if incomplete."""
    body = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = data[pos:eol].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise Unparseable(f"chunk size {size_text!r}") from exc
        pos = eol + 2
        if size == 0:
            end = _head_end(data[pos - 2 :])  # trailers, then an empty line
            return None if end < 0 else (bytes(body), pos - 2 + end)
        if len(data) < pos + size + 2:
            return None
        body += data[pos : pos + size]
        pos += size + 2


def parse_response(buf: bytes, eof: bool) -> tuple[Response, int] | None:
    """The first response in ``buf`` and the bytes it used; None while it is incomplete
    (``eof``: nothing more will come, so a body without a length ends here)."""
    end = _head_end(buf)
    if end < 0:
        if eof and buf:
            raise Unparseable(f"the connection closed inside a response head: {buf[:200]!r}")
        return None
    lines = buf[: end - 4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise Unparseable(f"status line {lines[0][:200]!r}")
    status = int(parts[1])
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise Unparseable(f"header line {line[:200]!r}")
        headers.append((name.strip().lower(), value.strip()))
    response = Response(status, tuple(headers), b"")
    if 100 <= status < 200 or status in (204, 304):
        return response, end
    rest = buf[end:]
    encoding = response.header("Transfer-Encoding")
    length = response.header("Content-Length")
    if encoding is not None and b"chunked" in encoding.lower():
        found = _chunked(rest)
        if found is None:
            if eof:
                raise Unparseable("the connection closed inside a chunked body")
            return None
        body, used = found
        return Response(status, response.headers, body), end + used
    if length is not None:
        try:
            n = int(length)
        except ValueError as exc:
            raise Unparseable(f"Content-Length {length!r}") from exc
        if len(rest) < n:
            if eof:
                raise Unparseable(f"the connection closed {n - len(rest)} bytes short of a body")
            return None
        return Response(status, response.headers, rest[:n]), end + n
    if not eof:
        return None
    return Response(status, response.headers, rest), len(buf)


class _Collector(asyncio.Protocol):
    """Keeps every byte the server sends, and whether it closed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.changed = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def eof_received(self) -> bool:
        self.closed = True
        self.changed.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.changed.set()


class Connection:
    """One TCP connection to the server under test; the caller writes, then awaits."""

    def __init__(self, collector: _Collector) -> None:
        self._c = collector
        self.opened = time.monotonic()
        self.first_byte: float | None = None

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Connection:
        loop = asyncio.get_running_loop()
        _, collector = await loop.create_connection(_Collector, host, port)
        return cls(collector)

    @property
    def closed(self) -> bool:
        return self._c.closed

    def write(self, data: bytes) -> bool:
        """Write ``data`` unless the server already closed; returns whether it was written."""
        transport = self._c.transport
        if not data or self._c.closed or transport is None or transport.is_closing():
            return False
        if self.first_byte is None:
            self.first_byte = time.monotonic()
        transport.write(data)
        return True

    async def send(self, pieces: Sequence[Piece]) -> None:
        """Write the pieces with their pauses; stops early when the server has closed."""
        for pause, data in pieces:
            if pause > 0:
                await asyncio.sleep(pause)
            if not self.write(data) and self._c.closed:
                return

    def _answer(self) -> Response | None:
        """The first final answer received so far (1xx answers are skipped)."""
        buf = bytes(self._c.data)
        while True:
            found = parse_response(buf, self._c.closed)
            if found is None:
                return None
            response, used = found
            if not 100 <= response.status < 200:
                return response
            buf = buf[used:]

    async def answer(self, within: float) -> Exchange:
        """Wait up to ``within`` seconds for a final answer or the close."""
        deadline = time.monotonic() + within
        while True:
            try:
                response = self._answer()
            except Unparseable as exc:
                return Exchange(None, self._c.closed, self._since_start(), str(exc))
            if response is not None or self._c.closed:
                return Exchange(response, self._c.closed, self._since_start())
            left = deadline - time.monotonic()
            if left <= 0:
                return Exchange(None, False, self._since_start())
            self._c.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._c.changed.wait(), left)

    def _since_start(self) -> float:
        return time.monotonic() - (self.first_byte or self.opened)

    def close(self) -> None:
        if self._c.transport is not None:
            self._c.transport.abort()


async def exchange(port: int, pieces: Sequence[Piece], within: float) -> Exchange:
    """Send ``pieces`` on a new connection while waiting up to ``within`` seconds (after the
    pauses) for the answer; the connection is closed afterwards."""
    conn = await Connection.open(port)
    sending = asyncio.create_task(conn.send(pieces))
    try:
        # The server may answer before the request is complete (an early 401 or 413):
        # the answer counts from then on, and the rest is not sent.
        result = await conn.answer(within + sum(p for p, _ in pieces))
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        conn.close()
    return result
