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
import re
import time
from collections.abc import Hashable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage import _BAGGAGE_KEY
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.jaeger import JaegerPropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation import _SPAN_KEY
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
# ids need not be secret, only unique (as the SDK's generator)
_random_bits: Final = random.Random().getrandbits
_RATIO_MASK: Final = (1 << 64) - 1  # the trace id bits TraceIdRatioBased compares


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


class _Own(trace.Span):
    """What hookline's spans, recording or not, have in common: their context as plain
    slots, from which :meth:`get_span_context` builds the API's ``SpanContext`` only when
    other code asks for it (hookline's own paths read the slots).

    ``trace.Span`` is an ABC: ``isinstance(x, _Own)`` runs its Python-level
    ``__instancecheck__`` (0.15 µs; no span is exactly an ``_Own``), so the hot paths
    test ``type(x) is _Span`` first."""

    __slots__ = ("_context", "_flags", "_span_id", "_state", "_trace_id")

    _remote = False  # whether the span is another process's (read from a carrier)
    _trace_id: int
    _span_id: int
    _flags: int
    _state: TraceState | None
    _context: SpanContext | None

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            context = self._context = SpanContext(
                self._trace_id,
                self._span_id,
                self._remote,
                _SAMPLED if self._flags else _UNSAMPLED,
                self._state,
            )
        return context

    @property
    def parent(self) -> SpanContext | None:
        return None


class _Unsampled(_Own):
    """A span the sampler dropped: its context travels on (a child, the queue entry, the
    endpoint's ``traceparent``), nothing is recorded. What the SDK's
    ``NonRecordingSpan`` is, for a fraction of its cost."""

    __slots__ = ()

    def __init__(self, trace_id: int, span_id: int, state: TraceState | None) -> None:
        self._trace_id = trace_id
        self._span_id = span_id
        self._flags = 0
        self._state = state
        self._context = None

    def is_recording(self) -> bool:
        return False

    def end(self, end_time: int | None = None) -> None:
        pass

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        pass

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        pass

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        pass


class _Remote(_Unsampled):
    """The span of another process whose context a carrier brought (a queue entry):
    a parent, recording nothing here."""

    __slots__ = ()
    _remote = True

    def __init__(self, trace_id: int, span_id: int, flags: int) -> None:
        self._trace_id = trace_id
        self._span_id = span_id
        self._flags = flags & 1
        self._state = None
        self._context = None


def remote(trace_id: int, span_id: int, flags: int) -> Context:
    """A context holding another process's span as its current one (as a propagator's
    ``extract`` returns it), for a carrier read without one; no trace state."""
    return Context({_SPAN_KEY: _Remote(trace_id, span_id, flags)})


class _Span(_Own):
    """One of hookline's recording spans: an OpenTelemetry API span that records into
    plain slots and, when it ends, goes to the exporter (see :class:`Tracing`)."""

    __slots__ = (
        "_attributes",
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
        trace_id: int,
        span_id: int,
        state: TraceState | None,
        parent: _Own | SpanContext | None,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        static: _Static | None,
    ) -> None:
        self._trace_id = trace_id
        self._span_id = span_id
        self._flags = 1
        self._state = state
        self._context = None
        self._tracing = tracing
        self._parent = parent
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._static = static
        self._status: Status | None = None
        self._events: list[tuple[str, int, Mapping[str, Any] | None, int]] | None = None
        self._end = 0
        self._start = time.time_ns()

    @property
    def parent(self) -> SpanContext | None:
        """The parent's context, as the SDK's spans have it (the Jaeger propagator reads it)."""
        parent = self._parent
        if type(parent) is _Span or isinstance(parent, _Own):
            return parent.get_span_context()
        return parent

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
            if self._events is None:
                self._events = []
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


# How the provider's sampler decides, when hookline can decide the same inline (the SDK's
# sampler objects answer the same, several times slower): the fixed answers, a trace-id
# ratio, and either of these for root spans under the parent's decision.
_ON, _OFF, _RATIO, _ASK = range(4)


