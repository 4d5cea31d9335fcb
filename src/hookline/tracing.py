"""Tracing: one trace per webhook, from the sender through hookline to the endpoint.

The entry points (``hookline receiver | dispatcher | dev``) build a
:class:`Tracing` with :func:`setup` and pass it to the components, which only
call its span helpers. When tracing is off the components get :data:`OFF`: every
helper returns at once (a shared no-op context manager, or the plain call), so
the hot path pays a branch and no OpenTelemetry call.

* **Core**: the OpenTelemetry SDK's provider (sampler, resource, ids) and an OTLP
  export configured by the standard ``OTEL_*`` variables: endpoint, protocol,
  headers, timeout, sampler, service name, batch sizes. hookline's own spans are
  light OpenTelemetry API spans (:class:`_Span`) encoded to OTLP protobuf as they
  end (:mod:`hookline.otlp`) for :mod:`hookline.export` (OTLP/HTTP, the default); with
  ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` they become SDK spans for the SDK's batch
  processor and gRPC exporter. The SDK is imported only when tracing is on.
* **On or off**: on with ``HOOKLINE_TRACING=on``, or with ``auto`` (the default)
  when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
  set; off with ``HOOKLINE_TRACING=off``, ``OTEL_SDK_DISABLED=true`` or
  ``OTEL_TRACES_EXPORTER=none``.
* **OpenTracing**: the OpenTelemetry shim over the component's provider is
  installed as the global OpenTracing tracer, so code instrumented with the
  ``opentracing`` API joins the same traces.
* **Propagation**: Jaeger (``uber-trace-id``), W3C trace-context and W3C baggage.
  Extraction runs them in that order, so W3C wins when a request carries both;
  ``OTEL_PROPAGATORS`` chooses another set. Inside hookline, the queue entry
  (:attr:`~hookline.models.Webhook.trace`) carries W3C trace-context and baggage.

The spans (``docs/tracing.md`` shows a real trace)::

    hookline-receiver    POST /webhooks/send   SERVER    continues the sender's context
                           body upload         INTERNAL  bodies over the inline limit
                           send <stream>       PRODUCER  its context goes into the entry
    hookline-dispatcher  process <stream>      CONSUMER  one per attempt, child of the producer
                           POST                CLIENT    injects traceparent into the delivery

Attributes follow the OpenTelemetry HTTP and messaging conventions, plus a few
``hookline.*`` ones (endpoint, attempt, outcome). Bodies, headers other than the
user agent, signatures, keys and URL query values are never recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import web
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.jaeger import JaegerPropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util import types
from yarl import URL

from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.models import Deferred, Delivered, Failed, Outcome, Rejected, Webhook

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

    from hookline.export import OtlpHttpProcessor

RECEIVER: Final = "hookline-receiver"
DISPATCHER: Final = "hookline-dispatcher"
MESSAGING_SYSTEM: Final = "redis"
SCOPE: Final = "hookline"

# The queue entry's carrier: hookline writes it and reads it, W3C is enough.
_BAGGAGE: Final = W3CBaggagePropagator()
_CARRIER: Final = CompositePropagator([TraceContextTextMapPropagator(), _BAGGAGE])
_NOTHING: Final[AbstractContextManager[None]] = contextlib.nullcontext()
_ENDPOINT_VARS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_EMPTY: Final = Context()
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED: Final = TraceFlags(TraceFlags.DEFAULT)
_random = random.Random()  # ids need not be secret, only unique (as the SDK's generator)


class _DefaultPropagator(CompositePropagator):
    """Jaeger, W3C trace-context, W3C baggage (a type of its own, so that
    :meth:`Tracing.inject` knows it may format their headers itself)."""


def default_propagator() -> TextMapPropagator:
    """Jaeger, W3C trace-context, W3C baggage: extracted in this order, so W3C wins."""
    return _DefaultPropagator(
        [JaegerPropagator(), TraceContextTextMapPropagator(), W3CBaggagePropagator()]
    )


class _Static:
    """Attributes that are the same on many spans (the pool's stream, the route), kept
    both as a mapping and encoded once for OTLP."""

    __slots__ = ("attributes", "encoded")

    def __init__(self, attributes: dict[str, Any], encode: bool) -> None:
        from hookline.otlp import encode_attributes

        self.attributes = attributes
        self.encoded = encode_attributes(attributes) if encode else b""


class _Span(trace.Span):
    """One of hookline's spans: an OpenTelemetry API span that records into plain slots
    and, when it ends, goes to the exporter (see :class:`Tracing`)."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end",
        "_events",
        "_kind",
        "_name",
        "_parent",
        "_start",
        "_static",
        "_status",
        "_tracing",
    )

    def __init__(
        self,
        tracing: Tracing,
        context: SpanContext,
        parent: SpanContext | None,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        static: _Static | None,
    ) -> None:
        self._tracing = tracing
        self._context = context
        self._parent = parent
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._static = static
        self._status: Status | None = None
        self._events: list[tuple[str, int, Mapping[str, Any] | None, int]] = []
        self._end = 0
        self._start = time.time_ns()

    def get_span_context(self) -> SpanContext:
        return self._context

    @property
    def parent(self) -> SpanContext | None:
        """The parent's context, as the SDK's spans have it (the Jaeger propagator reads it)."""
        return self._parent

    def is_recording(self) -> bool:
        return not self._end

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if not self._end:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if not self._end:
            self._attributes.update(attributes)

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        if not self._end:
            self._events.append((name, timestamp or time.time_ns(), attributes, 0))

    def update_name(self, name: str) -> None:
        if not self._end:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end or (self._status is not None and self._status.status_code is StatusCode.OK):
            return  # OK is final, as the specification has it
        self._status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The type only: messages can quote URLs with tokens, or a body.
        event = {"exception.type": type(exception).__qualname__, **(attributes or {})}
        if escaped:
            event["exception.escaped"] = True
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if not self._end:
            self._end = end_time or time.time_ns()
            self._tracing._finish(self)


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
        super().__init__(span)
        self.token = otel_context.attach(trace.set_span_in_context(span, context))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if isinstance(exc, web.HTTPException):
                Tracing.answered(self.span, exc.status)
                exc = None
            elif exc is not None and self.span.is_recording():
                self.span.record_exception(exc, escaped=True)
            super().__exit__(kind, exc, tb)
        finally:
            otel_context.detach(self.token)


