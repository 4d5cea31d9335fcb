"""The spans hookline makes: which span each hop opens, and with which attributes.

Called by the receiver (:mod:`hookline.receiver.app`) and the dispatcher
(:mod:`hookline.dispatcher.worker`) with the :class:`~hookline.tracing.Tracing`
their entry point built. With :data:`~hookline.tracing.OFF` every helper but
:func:`server` (whose caller skips it) returns at once: a shared no-op context
manager, or the plain call. ``docs/tracing.md`` shows a real trace::

    hookline-receiver    POST /webhooks/send   SERVER    continues the sender's context
                           body upload         INTERNAL  bodies over the inline limit
                           send <stream>       PRODUCER  its context goes into the entry
    hookline-dispatcher  process <stream>      CONSUMER  one per attempt, child of the producer
                           POST                CLIENT    injects traceparent into the delivery

Attributes follow the OpenTelemetry HTTP and messaging conventions, plus a few
``hookline.*`` ones (endpoint, attempt, outcome). Bodies, headers other than the
user agent, signatures, keys and URL query values are never recorded. Between
the two components the queue entry (:attr:`~hookline.models.Webhook.trace`)
carries W3C trace-context and baggage: :func:`produce` writes it, :func:`consume`
reads it.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Final

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from hookline.models import Deferred, Delivered, Failed, Outcome, Rejected, Webhook
from hookline.tracing import Tracing, attach, current_span, detach, has_baggage, remote

MESSAGING_SYSTEM: Final = "redis"

# The queue entry's carrier: hookline writes it and reads it, W3C is enough.
_BAGGAGE: Final = W3CBaggagePropagator()
_CARRIER: Final = CompositePropagator([TraceContextTextMapPropagator(), _BAGGAGE])
_NOTHING: Final[AbstractContextManager[None]] = contextlib.nullcontext()
_EMPTY: Final = Context()


class _Ending:
    """Ends a span on exit (for spans nothing runs inside of); an exception that
    escapes marks it as an error."""

    __slots__ = ("span",)

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def __enter__(self) -> trace.Span:
        return self.span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.span.is_recording():
            self.span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
        self.span.end()


class _Current(_Ending):
    """Makes a span current (its context attached) until it ends; an exception that
    escapes is recorded on it as well, and an aiohttp answer (a 413, say) is an answer."""

    __slots__ = ("token",)

    def __init__(self, span: trace.Span, context: Context | None) -> None:
        self.span = span
        self.token = attach(span, context)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:  # first: aiohttp's responses are ABCs, their isinstance slow
                pass
            elif isinstance(exc, web.HTTPException):
                answered(self.span, exc.status)
                exc = None
            elif self.span.is_recording():
                self.span.record_exception(exc, escaped=True)
            super().__exit__(kind, exc, tb)
        finally:
            detach(self.token)


# -- receiver


def server(
    tracing: Tracing, request: web.Request, route: str, trace_id: int = 0
) -> AbstractContextManager[trace.Span]:
    """The SERVER span of one request, continuing the sender's trace (``traceparent``
    or ``uber-trace-id``, and its baggage) and current while the request is handled;
    a new trace takes ``trace_id`` when it was drawn already. Only with tracing on: the
    receiver skips it otherwise, and for a root it leaves out (Tracing.unsampled_root)."""
    parent = tracing.extract(request.headers)
    attributes: dict[str, Any] = {}
    span = tracing.start(
        f"{request.method} {route}", SpanKind.SERVER, parent, attributes, None, trace_id
    )
    # Attributes only for a span that records (it keeps the dict): a dropped one costs less.
    if span.is_recording():
        tracing.share(span, _server_static(tracing, request, route))
        if request.remote:
            attributes["client.address"] = request.remote
        agent = request.headers.get("User-Agent")
        if agent:
            attributes["user_agent.original"] = agent
    return _Current(span, parent)


def _server_static(tracing: Tracing, request: web.Request, route: str) -> Any:
    host = request.host
    key = (route, request.method, request.scheme, host)
    static = tracing.statics.get(key)
    if static is None:
        fixed: dict[str, Any] = {
            "http.request.method": request.method,
            "http.route": route,
            "url.path": route,
            "url.scheme": request.scheme,
        }
        name, _, port = host.rpartition(":")
        if name and port.isdigit():
            fixed["server.address"] = name
            fixed["server.port"] = int(port)
        else:
            fixed["server.address"] = host
        static = tracing.static(key, fixed)
    return static


def answered(span: trace.Span, status: int) -> None:
    """Record the response status; a 5xx is the server's error, a 4xx the sender's."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


