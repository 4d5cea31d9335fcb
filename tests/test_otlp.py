"""hookline's OTLP encoding: the bytes the SDK would send, byte for byte."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import (
    Link,
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


class Kept(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: object) -> SpanExportResult:
        self.spans.extend(spans)  # type: ignore[call-overload]
        return SpanExportResult.SUCCESS


def sdk_spans() -> list[ReadableSpan]:
    """Spans using every feature the encoder handles, made by the SDK itself."""
    kept = Kept()
    provider = TracerProvider(resource=Resource.create({"service.name": "enc", "n": 3}))
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("hookline", "0.1.0")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        True,
        TraceFlags(1),
        TraceState([("vendor", "x1"), ("other", "y")]),
    )
    parent = set_span_in_context(NonRecordingSpan(remote))
    attributes = {
        "text": "é and ü " * 40,  # past the one-byte length prefixes
        "empty": "",
        "negative": -5,
        "large": 1 << 40,
        "small": 202,
        "ratio": 1.5,
        "flag": True,
        "off": False,
        "ints": [1, 2, 3],
        "texts": ["a", "b"],
    }
    with tracer.start_as_current_span(
        "POST /webhooks/send", context=parent, kind=SpanKind.SERVER, attributes=attributes
    ) as root:
        root.add_event("arrived", {"bytes": 12})
        root.set_status(Status(StatusCode.ERROR, "bad"))
        link = Link(root.get_span_context(), {"why": "retry"})
        with tracer.start_as_current_span("process", kind=SpanKind.CONSUMER, links=[link]):
            pass
        try:
            with tracer.start_as_current_span("fails"):
                raise ValueError("boom")
        except ValueError:
            pass
    other = provider.get_tracer("opentracing-shim")
    with other.start_as_current_span("elsewhere", kind=SpanKind.PRODUCER):
        pass
    provider.shutdown()
    return kept.spans


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
