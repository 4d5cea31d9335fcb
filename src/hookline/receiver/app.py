"""The receiver: turns an HTTP request into a durable queue entry, or a clear JSON error.

Called by ``hookline receiver`` (and the local stack) with its dependencies
built by the entry point: ``create_app(config, cache, queue, bodies, metrics,
tracing)``; with tracing on, each ingest request is a SERVER span holding the
body upload and the PRODUCER span of the enqueue (see :mod:`hookline.spans`) — or,
when the sampler leaves out a request that brought no trace context, no span at all,
only the ``traceparent`` its entry carries (``Tracing.unsampled_root``).
A ``202`` is sent only after Redis took the entry (and, for a large body, the
body store took the body first); any store failure is a ``503`` with
``Retry-After``, and whatever was half-written is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

from aiohttp import web

from hookline import spans
from hookline.bodies import BodyStore
from hookline.config import Config
from hookline.errors import BodyLengthMismatch, BodyTooLarge, StoreNotReached, StoreUnavailable
from hookline.http import error, probe_routes
from hookline.metrics import Metrics
from hookline.models import EVENT_TYPE_RULE, Endpoint, Source, Webhook, new_id, valid_event_type
from hookline.receiver.frontdoor import FIRST_BYTE
from hookline.store import SOURCE, Queue, RegistryCache
from hookline.tracing import OFF, Tracing

log = logging.getLogger(__name__)

KEY_HEADER = "X-WH-Endpoint-Key"
# A source's event names its type here; each endpoint it goes to gets the same header.
EVENT_TYPE_HEADER = "X-WH-Event-Type"
ROUTE = "/webhooks/send"

# Never forwarded, whatever an endpoint's allow list says: hop-by-hop headers,
# credentials, and headers the dispatcher sets itself.
DROPPED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "Authorization",
        "Cookie",
        "Set-Cookie",
        KEY_HEADER,
        EVENT_TYPE_HEADER,
        "Idempotency-Key",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "traceparent",
        "tracestate",
        "uber-trace-id",
        "baggage",
    )
)

CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
CACHE: web.AppKey[RegistryCache] = web.AppKey("cache", RegistryCache)
QUEUE: web.AppKey[Queue] = web.AppKey("queue", Queue)
BODIES: web.AppKey[BodyStore] = web.AppKey("bodies", BodyStore)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
TRACING: web.AppKey[Tracing] = web.AppKey("tracing", Tracing)


@functools.lru_cache(maxsize=1024)
def _allowed(forward_headers: tuple[str, ...]) -> tuple[str, ...]:
    """The headers an allow list really forwards: the two that describe the body
    (Content-Type, Content-Encoding), and never a dropped one."""
    names = dict.fromkeys(
        ("content-type", "content-encoding", *(h.lower() for h in forward_headers))
    )
    return tuple(h for h in names if h not in DROPPED_HEADERS)


_PRINTABLE_RULE = "only visible ASCII characters, spaces and tabs are accepted"


def _printable(value: str) -> bool:
    """Whether a header value is what hookline stores and forwards: visible ASCII, space
    and tab (aiohttp hands other bytes over as surrogates or Latin-1 characters). The
    string methods cost a tenth of the regular expression they replace (1.9k instructions
    a request for three values)."""
    return value.isascii() and (value.isprintable() or value.replace("\t", "").isprintable())


def _malformed(request: web.Request) -> tuple[str, str] | None:
    """Why a request cannot be taken whatever its key: (code, reason), or None."""
    if request.version < (1, 0):
        return "unsupported_http_version", "HTTP/1.0 or HTTP/1.1 is required"
    if request.version == (1, 0) and "chunked" in request.headers.get("Transfer-Encoding", ""):
        return "bad_request", "HTTP/1.0 has no chunked transfer coding"
    keys = request.headers.getall(KEY_HEADER, [])
    if len(keys) > 1:
        return "invalid_header", f"{KEY_HEADER} must be sent once"
    for name in (KEY_HEADER, "Idempotency-Key"):
        value = request.headers.get(name)
        if value is not None and not _printable(value):
            return "invalid_header", f"{name}: {_PRINTABLE_RULE}"
    return None


def forwarded_headers(request: web.Request, endpoint: Endpoint) -> dict[str, str]:
    """The request's headers that the endpoint's allow list names, in lower case; a repeated
    header forwards its last value."""
    out = {}
    headers = request.headers
    for name in _allowed(endpoint.forward_headers):
        values = headers.getall(name, None)
        if values:
            out[name] = values[-1]
    return out


async def _chunks(first: bytes, request: web.Request) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in request.content.iter_chunked(256 * 1024):
        yield chunk


async def _read_head(request: web.Request, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body (fewer only at its end)."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = await request.content.read(limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


class Body(NamedTuple):
    """A request's body as read: in hand (``body``), or in the body store (``ref``)."""

    body: bytes
    ref: str | None
    size: int