def upload(tracing: Tracing, store: str) -> AbstractContextManager[Any]:
    """The span of a large body's upload to the body store."""
    if not tracing.enabled:
        return _NOTHING
    static = tracing.static(("upload", store), {"hookline.body.store": store})
    return _Current(tracing.start("body upload", SpanKind.INTERNAL, None, {}, static), None)


def produce(
    tracing: Tracing, webhook: Webhook, destination: str, unsampled: str | None = None
) -> AbstractContextManager[Any]:
    """The PRODUCER span of an enqueue. Its context goes into ``webhook.trace`` here,
    so this must be entered before the entry is packed. For a request whose root was
    left out without a span (``unsampled``: its ``traceparent``) only that is written."""
    if not tracing.enabled:
        return _NOTHING
    if unsampled is not None:
        webhook.trace["traceparent"] = unsampled
        return _NOTHING
    attributes: dict[str, Any] = {}
    span = tracing.start(f"send {destination}", SpanKind.PRODUCER, None, attributes, None)
    recording = span.is_recording()
    if recording:  # the span keeps the dict: filled only for a span that records
        static = tracing.statics.get(("send", destination))
        if static is None:
            fixed = {
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "xadd",
                "messaging.destination.name": destination,
            }
            static = tracing.static(("send", destination), fixed)
        tracing.share(span, static)
        attributes["messaging.message.id"] = webhook.id
        attributes["messaging.message.body.size"] = webhook.size
        attributes["hookline.endpoint"] = webhook.endpoint
    # W3C traceparent written here, not by the propagator: a third of the cost
    webhook.trace["traceparent"], state = tracing.traceparent(span)
    if state:
        webhook.trace["tracestate"] = state.to_header()
    if has_baggage():
        _BAGGAGE.inject(webhook.trace)
    return _Ending(span) if recording else _NOTHING


# -- dispatcher


def consume(
    tracing: Tracing, webhook: Webhook, destination: str, group: str
) -> AbstractContextManager[Any]:
    """The CONSUMER span of one delivery attempt, a child of the producer span whose
    context the entry carries (a new trace when it carries none); current while the
    attempt runs, so the outbound request's CLIENT span is its child."""
    if not tracing.enabled:
        return _NOTHING
    parent = _extract_entry(webhook.trace) if webhook.trace else None
    attributes: dict[str, Any] = {}
    span = tracing.start(
        f"process {destination}", SpanKind.CONSUMER, parent or _EMPTY, attributes, None
    )
    if span.is_recording():  # the span keeps the dict: filled only for a span that records
        static = tracing.statics.get(("process", destination, group))
        if static is None:
            fixed = {
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "deliver",
                "messaging.destination.name": destination,
                "messaging.consumer.group.name": group,
            }
            static = tracing.static(("process", destination, group), fixed)
        tracing.share(span, static)
        attributes["messaging.message.id"] = webhook.id
        attributes["messaging.message.body.size"] = webhook.size
        attributes["hookline.endpoint"] = webhook.endpoint
        attributes["hookline.attempt"] = webhook.attempt + 1
    return _Current(span, parent)


def outcome(tracing: Tracing, result: Outcome) -> None:
    """Record what the current delivery attempt came to on its CONSUMER span."""
    if not tracing.enabled:
        return
    span = current_span()
    if not span.is_recording():
        return
    if isinstance(result, Delivered):
        span.set_attribute("hookline.outcome", "delivered")
        return
    kind = {Failed: "failed", Rejected: "rejected", Deferred: "deferred"}[type(result)]
    span.set_attributes({"hookline.outcome": kind, "hookline.outcome.reason": result.reason})
    if not isinstance(result, Deferred):
        span.set_status(Status(StatusCode.ERROR, result.reason))