class Tracing:
    """A component's tracing: the span helpers the components call, its propagators,
    and the SDK provider behind them.

    Built by :func:`setup`; :data:`OFF` when tracing is off. hookline's own spans are
    :class:`_Span` objects sampled by the provider's sampler and handed, encoded, to
    the OTLP/HTTP processor (:mod:`hookline.export`) when they end; with another
    exporter (OTLP/gRPC) they become SDK ``ReadableSpan`` objects for its batch
    processor. Spans other code makes through the provider (the OpenTracing shim)
    take the SDK's own path to the same processor."""

    def __init__(
        self,
        provider: TracerProvider | None = None,
        processor: SpanProcessor | OtlpHttpProcessor | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.propagator = propagator or default_propagator()
        self._default_propagation = isinstance(self.propagator, _DefaultPropagator)
        self._fields = tuple(self.propagator.fields)
        self._processor = processor
        self._statics: dict[Any, _Static] = {}
        if provider is None:
            return
        from opentelemetry.sdk.trace import sampling
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from hookline import __version__
        from hookline.export import OtlpHttpProcessor
        from hookline.otlp import encode_span

        self._sampler: Sampler = provider.sampler
        self._sample = sampling.Decision.RECORD_AND_SAMPLE
        # The two common samplers decided inline: the SDK's objects answer the same, slower.
        self._follow_parent = self._sampler is sampling.DEFAULT_ON
        self._always = self._sampler is sampling.ALWAYS_ON
        self._encode = encode_span
        self._scope = InstrumentationScope(SCOPE, __version__)
        self._fast = processor if isinstance(processor, OtlpHttpProcessor) else None
        self._scope_bytes = self._fast.scope_bytes(self._scope) if self._fast else b""

    # -- spans

    def _static(self, key: Any, attributes: dict[str, Any]) -> _Static:
        static = self._statics.get(key)
        if static is None:
            static = _Static(attributes, self._fast is not None)
            if len(self._statics) < 1024:
                self._statics[key] = static
        return static

    def _start(
        self,
        name: str,
        kind: SpanKind,
        context: Context | None,
        attributes: dict[str, Any],
        static: _Static | None,
    ) -> trace.Span:
        """A span, child of the span in ``context`` (default: the current one) if any,
        recording if the sampler says so."""
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
        else:
            parent = None
            trace_id = _random.getrandbits(128) or 1
        span_id = _random.getrandbits(64) or 1
        if self._always or (self._follow_parent and (parent is None or parent.trace_flags & 1)):
            state = parent.trace_state if parent is not None else None
        elif self._follow_parent:
            assert parent is not None
            return NonRecordingSpan(
                SpanContext(trace_id, span_id, False, _UNSAMPLED, parent.trace_state)
            )
        else:
            result = self._sampler.should_sample(context, trace_id, name, kind)
            state = result.trace_state
            if result.decision is not self._sample:
                return NonRecordingSpan(SpanContext(trace_id, span_id, False, _UNSAMPLED, state))
            if result.attributes:
                attributes.update(result.attributes)
        own = SpanContext(trace_id, span_id, False, _SAMPLED, state)
        return _Span(self, own, parent, name, kind, attributes, static)

    def _finish(self, span: _Span) -> None:
        status = span._status
        code = status.status_code.value if status is not None else 0
        message = status.description if status is not None else None
        if self._fast is not None:
            self._fast.add(
                self._scope_bytes,
                self._encode(
                    span._context,
                    span._parent,
                    span._name,
                    span._kind.value,
                    span._start,
                    span._end,
                    span._attributes,
                    code,
                    message,
                    span._events,
                    encoded=span._static.encoded if span._static is not None else b"",
                ),
            )
        elif self._processor is not None and self.provider is not None:
            from opentelemetry.sdk.trace import Event, ReadableSpan

            attributes = span._attributes
            if span._static is not None:
                attributes = {**span._static.attributes, **attributes}
            self._processor.on_end(
                ReadableSpan(
                    name=span._name,
                    context=span._context,
                    parent=span._parent,
                    resource=self.provider.resource,
                    attributes=attributes,
                    events=[Event(n, a, t) for n, t, a, _ in span._events],
                    kind=span._kind,
                    status=status or Status(StatusCode.UNSET),
                    start_time=span._start,
                    end_time=span._end,
                    instrumentation_scope=self._scope,
                )
            )

    # -- receiver

    def server(self, request: web.Request, route: str) -> AbstractContextManager[trace.Span]:
        """The SERVER span of one request, continuing the sender's trace (``traceparent``
        or ``uber-trace-id``, and its baggage) and current while the request is handled."""
        headers = request.headers
        # Most senders send no trace context: then there is nothing to extract.
        parent = _EMPTY
        for name in self._fields:
            if name in headers:
                parent = self.propagator.extract(headers)
                break
        host = request.host
        static = self._statics.get((route, request.method, request.scheme, host))
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
            static = self._static((route, request.method, request.scheme, host), fixed)
        attributes: dict[str, Any] = {}
        if request.remote:
            attributes["client.address"] = request.remote
        agent = request.headers.get("User-Agent")
        if agent:
            attributes["user_agent.original"] = agent
        span = self._start(f"{request.method} {route}", SpanKind.SERVER, parent, attributes, static)
        return _Current(span, parent)

    @staticmethod
    def answered(span: trace.Span, status: int) -> None:
        """Record the response status; a 5xx is the server's error, a 4xx the sender's."""
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))

    def upload(self, store: str) -> AbstractContextManager[Any]:
        """The span of a large body's upload to the body store."""
        if not self.enabled:
            return _NOTHING
        static = self._static(("upload", store), {"hookline.body.store": store})
        return _Current(self._start("body upload", SpanKind.INTERNAL, None, {}, static), None)

    def produce(self, webhook: Webhook, destination: str) -> AbstractContextManager[Any]:
        """The PRODUCER span of an enqueue. Its context goes into ``webhook.trace`` here,
        so this must be entered before the entry is packed."""
        if not self.enabled:
            return _NOTHING
        static = self._statics.get(("send", destination))
        if static is None:
            fixed = {
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "xadd",
                "messaging.destination.name": destination,
            }
            static = self._static(("send", destination), fixed)
        attributes = {
            "messaging.message.id": webhook.id,
            "messaging.message.body.size": webhook.size,
            "hookline.endpoint": webhook.endpoint,
        }
        span = self._start(f"send {destination}", SpanKind.PRODUCER, None, attributes, static)
        ctx = span.get_span_context()
        # W3C traceparent written here, not by the propagator: a third of the cost
        webhook.trace["traceparent"] = (
            f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        )
        if ctx.trace_state:
            webhook.trace["tracestate"] = ctx.trace_state.to_header()
        if baggage.get_all():
            _BAGGAGE.inject(webhook.trace)
        return _Ending(span)

    # -- dispatcher

    def consume(
        self, webhook: Webhook, destination: str, group: str
    ) -> AbstractContextManager[Any]:
        """The CONSUMER span of one delivery attempt, a child of the producer span whose
        context the entry carries (a new trace when it carries none); current while the
        attempt runs, so the outbound request's CLIENT span is its child."""
        if not self.enabled:
            return _NOTHING
        parent = _extract_entry(webhook.trace) if webhook.trace else None
        static = self._statics.get(("process", destination, group))
        if static is None:
            fixed = {
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "deliver",
                "messaging.destination.name": destination,
                "messaging.consumer.group.name": group,
            }
            static = self._static(("process", destination, group), fixed)
        attributes = {
            "messaging.message.id": webhook.id,
            "messaging.message.body.size": webhook.size,
            "hookline.endpoint": webhook.endpoint,
            "hookline.attempt": webhook.attempt + 1,
        }
        span = self._start(
            f"process {destination}", SpanKind.CONSUMER, parent or Context(), attributes, static
        )
        return _Current(span, parent)

    def outcome(self, outcome: Outcome) -> None:
        """Record what the current delivery attempt came to on its CONSUMER span."""
        if not self.enabled:
            return
        span = trace.get_current_span()
        if not span.is_recording():
            return
        if isinstance(outcome, Delivered):
            span.set_attribute("hookline.outcome", "delivered")
            return
        kind = {Failed: "failed", Rejected: "rejected", Deferred: "deferred"}[type(outcome)]
        span.set_attributes({"hookline.outcome": kind, "hookline.outcome.reason": outcome.reason})
        if not isinstance(outcome, Deferred):
            span.set_status(Status(StatusCode.ERROR, outcome.reason))

    def dead_lettered(self, reason: str) -> None:
        """Mark the current delivery attempt as the one that sent the webhook to the dead
        letter."""
        if not self.enabled:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("hookline.dead_letter", reason)
            span.set_status(Status(StatusCode.ERROR, reason))

    def post(
        self, session: aiohttp.ClientSession, url: str, *, headers: dict[str, str], **kwargs: Any
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """``session.post(url, headers=headers, **kwargs)``, for the dispatcher's delivery
        request; with tracing on, inside a CLIENT span (child of the current CONSUMER
        span) whose context is injected into ``headers`` (``traceparent``, and the other
        configured propagators' headers). The span ends when the response is released."""
        if not self.enabled:
            return session.post(url, headers=headers, **kwargs)
        return _ClientCall(self, session, url, headers, kwargs)

    def _client_span(self, method: str, url: str) -> trace.Span:
        key = ("client", method, url)
        static = self._statics.get(key)
        if static is None:
            parts = URL(url)
            fixed: dict[str, Any] = {
                "http.request.method": method,
                "server.address": parts.host or "",
                "url.full": _redacted(parts),
            }
            if parts.port is not None:
                fixed["server.port"] = parts.port
            static = self._static(key, fixed)
        return self._start(method, SpanKind.CLIENT, None, {}, static)

    def inject(self, carrier: dict[str, str], span: trace.Span) -> None:
        """Write ``span``'s context into ``carrier`` with the configured propagators. With
        the default ones the headers are formatted here: the same text for a third of
        the cost (``tests/test_tracing.py`` compares them)."""
        ctx = span.get_span_context()
        if not self._default_propagation or not ctx.is_valid or baggage.get_all():
            self.propagator.inject(carrier, trace.set_span_in_context(span))
            return
        flags = ctx.trace_flags
        carrier["traceparent"] = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags:02x}"
        if ctx.trace_state:
            carrier["tracestate"] = ctx.trace_state.to_header()
        parent = span.parent if isinstance(span, _Span) and span.parent is not None else None
        carrier["uber-trace-id"] = (
            f"{ctx.trace_id:032x}:{ctx.span_id:016x}:{parent.span_id if parent else 0:016x}:"
            f"{flags | 2 if flags & 1 else flags:02x}"
        )

    # -- lifecycle

    def flush(self, timeout: float = 10.0) -> bool:
        """Export every finished span now (blocking); False when the exporter timed out."""
        if self.provider is None:
            return True
        return self.provider.force_flush(int(timeout * 1000))

    async def close(self) -> None:
        """Flush and stop the exporter (its blocking calls run in a thread)."""
        if self.provider is not None:
            await asyncio.to_thread(self.provider.shutdown)