_NO_BODY = Body(b"", None, 0)


def _accepted(event_id: str, endpoints: int) -> web.Response:
    return web.json_response({"id": event_id, "endpoints": endpoints}, status=202)


class Ingest:
    def __init__(self, app: web.Application) -> None:
        self.config = app[CONFIG]
        self.cache = app[CACHE]
        self.queue = app[QUEUE]
        self.bodies = app[BODIES]
        self.metrics = app[METRICS]
        self.tracing = app[TRACING]
        self.retry_after = str(max(1, round(self.config.retry_after)))
        self.ingested_inline = self.metrics.tally(self.metrics.ingested.labels("inline"))
        self.ingested_ref = self.metrics.tally(self.metrics.ingested.labels("ref"))

    def refuse(self, status: int, code: str, reason: str, **headers: str) -> web.Response:
        self.metrics.ingest_errors.labels(code).inc()
        return error(status, code, reason, **headers)

    async def _send_traced(self, request: web.Request, trace_id: int) -> web.Response:
        with spans.server(self.tracing, request, ROUTE, trace_id) as span:
            response = await self.send(request, in_span=True)
            spans.answered(span, response.status)
            return response

    async def send(self, request: web.Request, in_span: bool = False) -> web.Response:
        """The ingest route. With tracing on the sampler is asked first: a request it keeps
        is handled under its SERVER span (:meth:`_send_traced`, which calls back here
        ``in_span``); one it leaves out (:meth:`Tracing.unsampled_root`) goes on here
        with no span, only the ``traceparent`` its entries carry, and no coroutine more
        than with tracing off."""
        unsampled = None
        clen = request.content_length  # validated by aiohttp's parser: digits only
        if self.tracing.enabled and not in_span:
            trace_id = 0
            if clen is not None and clen <= self.config.inline_limit:  # no upload span to come
                unsampled, trace_id = self.tracing.unsampled_root(request.headers)
            if unsampled is None:
                return await self._send_traced(request, trace_id)
        problem = _malformed(request)
        if problem is not None:
            return self.refuse(400, *problem)
        key = request.headers.get(KEY_HEADER)
        if not key:
            return self.refuse(401, "missing_key", f"the {KEY_HEADER} header is required")
        found = self.cache.by_key(key)
        if found is None:
            if not self.cache.loaded.is_set():
                return self.refuse(
                    503,
                    "registry_unavailable",
                    "the endpoint registry is not loaded yet",
                    **{"Retry-After": self.retry_after},
                )
            return self.refuse(401, "unknown_key", "no endpoint or source has this key")
        if isinstance(found, Source):
            return await self._fan_out(request, found, clen, unsampled)
        endpoint = found
        if endpoint.paused:
            return self.refuse(409, "endpoint_paused", f"endpoint {endpoint.id} is paused")
        disabled = self.cache.disabled_reason(endpoint.id)
        if disabled:
            return self.refuse(
                409, "endpoint_disabled", f"endpoint {endpoint.id} is disabled: {disabled}"
            )
        headers = forwarded_headers(request, endpoint)
        refused = self._refused_headers(headers) or self._refused_length(clen)
        if refused is not None:
            return refused
        idem_key = self._idempotency(request, endpoint.id)
        accept = functools.partial(
            self._accept, request, clen, endpoint, headers, idem_key, unsampled
        )
        if self._arrived(request, clen):
            # The whole body has already arrived: there is nothing left to read under the
            # deadline, and the enqueue is bounded by the queue's own Redis timeout.
            return await accept()
        return await self._within_deadline(request, accept)

    async def _accept(
        self,
        request: web.Request,
        clen: int | None,
        endpoint: Endpoint,
        headers: dict[str, str],
        idem_key: str | None,
        unsampled: str | None,
    ) -> web.Response:
        wid = new_id()
        read = await self._read_body(request, wid, clen)
        if isinstance(read, web.Response):
            return read
        return await self._enqueue(endpoint, headers, wid, read, idem_key, unsampled)

    async def _fan_out(
        self, request: web.Request, source: Source, clen: int | None, unsampled: str | None
    ) -> web.Response:
        """A source's event: queued for every subscribed endpoint whose filter matches its
        type, all or none (:meth:`hookline.store.queue.Queue.fan_out`)."""
        event_type = request.headers.get(EVENT_TYPE_HEADER)
        if not event_type:
            return self.refuse(
                400, "missing_event_type", f"a source's event needs the {EVENT_TYPE_HEADER} header"
            )
        if not valid_event_type(event_type):
            return self.refuse(400, "invalid_event_type", f"{EVENT_TYPE_HEADER}: {EVENT_TYPE_RULE}")
        if source.event_types and event_type not in source.event_types:
            return self.refuse(
                400,
                "unknown_event_type",
                f"source {source.id} does not send {event_type!r}; its event types are "
                + ", ".join(source.event_types),
            )
        endpoints = self.cache.subscribers(source.id, event_type)
        headers = []
        for endpoint in endpoints:
            forwarded = forwarded_headers(request, endpoint)
            forwarded[EVENT_TYPE_HEADER.lower()] = event_type
            refused = self._refused_headers(forwarded)
            if refused is not None:
                return refused
            headers.append((endpoint, forwarded))
        refused = self._refused_length(clen)
        if refused is not None:
            return refused
        idem_key = self._idempotency(request, SOURCE + source.id)

        async def accept() -> web.Response:
            wid = new_id()
            read = _NO_BODY  # no endpoint takes it: counted, and the body is not read
            if headers:
                body = await self._read_body(request, wid, clen)
                if isinstance(body, web.Response):
                    return body
                read = body
            answer = await self._fan_out_to(source, wid, headers, read, idem_key, unsampled)
            if isinstance(answer, web.Response):
                return answer
            response = _accepted(*answer)
            if not request.content.is_eof():
                response.force_close()  # the unread rest of the body is no next request
            return response

        if self._arrived(request, clen):
            return await accept()
        return await self._within_deadline(request, accept)

    def _refused_headers(self, headers: dict[str, str]) -> web.Response | None:
        for name, value in headers.items():
            if not _printable(value):
                return self.refuse(400, "invalid_header", f"{name}: {_PRINTABLE_RULE}")
        return None

    def _refused_length(self, clen: int | None) -> web.Response | None:
        limit = self.config.max_body_bytes
        if clen is not None and clen > limit:
            resp = self.refuse(413, "body_too_large", f"the body exceeds {limit} bytes")
            resp.force_close()
            return resp
        return None

    @staticmethod
    def _idempotency(request: web.Request, scope: str) -> str | None:
        """The Redis name of the request's Idempotency-Key, per endpoint or source."""
        idem = request.headers.get("Idempotency-Key")
        if not idem:
            return None
        return hashlib.sha256(f"{scope}\0{idem}".encode()).hexdigest()[:40]

    def _arrived(self, request: web.Request, clen: int | None) -> bool:
        """Whether the request's whole body, of a size kept inline, is already in hand."""
        return clen is not None and clen <= self.config.inline_limit and request.content.is_eof()

    async def _within_deadline(
        self, request: web.Request, accept: Callable[[], Awaitable[web.Response]]
    ) -> web.Response:
        """``accept()`` within what is left of the request's deadline, which runs from its
        first byte (see hookline.receiver.frontdoor)."""
        loop = asyncio.get_running_loop()
        first = request.get(FIRST_BYTE, loop.time())
        try:
            async with asyncio.timeout_at(first + self.config.request_timeout):
                return await accept()
        except TimeoutError:
            resp = self.refuse(408, "request_timeout", "the request was not read in time")
            resp.force_close()
            return resp

    async def _read_body(
        self, request: web.Request, wid: str, clen: int | None
    ) -> Body | web.Response:
        """The body, in hand when it fits inline, else streamed to the body store (its
        reference returned); or the refusal when it is too large or the store fails."""
        config = self.config
        inline = config.inline_limit
        try:
            if clen is not None and clen <= inline:
                body = await request.read()
                return Body(body, None, len(body))
            body = await _read_head(request, inline + 1)
            if len(body) <= inline:
                return Body(body, None, len(body))
            with spans.upload(self.tracing, config.body_store):
                ref, size = await self.bodies.put(
                    wid, _chunks(body, request), config.max_body_bytes, clen
                )
            return Body(b"", ref, size)
        except BodyTooLarge as exc:
            resp = self.refuse(413, "body_too_large", str(exc))
            resp.force_close()
            return resp
        except BodyLengthMismatch as exc:  # aiohttp fails a short body first; never a 500
            resp = self.refuse(400, "bad_request", str(exc))
            resp.force_close()
            return resp
        except StoreUnavailable as exc:
            log.warning("body store unavailable: %s", exc)
            return self._unavailable("the body store is unavailable")

    def _unavailable(self, reason: str) -> web.Response:
        return self.refuse(503, "store_unavailable", reason, **{"Retry-After": self.retry_after})

    async def _enqueue(
        self,
        endpoint: Endpoint,
        headers: dict[str, str],
        wid: str,
        read: Body,
        idem_key: str | None,
        unsampled: str | None,
    ) -> web.Response:
        webhook = Webhook(
            id=wid,
            endpoint=endpoint.id,
            headers=headers,
            body=read.body,
            body_ref=read.ref,
            size=read.size,
            created_ms=int(time.time() * 1000),
        )

        try:
            if unsampled is not None:  # no span: the decision travels in the entry
                webhook.trace["traceparent"] = unsampled
                accepted = await self.queue.enqueue(endpoint.pool, webhook, idem_key)
            elif self.tracing.enabled:
                with spans.produce(self.tracing, webhook, self.queue.stream(endpoint.pool)):
                    accepted = await self.queue.enqueue(endpoint.pool, webhook, idem_key)
            else:
                accepted = await self.queue.enqueue(endpoint.pool, webhook, idem_key)
        except StoreUnavailable as exc:
            return await self._not_written(read.ref, exc)
        if accepted != wid:  # a repeated Idempotency-Key: the first webhook stands
            await self._discard(read.ref)
        (self.ingested_ref if read.ref else self.ingested_inline).n += 1
        return web.Response(
            status=202, body=b'{"id":"' + accepted.encode() + b'"}', content_type="application/json"
        )

    async def _fan_out_to(
        self,
        source: Source,
        wid: str,
        headers: list[tuple[Endpoint, dict[str, str]]],
        read: Body,
        idem_key: str | None,
        unsampled: str | None,
    ) -> tuple[str, int] | web.Response:
        """Queue the event's deliveries in one step; (event id, endpoints) or the refusal."""
        created = int(time.time() * 1000)
        shared = len(headers) > 1
        event = Webhook(id=wid, endpoint=source.id, headers={}, size=read.size, created_ms=created)

        try:
            with spans.produce(self.tracing, event, SOURCE + source.id, unsampled):
                deliveries = [
                    (
                        endpoint.pool,
                        Webhook(
                            id=wid,
                            endpoint=endpoint.id,
                            headers=forwarded,
                            body=b"" if shared else read.body,
                            body_ref=read.ref,
                            size=read.size,
                            created_ms=created,
                            trace=event.trace,
                            source=source.id,
                            shared=shared,
                        ),
                    )
                    for endpoint, forwarded in headers
                ]
                answer = await self.queue.fan_out(source.id, wid, deliveries, read.body, idem_key)
        except StoreUnavailable as exc:
            return await self._not_written(read.ref, exc)
        if answer[0] != wid:  # a repeated Idempotency-Key: the first event stands
            await self._discard(read.ref)
        if headers:
            (self.ingested_ref if read.ref else self.ingested_inline).n += 1
        return answer

    async def _not_written(self, ref: str | None, exc: StoreUnavailable) -> web.Response:
        """The 503 for a queue write Redis did not answer. A body the request stored is kept
        then: the command may have reached Redis and run after all (a reply that came too
        late, a connection lost after the write), and its entries would name the body. The
        body reaper removes it after ``HOOKLINE_BODY_GRACE`` if no entry does
        (docs/bodies.md). Only a command that never left (Redis not reached) lets the body
        go at once."""
        log.warning("queue unavailable: %s", exc)
        if isinstance(exc, StoreNotReached):  # never sent: nothing can name the body
            await self._discard(ref)
        return self._unavailable("the queue is unavailable")

    async def _discard(self, ref: str | None) -> None:
        if ref is not None:
            with contextlib.suppress(StoreUnavailable):
                await asyncio.shield(self.bodies.delete(ref))


