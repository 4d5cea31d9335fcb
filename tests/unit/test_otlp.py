"""hookline's OTLP encoder: the bytes it writes are the bytes the SDK would send
(tests/test_otlp.py delivers them to a real HTTP server)."""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from hookline import otlp
from hookline.export import OtlpHttpProcessor
from hookline.tracing import Tracing
from tests.unit.spans import sdk_spans


def hookline_request(spans: list[ReadableSpan]) -> bytes:
    scopes: dict[bytes, list[bytes]] = {}
    for span in spans:
        scope = otlp.encode_scope(span.instrumentation_scope)
        scopes.setdefault(scope, []).append(otlp.encode_readable(span))
    return otlp.encode_request(otlp.encode_resource(spans[0].resource), scopes)


def test_spans_encode_exactly_as_the_sdk_encodes_them() -> None:
    spans = sdk_spans()
    ours = ExportTraceServiceRequest.FromString(hookline_request(spans))
    theirs = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
    assert ours == theirs
    assert len(ours.resource_spans[0].scope_spans) == 2


def test_a_batch_of_512_spans_frames_as_the_sdk_frames_it() -> None:
    """Lengths of one, two and three varint bytes: a span, a scope's spans, the batch."""
    spans = sdk_spans() * (512 // len(sdk_spans()) + 1)
    ours = hookline_request(spans)
    theirs = encode_spans(spans).SerializeToString()
    assert len(ours) > 0x4000
    assert ExportTraceServiceRequest.FromString(ours) == ExportTraceServiceRequest.FromString(
        theirs
    )


class _Recording(OtlpHttpProcessor):
    """Keeps what hookline's spans encode to, and sends nothing."""

    encoded: list[bytes]

    def add(self, scope: bytes, span: bytes) -> None:
        self.encoded.append(span)


class _Readable(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def test_hookline_spans_encode_as_the_sdk_encodes_the_same_spans() -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "enc"}))
    recording = _Recording("http://127.0.0.1:9/v1/traces", provider.resource, {})
    recording.encoded = []
    tracing = Tracing(provider, recording)
    readable = _Readable()
    as_sdk = Tracing(provider, readable)  # the gRPC path: the same spans as ReadableSpans
    try:
        static = tracing.static("route", {"http.route": "/webhooks/send", "server.port": 8080})
        server = tracing.start("POST /webhooks/send", SpanKind.SERVER, Context(), {}, static)
        server.set_attributes({"client.address": "127.0.0.1", "user_agent.original": "é" * 80})
        inside = set_span_in_context(server, Context())
        producer = tracing.start("send s", SpanKind.PRODUCER, inside, {"size": 512}, None)
        producer.end()
        server.record_exception(ValueError("a message that is not kept"), escaped=True)
        server.set_status(Status(StatusCode.ERROR, "ValueError"))
        server.end()
        remote = SpanContext(0xABC, 0xDEF, True, TraceFlags(1), TraceState([("vendor", "x1")]))
        parent = set_span_in_context(NonRecordingSpan(remote), Context())
        consumer = tracing.start("process s", SpanKind.CONSUMER, parent, {"attempt": 2}, None)
        inner = set_span_in_context(consumer, Context())
        client = tracing.start("POST", SpanKind.CLIENT, inner, {}, None)
        client.add_event("sent", {"bytes": 12, "ratio": 0.5, "flag": True})
        client.set_status(StatusCode.OK)
        client.end()
        consumer.end()
        for span in (producer, server, client, consumer):
            as_sdk._finish(span)  # type: ignore[arg-type]
        ours = [trace_pb2.Span.FromString(encoded) for encoded in recording.encoded]
        sdk = encode_spans(readable.spans)
        theirs = [s for r in sdk.resource_spans for ss in r.scope_spans for s in ss.spans]
        assert len(ours) == 4
        assert ours == theirs
    finally:
        provider.shutdown()
        recording.shutdown()