OFF: Final = Tracing()


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
        span = self._span = self._tracing._client_span("POST", self._url)
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
    :meth:`Tracing.produce` writes it, is read here; anything else by the propagators."""
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
                remote = SpanContext(trace_id, span_id, True, TraceFlags(flags & 0xFF))
                return trace.set_span_in_context(NonRecordingSpan(remote), Context())
    return _CARRIER.extract(carrier)


def _redacted(url: Any) -> str:
    """``url.full`` without credentials or query values (either may hold a token)."""
    if url.user or url.password:
        url = url.with_user(None)
    if url.query_string:
        url = url.with_query([(k, "REDACTED") for k in url.query])
    return str(url.with_fragment(None))


# -- setup


def enabled(config: Config, environ: Mapping[str, str]) -> bool:
    """Whether tracing is on for this configuration and environment."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    if config.tracing == "auto":
        return any(environ.get(name) for name in _ENDPOINT_VARS)
    return config.tracing == "on"


def setup(
    config: Config,
    service: str,
    environ: Mapping[str, str] | None = None,
    *,
    install_global: bool = True,
) -> Tracing:
    """The component's :class:`Tracing`: :data:`OFF`, or an SDK tracer exporting OTLP.

    ``service`` is the component's default service name (``OTEL_SERVICE_NAME``
    overrides it). With ``install_global`` the provider also becomes the global
    OpenTelemetry provider (if none is set yet), its OpenTracing shim the global
    OpenTracing tracer and the propagators the global ones; two components in one
    process (``hookline dev``) each keep their own provider and service name."""
    env = os.environ if environ is None else environ
    if not enabled(config, env):
        return OFF
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from hookline import __version__

    if "OTEL_TRACES_EXPORTER" in env and env["OTEL_TRACES_EXPORTER"].strip().lower() != "otlp":
        raise InvalidSpec("OTEL_TRACES_EXPORTER: hookline exports 'otlp' (or 'none')")
    name = env.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(
        resource=Resource.create({"service.name": name, "service.version": __version__}),
        sampler=sampler(env),
    )
    processor = span_processor(env, provider.resource)
    provider.add_span_processor(processor)
    propagator = propagators(env)
    if install_global:
        install(provider, propagator)
    return Tracing(provider, processor, propagator)


