"""hookline's span runtime: light OpenTelemetry spans, their sampling and export, and
the propagation of their context.

:mod:`hookline.telemetry` builds a :class:`Tracing` from the ``OTEL_*``
environment for the entry points, which pass it to the receiver and the
dispatcher; those hand it to :mod:`hookline.spans`, which says which spans each
hop makes and starts them here (:meth:`Tracing.start`). When tracing is off the
components get :data:`OFF`, and :mod:`hookline.spans` returns at once: the hot
path pays a branch and no OpenTelemetry call.

hookline's own spans are OpenTelemetry API spans (:class:`_Span`) that record
into plain slots, sampled by the provider's sampler without the SDK's span
objects. As they end they are encoded to OTLP protobuf (:mod:`hookline.otlp`)
for the OTLP/HTTP processor (:mod:`hookline.export`, the default); with another
processor (OTLP/gRPC) they become SDK spans for it. The SDK is imported only
when tracing is on.

Propagation: by default Jaeger (``uber-trace-id``), W3C trace-context and W3C
baggage, extracted in that order, so W3C wins when a request carries both; with
these :meth:`Tracing.inject` formats the headers itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import baggage, trace
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

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

    from hookline.export import OtlpHttpProcessor

SCOPE: Final = "hookline"

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


class Tracing:
    """A component's tracing: the spans it starts, its propagators, and the SDK
    provider behind them.

    Built by :func:`hookline.telemetry.setup`; :data:`OFF` when tracing is off.
    hookline's own spans are :class:`_Span` objects sampled by the provider's sampler
    and handed, encoded, to the OTLP/HTTP processor (:mod:`hookline.export`) when they
    end; with another exporter (OTLP/gRPC) they become SDK ``ReadableSpan`` objects
    for its batch processor. Spans other code makes through the provider (the
    OpenTracing shim) take the SDK's own path to the same processor."""

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
        self.statics: dict[Hashable, _Static] = {}
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

    def static(self, key: Hashable, attributes: dict[str, Any]) -> _Static:
        """The attributes many spans share under ``key`` (a route, a stream): kept, and
        encoded once, the first time. :attr:`statics` holds them (for a bounded number
        of keys); a hot path looks there first, and builds ``attributes`` only when the
        key is missing."""
        static = self.statics.get(key)
        if static is None:
            static = _Static(attributes, self._fast is not None)
            if len(self.statics) < 1024:
                self.statics[key] = static
        return static

    def start(
        self,
        name: str,
        kind: SpanKind,
        context: Context | None,
        attributes: dict[str, Any],
        static: _Static | None,
    ) -> trace.Span:
        """A span, child of the span in ``context`` (default: the current one) if any,
        recording if the sampler says so. ``attributes`` become the span's own (the
        dict is kept, not copied); ``static`` ones come from :meth:`static`."""
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

    # -- propagation

    def extract(self, headers: Mapping[str, str]) -> Context:
        """The context ``headers`` carry, read by the configured propagators; an empty
        one, without parsing anything, when none of their headers is there (most
        senders send no trace context)."""
        for name in self._fields:
            if name in headers:
                return self.propagator.extract(headers)
        return _EMPTY

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
