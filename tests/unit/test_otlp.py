"""hookline's OTLP encoder: the bytes it writes are the bytes the SDK would send
(tests/test_otlp.py delivers them to a real HTTP server)."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan

from hookline import otlp
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