def dead_lettered(tracing: Tracing, reason: str) -> None:
    """Mark the current delivery attempt as the one that sent the webhook to the dead
    letter."""
    if not tracing.enabled:
        return
    span = current_span()
    if span.is_recording():
        span.set_attribute("hookline.dead_letter", reason)
        span.set_status(Status(StatusCode.ERROR, reason))


def post(
    tracing: Tracing,
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: dict[str, str],
    untraced: dict[str, str] | None = None,
    **kwargs: Any,
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """``session.post(url, headers=headers, **kwargs)``, for the dispatcher's delivery
    request; with tracing on, inside a CLIENT span (child of the current CONSUMER
    span) whose context is injected into ``headers`` (``traceparent``, and the other
    configured propagators' headers). The span ends when the response is released.
    ``untraced``: the headers of a trace left out (Tracing.unsampled_headers), sent as
    they are, with no span."""
    if untraced is not None or not tracing.enabled:
        if untraced:
            headers.update(untraced)
        return session.post(url, headers=headers, **kwargs)
    return _ClientCall(tracing, session, url, headers, kwargs)


def _client_span(tracing: Tracing, method: str, url: str) -> trace.Span:
    span = tracing.start(method, SpanKind.CLIENT, None, {}, None)
    if span.is_recording():
        tracing.share(span, _client_static(tracing, method, url))
    return span


def _client_static(tracing: Tracing, method: str, url: str) -> Any:
    key = ("client", method, url)
    static = tracing.statics.get(key)
    if static is None:
        parts = URL(url)
        fixed: dict[str, Any] = {
            "http.request.method": method,
            "server.address": parts.host or "",
            "url.full": _redacted(parts),
        }
        if parts.port is not None:
            fixed["server.port"] = parts.port
        static = tracing.static(key, fixed)
    return static


class _ClientCall:
    """``async with`` around ``session.post``: the CLIENT span of a delivery request."""

    __slots__ = ("_call", "_headers", "_kwargs", "_session", "_span", "_tracing", "_url")

    def __init__(
        self,
        tracing: Tracing,
        session: aiohttp.ClientSession,
        url: str,
        headers: dict[str, str],
        kwargs: dict[str, Any],
    ) -> None:
        self._tracing = tracing
        self._session = session
        self._url = url
        self._headers = headers
        self._kwargs = kwargs

    async def __aenter__(self) -> aiohttp.ClientResponse:
        span = self._span = _client_span(self._tracing, "POST", self._url)
        self._tracing.inject(self._headers, span)
        self._call = self._session.post(self._url, headers=self._headers, **self._kwargs)
        try:
            resp = await self._call.__aenter__()
        except BaseException as exc:
            _failed(span, exc)
            span.end()
            raise
        span.set_attribute("http.response.status_code", resp.status)
        if resp.status >= 400:
            span.set_attribute("error.type", str(resp.status))
            span.set_status(Status(StatusCode.ERROR))
        return resp

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._call.__aexit__(kind, exc, tb)
        finally:
            if exc is not None:
                _failed(self._span, exc)
            self._span.end()


def _failed(span: trace.Span, exc: BaseException) -> None:
    # The type only: some aiohttp messages quote the URL with its query.
    name = type(exc).__name__
    span.set_attribute("error.type", name)
    span.set_status(Status(StatusCode.ERROR, name))


def _extract_entry(carrier: dict[str, str]) -> Context:
    """The context a queue entry carries. The usual carrier, one W3C ``traceparent`` as
    :func:`produce` writes it, is read here; anything else by the propagators."""
    value = carrier.get("traceparent")
    if len(carrier) == 1 and value is not None and len(value) == 55 and value[:3] == "00-":
        try:
            trace_id, span_id, flags = (
                int(value[3:35], 16),
                int(value[36:52], 16),
                int(value[53:], 16),
            )
        except ValueError:
            pass
        else:
            if trace_id and span_id and value[35] == value[52] == "-":
                return remote(trace_id, span_id, flags)
    return _CARRIER.extract(carrier)


def _redacted(url: Any) -> str:
    """``url.full`` without credentials or query values (either may hold a token)."""
    if url.user or url.password:
        url = url.with_user(None)
    if url.query_string:
        url = url.with_query([(k, "REDACTED") for k in url.query])
    return str(url.with_fragment(None))
