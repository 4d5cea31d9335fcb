"""The ingest port's connections: aiohttp's HTTP/1.1 handling with the receiver's limits.

:func:`serve` runs the receiver's application behind :class:`FrontDoor`, aiohttp's
connection handler with four changes that a public ingest port needs:

* **One deadline from the first byte.** ``HOOKLINE_REQUEST_TIMEOUT`` counts from the
  first byte of a request's head to the last byte of its body. A head still incomplete
  then is answered ``408`` and the connection closed — one sweep of the listener's
  connections every :data:`SWEEP` seconds finds them, so no request pays for a timer of
  its own; the body's share of the deadline is enforced by the ingest handler, which
  reads :data:`FIRST_BYTE`.
* **Idle connections close.** A connection with no request for ``HOOKLINE_IDLE_TIMEOUT``
  seconds — from its opening, or since its last answer — is closed.
* **A cap on connections.** Past ``HOOKLINE_MAX_CONNECTIONS`` open connections, a new
  one is answered ``503`` with ``Retry-After`` and closed.
* **An absurd chunk refused at once.** A chunked body's framing is followed as it
  arrives: a chunk whose declared size would take the body past
  ``HOOKLINE_MAX_BODY_BYTES`` is answered ``413`` before any of it is read, as an
  oversize ``Content-Length`` is.
* **Every refusal is JSON, and quiet.** What the HTTP parser refuses (a malformed request
  line or header, a conflicting or bad ``Content-Length``, ``Transfer-Encoding`` beside
  ``Content-Length``, too many or too long headers) is answered as the application's own
  errors are, ``{"error", "reason"}``; such refusals are counted in
  ``hookline_ingest_errors`` and logged as one summary line per interval, never one
  traceback each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from hookline.config import Config
from hookline.http import error, http_error
from hookline.metrics import Metrics

log = logging.getLogger(__name__)

# The request's first byte, loop time (``request[FIRST_BYTE]``), for the ingest handler.
FIRST_BYTE: web.RequestKey[float] = web.RequestKey("first_byte", float)

# aiohttp's parser limits, stated here because the docs promise them: the request line and
# each header line at most 8,190 bytes, at most 128 headers.
MAX_LINE = 8190
MAX_HEADERS = 128
SWEEP = 0.5  # seconds between two looks for heads past their deadline

# What the parser's refusals are called, by status (HttpProcessingError carries 400 mostly).
_CODES = {
    400: "bad_request",
    408: "request_timeout",
    413: "body_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
}


def _raw_error(status: int, code: str, reason: str, retry_after: str | None = None) -> bytes:
    """A complete JSON error response, for connections no request object exists for."""
    body = b'{"error":"%s","reason":"%s"}' % (code.encode(), reason.encode())
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}


class _Chunks:
    """Follows a chunked body's framing (RFC 9112 7.1) only as far as the sizes go: each
    size line is read, each chunk's data skipped. :meth:`feed` returns False as soon as
    the declared sizes exceed ``limit``. Malformed framing is left to the HTTP parser."""

    __slots__ = ("left", "limit", "size", "state", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0  # the sizes declared so far
        self.size = 0  # the size line being read
        self.left = 0  # data bytes of the current chunk still to skip
        self.state = "size"  # size, line (rest of a size line), data, crlf, done

    def feed(self, data: bytes) -> bool:
        i, n = 0, len(data)
        while i < n and self.state != "done":
            if self.state == "data":
                step = min(self.left, n - i)
                i += step
                self.left -= step
                if not self.left:
                    self.state = "crlf"
                continue
            c = data[i]
            i += 1
            if self.state == "size":
                digit = _HEX.get(c)
                if digit is not None:
                    self.size = self.size * 16 + digit
                    if self.total + self.size > self.limit:
                        return False
                    continue
                self.state = "line"
            if c != 0x0A:  # the rest of a size line (extensions, CR) or of a chunk's CRLF
                continue
            if self.state == "line":
                self.total += self.size
                self.state = "data" if self.size else "done"  # trailers: the parser's
                self.left, self.size = self.size, 0
            else:
                self.state = "size"
        return True


def _chunked(data: bytes, end: int) -> bool:
    """Whether the request head ``data[:end]`` declares a chunked body."""
    if data.find(b"hunked", 0, end) < 0 and data.find(b"HUNKED", 0, end) < 0:
        return False
    return any(
        line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
        for line in data[:end].split(b"\r\n")
    )


class Refusals:
    """Counts refused requests and logs them as one line per ``interval`` seconds."""

    def __init__(self, metrics: Metrics, interval: float = 10.0) -> None:
        self.metrics = metrics
        self.interval = interval
        self._counts: Counter[str] = Counter()
        self._since = time.monotonic()

    def note(self, code: str) -> None:
        self.metrics.ingest_errors.labels(code).inc()
        self._counts[code] += 1
        now = time.monotonic()
        if now - self._since >= self.interval:
            counts = ", ".join(f"{c} {n}" for c, n in self._counts.most_common())
            log.warning(
                "refused %d malformed request(s) in %.0f s: %s",
                self._counts.total(),
                now - self._since,
                counts,
            )
            self._counts.clear()
            self._since = now


class FrontDoor(RequestHandler):
    """One ingest connection (see the module docstring)."""

    def __init__(
        self, manager: web.Server, config: Config, doors: set[FrontDoor], refusals: Refusals
    ) -> None:
        super().__init__(
            manager,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=config.idle_timeout,
            access_log=None,  # type: ignore[arg-type]  # aiohttp takes None: no access log
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
            auto_decompress=False,  # a body is relayed byte for byte, as it was signed
        )
        self.config = config
        # Its loop, kept: asyncio.get_running_loop() is a getpid() system call on 3.11.
        self.loop = asyncio.get_running_loop()
        self.doors = doors  # the open connections of this listener
        self.refusals = refusals
        self.first_byte: float | None = None  # loop time; None between requests
        self.in_request = False
        self._head: bytes | None = None  # the head's last bytes, until its end is seen
        self._chunks: _Chunks | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.doors.add(self)
        if len(self.doors) > self.config.max_connections:
            self.refusals.note("too_many_connections")
            retry = str(max(1, round(self.config.retry_after)))
            reason = "the receiver has too many open connections"
            assert isinstance(transport, asyncio.Transport)
            transport.write(_raw_error(503, "too_many_connections", reason, retry))
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.doors.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self.first_byte is None and not self.in_request:
            self.first_byte = self.loop.time()
            self._head = b""
            self._chunks = None
        body = data  # what of it is body, for the chunk sizes
        if self._head is not None:  # still looking for the end of this request's head
            seen = self._head + data if self._head else data
            end = seen.find(b"\r\n\r\n")
            if end < 0:
                self._head = seen[-(MAX_LINE * 2) :]  # a chunked header line is short
            else:
                self._head = None
                if _chunked(seen, end):
                    self._chunks = _Chunks(self.config.max_body_bytes)
                    body = seen[end + 4 :]
        if self._chunks is not None and body and not self._chunks.feed(body):
            self._refuse_now(413, "body_too_large", "a chunk takes the body past its limit")
            return
        super().data_received(data)

    def request_started(self) -> float:
        """The handler took a request: the head arrived in time. Returns its first byte."""
        self.in_request = True
        first = self.first_byte
        return self.loop.time() if first is None else first

    def request_finished(self) -> None:
        self.in_request = False
        self.first_byte = None
        self._head = self._chunks = None

    def past_deadline(self, now: float) -> None:
        """Answered 408 and closed when its head is still incomplete past the deadline."""
        first = self.first_byte
        if first is not None and not self.in_request:
            if now - first > self.config.request_timeout:
                self._refuse_now(408, "request_timeout", "the request was not read in time")

    def _refuse_now(self, status: int, code: str, reason: str) -> None:
        """Answer and close at once, whatever the parser or the handler are doing."""
        self.refusals.note(code)
        if self.transport is not None:
            self.transport.write(_raw_error(status, code, reason))
            self.force_close()  # closes the transport once the answer is written

    # The next two do what a middleware would, inside aiohttp's own steps: a middleware
    # costs every request two coroutines (its own and aiohttp's current-app one) and a
    # context manager — 2.7 % of the receiver's instructions per request (callgrind,
    # docs/benchmarks.md). They are the only overrides of aiohttp's per-request path;
    # tests/fuzz holds them to their word.

    def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    ) -> Coroutine[Any, Any, tuple[web.StreamResponse, bool]]:
        """The request's head is complete: its first byte goes to the handler (which keeps
        the deadline for the body) and the sweep leaves the connection alone."""
        request[FIRST_BYTE] = self.request_started()
        return super()._handle_request(request, start_time, request_handler)

    def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> Coroutine[Any, Any, tuple[web.StreamResponse, bool]]:
        """Before the answer goes out: aiohttp's own errors (no such route, a method the
        route lacks) become JSON, as :func:`hookline.http.json_errors` makes them for the
        other components; a body the handler left unread closes the connection after
        the answer (the bytes still to come are no next request's head); and the
        connection is between requests again."""
        self.request_finished()
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            resp = http_error(resp)
        if not request.content.is_eof():
            resp.force_close()
        return super().finish_response(request, resp, start_time)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer has begun: the connection is broken
            raise ConnectionError("an answer was already being sent")
        if isinstance(exc, ConnectionError) or self.transport is None:
            # The connection is gone (the sender left, or a refusal here closed it while
            # the handler read the body): nobody to answer, and no fault to report.
            log.debug("connection lost while handling a request: %s", exc)
            resp = web.Response(status=status)
            resp.force_close()
            return resp
        if status >= 500:  # not a refusal: a fault of hookline's own, with its traceback
            log.error("error handling a request", exc_info=exc)
            code, reason = "internal_error", "the receiver failed to handle the request"
        else:
            code = _CODES.get(status, "bad_request")
            reason = message or HTTPStatus(status).phrase
            self.refusals.note(code)
        resp = error(status, code, reason)
        resp.force_close()
        return resp


async def serve(
    app: web.Application, config: Config, metrics: Metrics, stop: asyncio.Event
) -> None:
    """Serve ``app`` on the receiver's address behind :class:`FrontDoor` until ``stop``
    is set; then stop accepting, drain open requests and close."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=10.0)
    await runner.setup()
    assert runner.server is not None
    manager = runner.server
    doors: set[FrontDoor] = set()
    refusals = Refusals(metrics)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FrontDoor(manager, config, doors, refusals),
        config.receiver_host,
        config.receiver_port,
        backlog=1024,
        reuse_address=True,
    )
    log.info("listening on %s:%s", config.receiver_host, config.receiver_port)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SWEEP)
            now = loop.time()
            for door in list(doors):
                door.past_deadline(now)
    finally:
        server.close()
        await runner.cleanup()
        await server.wait_closed()