def _inline(sampler: Sampler) -> tuple[int, int]:
    """(how, ratio bound) for a sampler that decides without a parent, else (_ASK, 0)."""
    from opentelemetry.sdk.trace import sampling

    kind = type(sampler)
    if kind.should_sample is sampling.StaticSampler.should_sample:
        decision = sampler._decision  # type: ignore[attr-defined]
        if decision is sampling.Decision.RECORD_AND_SAMPLE:
            return _ON, 0
        if decision is sampling.Decision.DROP:
            return _OFF, 0
    if kind.should_sample is sampling.TraceIdRatioBased.should_sample:
        assert isinstance(sampler, sampling.TraceIdRatioBased)
        return _RATIO, sampler.bound
    return _ASK, 0


def _follows_parent(sampler: Sampler) -> Sampler | None:
    """The root sampler of a ``ParentBased`` sampler that otherwise just follows the
    parent's sampled flag (its default delegates), else None."""
    from opentelemetry.sdk.trace import sampling

    if not isinstance(sampler, sampling.ParentBased) or (
        type(sampler).should_sample is not sampling.ParentBased.should_sample
    ):
        return None
    on, off = sampling.ALWAYS_ON, sampling.ALWAYS_OFF
    if (
        sampler._remote_parent_sampled is on
        and sampler._local_parent_sampled is on
        and sampler._remote_parent_not_sampled is off
        and sampler._local_parent_not_sampled is off
    ):
        return sampler._root
    return None


def _runtime_context() -> ContextVar[Context] | None:
    """The ContextVar behind OpenTelemetry's current context, when the runtime context is
    the default one: reading and setting it directly is what ``context.get_current``,
    ``attach`` and ``detach`` do, minus their layers of calls."""
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(var, ContextVar):
        return var
    return None


_CURRENT: Final = _runtime_context()


def current_context() -> Context:
    return _CURRENT.get() if _CURRENT is not None else otel_context.get_current()


def attach(span: trace.Span, context: Context | None) -> object:
    """Make ``span`` current, in ``context`` (default: the current one); a token for
    :func:`detach`. ``context.attach(trace.set_span_in_context(span, context))``."""
    values = current_context() if context is None else context
    if values.get(_SPAN_KEY) is span:  # already current there (an unsampled child is its parent)
        inner = values
    else:
        inner = Context({**values, _SPAN_KEY: span}) if values else Context({_SPAN_KEY: span})
    if _CURRENT is not None:
        return _CURRENT.set(inner)
    return otel_context.attach(inner)


def detach(token: object) -> None:
    if _CURRENT is not None:
        try:
            _CURRENT.reset(token)  # type: ignore[arg-type]
            return
        except ValueError:  # another context's token: as context.detach, log, go on
            pass
    otel_context.detach(token)  # type: ignore[arg-type]


# A W3C traceparent as hookline writes it for a trace left out (lower-case hex, flags 00).
_UNSAMPLED_TRACEPARENT: Final = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00").fullmatch
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


# Two hex digits of a byte: a list index is 35 ns, f"{flags:02x}" 240 ns.
_HEX2: Final = [f"{n:02x}" for n in range(256)]


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    # bytes.hex: a third of the time of f"{trace_id:032x}" for numbers this wide
    trace_hex = trace_id.to_bytes(16, "big").hex()
    return f"00-{trace_hex}-{span_id.to_bytes(8, 'big').hex()}-{_HEX2[flags]}"


def has_baggage() -> bool:
    """Whether the current context holds baggage (``baggage.get_all()``, not copied)."""
    return bool(current_context().get(_BAGGAGE_KEY))


def current_span() -> trace.Span:
    """``trace.get_current_span()``."""
    span = current_context().get(_SPAN_KEY)
    if type(span) is _Span or isinstance(span, trace.Span):
        return span
    return trace.INVALID_SPAN