def install(provider: TracerProvider, propagator: TextMapPropagator) -> None:
    """Make ``provider`` the process's tracing for code that uses the global APIs:
    OpenTracing (through the shim) and OpenTelemetry (if no provider is set yet)."""
    import opentracing
    from opentelemetry.shim.opentracing_shim import create_tracer

    propagate.set_global_textmap(propagator)  # the shim injects and extracts through it
    opentracing.set_global_tracer(create_tracer(provider))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)


def propagators(environ: Mapping[str, str]) -> TextMapPropagator:
    """``OTEL_PROPAGATORS`` (any of ``jaeger``, ``tracecontext``, ``baggage``, or ``none``);
    by default all three, Jaeger first so that W3C wins when both arrive."""
    raw = environ.get("OTEL_PROPAGATORS", "").strip()
    if not raw:
        return default_propagator()
    known: dict[str, type[TextMapPropagator]] = {
        "jaeger": JaegerPropagator,
        "tracecontext": TraceContextTextMapPropagator,
        "baggage": W3CBaggagePropagator,
    }
    chosen: list[TextMapPropagator] = []
    for item in (n.strip().lower() for n in raw.split(",")):
        if item == "none":
            continue
        if item not in known:
            raise InvalidSpec(f"OTEL_PROPAGATORS: {item!r} is not one of {', '.join(known)}, none")
        chosen.append(known[item]())
    return CompositePropagator(chosen)