async def _expect(request: web.Request) -> web.Response | None:
    """``Expect: 100-continue`` is answered ``100 Continue``; any other expectation is
    refused as JSON (aiohttp's own answer is plain text)."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        resp = error(417, "expectation_failed", "only Expect: 100-continue is understood")
        resp.force_close()  # the body may follow anyway: it is no next request's head
        return resp
    if request.version == (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not begun
    return None


def _readiness(
    cache: RegistryCache, queue: Queue, bodies: BodyStore
) -> Callable[[], Awaitable[str | None]]:
    async def ready() -> str | None:
        if not cache.loaded.is_set():
            return "endpoint registry not loaded"
        try:
            await queue.conn.ping()
        except StoreUnavailable as exc:
            return str(exc)
        try:
            await bodies.check()
        except StoreUnavailable as exc:
            return str(exc)
        return None

    return ready


def create_app(
    config: Config,
    cache: RegistryCache,
    queue: Queue,
    bodies: BodyStore,
    metrics: Metrics,
    tracing: Tracing = OFF,
) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[CACHE] = cache
    app[QUEUE] = queue
    app[BODIES] = bodies
    app[METRICS] = metrics
    app[TRACING] = tracing
    ingest = Ingest(app)
    app.add_routes([web.post(ROUTE, ingest.send, expect_handler=_expect)])
    app.add_routes(probe_routes(metrics, _readiness(cache, queue, bodies)))

    async def follow_registry(_: web.Application) -> AsyncIterator[None]:
        if not await cache.start():
            log.warning("endpoint registry not loaded yet; retrying in the background")
        yield
        await cache.stop()

    app.cleanup_ctx.append(follow_registry)
    return app