class Tracing:
    """A component's tracing: the spans it starts, its propagators, and the SDK
    provider behind them.

    Built by :func:`hookline.telemetry.setup`; :data:`OFF` when tracing is off.
    hookline's own spans are :class:`_Span` objects sampled by the provider's sampler
    (decided inline for the standard samplers) and handed, encoded, to the OTLP/HTTP
    processor (:mod:`hookline.export`) when they end; with another exporter
    (OTLP/gRPC) they become SDK ``ReadableSpan`` objects for its batch processor. Spans
    the sampler drops are :class:`_Unsampled`. Spans other code makes through the
    provider (the OpenTracing shim) take the SDK's own path to the same processor."""

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
        from hookline.otlp import encode_own

        self._sampler: Sampler = provider.sampler
        self._sample = sampling.Decision.RECORD_AND_SAMPLE
        root = _follows_parent(self._sampler)
        self._follow_parent = root is not None
        self._root, self._bound = _inline(root if root is not None else self._sampler)
        self._encode = encode_own
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

    def unsampled_root(self, headers: Mapping[str, str]) -> tuple[str | None, int]:
        """For a request that carries no trace context, under a parent-based sampler whose
        root decision is a trace-id ratio or "off" (the production setting): a trace id
        drawn and decided here. Left out, the request needs no span at all — nothing under
        an unsampled root records — only the W3C ``traceparent`` (flags 00) its entries
        carry so that a parent-based dispatcher follows the decision: returned as
        ``(traceparent, 0)``. Otherwise ``(None, trace_id)``: the span is made by
        :meth:`start` with that trace id (0 when nothing was drawn)."""
        how = self._root
        if not self._follow_parent or (how != _RATIO and how != _OFF):
            return None, 0
        for name in self._fields:
            if name in headers:
                return None, 0
        ids = _random_bits(192)  # the trace id, then a span id: one draw, one hex
        while not ids >> 64 or not ids & _RATIO_MASK:  # all zeros is no id (2**-64)
            ids = _random_bits(192)
        trace_id = ids >> 64
        if how == _OFF or trace_id & _RATIO_MASK >= self._bound:
            text = ids.to_bytes(24, "big").hex()
            return f"00-{text[:32]}-{text[32:]}-00", 0
        return None, trace_id

    def unsampled_headers(self, carrier: Mapping[str, str]) -> dict[str, str] | None:
        """For a queue entry whose only context is a ``traceparent`` left out by the
        receiver (flags 00), under a parent-based sampler with the default propagators:
        the headers :meth:`inject` would write for its delivery request — no span is
        needed to pass on a decision nothing under it records. None otherwise."""
        if len(carrier) != 1 or not self._follow_parent or not self._default_propagation:
            return None
        value = carrier.get("traceparent")
        if value is None or not _UNSAMPLED_TRACEPARENT(value):
            return None
        trace_id, span_id = value[3:35], value[36:52]
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            return None
        return {"traceparent": value, "uber-trace-id": f"{trace_id}:{span_id}:{_ZERO_SPAN}:00"}

    def start(
        self,
        name: str,
        kind: SpanKind,
        context: Context | None,
        attributes: dict[str, Any],
        static: _Static | None,
        trace_id: int = 0,
    ) -> trace.Span:
        """A span, child of the span in ``context`` (default: the current one) if any,
        recording if the sampler says so. ``attributes`` become the span's own (the
        dict is kept, not copied: a caller may fill it once the span records);
        ``static`` ones come from :meth:`static`; a root span takes ``trace_id`` when
        one was drawn already (:meth:`unsampled_root`)."""
        found = (current_context() if context is None else context).get(_SPAN_KEY)
        parent: _Own | SpanContext | None
        if found is None:
            parent, state, flags = None, None, 0
            trace_id = trace_id or _random_bits(128) or 1
        elif type(found) is _Span or isinstance(found, _Own):
            if found._flags == 0 and self._follow_parent:
                # Its unsampled child: nothing records either, so the parent's context
                # serves as the child's (as for any span without a recording tracer).
                return found
            parent = found
            trace_id, flags, state = found._trace_id, found._flags, found._state
        elif isinstance(found, trace.Span) and (parent := found.get_span_context()).is_valid:
            trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
            if not flags & 1 and self._follow_parent:
                return found  # the same, for a remote unsampled parent
        else:
            parent, state, flags = None, None, 0
            trace_id = _random_bits(128) or 1
        span_id = _random_bits(64) or 1
        how = self._root
        if parent is not None and self._follow_parent:
            pass  # sampled, since an unsampled parent was answered above
        elif how == _RATIO:
            if trace_id & _RATIO_MASK >= self._bound:
                return _Unsampled(trace_id, span_id, state)
        elif how == _OFF:
            return _Unsampled(trace_id, span_id, state)
        elif how == _ASK:
            result = self._sampler.should_sample(context, trace_id, name, kind)
            state = result.trace_state
            if result.decision is not self._sample:
                return _Unsampled(trace_id, span_id, state)
            if result.attributes:
                attributes.update(result.attributes)
        return _Span(self, trace_id, span_id, state, parent, name, kind, attributes, static)

    @staticmethod
    def share(span: trace.Span, static: _Static) -> None:
        """Give a recording span of :meth:`start` the attributes of :meth:`static` (for
        callers that look them up only once the span records)."""
        if type(span) is _Span:
            span._static = static

    def _finish(self, span: _Span) -> None:
        status = span._status
        code = status.status_code.value if status is not None else 0
        message = status.description if status is not None else None
        parent = span._parent
        if self._fast is not None:
            state = span._state
            if parent is None:
                parent_id, remote = 0, False
            elif type(parent) is _Span or isinstance(parent, _Own):
                parent_id, remote = parent._span_id, parent._remote
            else:
                parent_id, remote = parent.span_id, parent.is_remote
            static = span._static
            self._fast.add(
                self._scope_bytes,
                self._encode(
                    span._trace_id,
                    span._span_id,
                    state.to_header() if state else "",
                    parent_id,
                    remote,
                    span._name,
                    span._kind._value_,
                    span._start,
                    span._end,
                    static.encoded if static is not None else b"",
                    span._attributes,
                    code,
                    message,
                    span._events,
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
                    context=span.get_span_context(),
                    parent=span.parent,
                    resource=self.provider.resource,
                    attributes=attributes,
                    events=[Event(n, a, t) for n, t, a, _ in span._events or ()],
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
        if not self._default_propagation or has_baggage():
            self.propagator.inject(carrier, trace.set_span_in_context(span))
            return
        if not (type(span) is _Span or isinstance(span, _Own)) and not (
            span.get_span_context().is_valid
        ):
            self.propagator.inject(carrier, trace.set_span_in_context(span))
            return
        trace_id, span_id, flags, state = _ids(span)
        trace_hex, span_hex = trace_id.to_bytes(16, "big").hex(), span_id.to_bytes(8, "big").hex()
        carrier["traceparent"] = f"00-{trace_hex}-{span_hex}-{_HEX2[flags]}"
        if state:
            carrier["tracestate"] = state.to_header()
        parent = span._parent if type(span) is _Span else None
        if parent is None:
            parent_id = 0
        elif type(parent) is _Span or isinstance(parent, _Own):
            parent_id = parent._span_id
        else:
            parent_id = parent.span_id
        jaeger_flags = flags | 2 if flags & 1 else flags  # Jaeger's "debug" bit, as its propagator
        carrier["uber-trace-id"] = (
            f"{trace_hex}:{span_hex}:{parent_id.to_bytes(8, 'big').hex()}:{_HEX2[jaeger_flags]}"
        )

    @staticmethod
    def traceparent(span: trace.Span) -> tuple[str, TraceState | None]:
        """``span``'s W3C ``traceparent`` header and its trace state."""
        trace_id, span_id, flags, state = _ids(span)
        return _traceparent(trace_id, span_id, flags), state

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


def _ids(span: trace.Span) -> tuple[int, int, int, TraceState | None]:
    """A span's trace id, span id, flags and trace state, read off hookline's own span
    without building its ``SpanContext``."""
    if type(span) is _Span or isinstance(span, _Own):
        return span._trace_id, span._span_id, span._flags, span._state
    ctx = span.get_span_context()
    return ctx.trace_id, ctx.span_id, ctx.trace_flags, ctx.trace_state


OFF: Final = Tracing()