def sampler(environ: Mapping[str, str]) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``, as the specification has
    them (default ``parentbased_always_on``); an unknown value fails at start."""
    from opentelemetry.sdk.trace import sampling

    kind = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    fixed = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "parentbased_always_on": sampling.DEFAULT_ON,
        "parentbased_always_off": sampling.DEFAULT_OFF,
    }
    if kind in fixed:
        return fixed[kind]
    if kind not in ("traceidratio", "parentbased_traceidratio"):
        raise InvalidSpec(f"OTEL_TRACES_SAMPLER: unknown sampler {kind!r}")
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
    try:
        ratio = float(raw)
    except ValueError as exc:
        raise InvalidSpec(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: {exc}") from exc
    if not 0.0 <= ratio <= 1.0:
        raise InvalidSpec(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: a ratio in [0, 1]")
    if kind == "traceidratio":
        return sampling.TraceIdRatioBased(ratio)
    return sampling.ParentBasedTraceIdRatio(ratio)


def export_target(environ: Mapping[str, str]) -> tuple[str, str]:
    """(protocol, URL) of the OTLP export: ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``
    ``http/protobuf`` (the default, port 4318) or ``grpc`` (port 4317), to
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full URL) or ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (the base URL, to which OTLP/HTTP adds ``/v1/traces``)."""
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    traces_url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base_url = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "grpc":
        return protocol, traces_url or base_url or "http://localhost:4317"
    if protocol == "http/protobuf":
        if traces_url:
            return protocol, traces_url
        return protocol, (base_url or "http://localhost:4318").rstrip("/") + "/v1/traces"
    raise InvalidSpec(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use 'http/protobuf' or 'grpc'")


def describe_export(environ: Mapping[str, str]) -> str:
    protocol, url = export_target(environ)
    return f"{url} ({protocol})"


def span_processor(environ: Mapping[str, str], resource: Resource) -> SpanProcessor:
    """OTLP/HTTP: hookline's :class:`~hookline.export.OtlpHttpProcessor`, which takes
    spans encoded as they end; OTLP/gRPC: the SDK's batch processor and exporter."""
    protocol, url = export_target(environ)
    if protocol == "http/protobuf":
        from hookline.export import OtlpHttpProcessor

        return OtlpHttpProcessor(url, resource, environ)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=url))
