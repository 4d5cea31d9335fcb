"""hookline's OTLP/HTTP export: the bytes the SDK would send, delivered to a real HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
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
from tests.peers import Endpoint


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


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Endpoint, list[tuple[dict[str, str], bytes]]]]:
    """A real HTTP server standing in for an OTLP/HTTP collector: it keeps each request;
    the first answer on /flaky is 503, /slow takes 0.3 s."""
    got: list[tuple[dict[str, str], bytes]] = []

    async def keep(request: web.Request, nth: int) -> web.StreamResponse:
        body = await request.read()
        got.append(({k.lower(): v for k, v in request.headers.items()}, body))
        if request.path == "/flaky" and len(got) == 1:
            return web.Response(status=503)
        if request.path == "/slow":
            await asyncio.sleep(0.3)
        return web.Response(body=b"", content_type="application/x-protobuf")

    server = Endpoint()
    server.on("/v1/traces", keep)
    server.on("/flaky", keep)
    server.on("/slow", keep)
    await server.start()
    yield server, got
    await server.stop()


async def test_the_processor_posts_batches_with_the_configured_headers_and_compression(
    collector: tuple[Endpoint, list[tuple[dict[str, str], bytes]]],
) -> None:
    server, got = collector
    spans = sdk_spans()
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-tenant=acme",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
    }
    processor = otlp.OtlpHttpProcessor(server.url("/v1/traces"), spans[0].resource, env)
    for span in spans:
        processor.on_end(span)
    assert await asyncio.to_thread(processor.force_flush, 10_000)
    await asyncio.to_thread(processor.shutdown)
    assert len(got) == 2  # four spans, two per batch
    received = []
    for headers, body in got:
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["content-encoding"] == "gzip"
        assert headers["authorization"] == "Bearer abc"
        assert headers["x-tenant"] == "acme"
        # aiohttp's server has already gunzipped the body, as a collector would
        request = ExportTraceServiceRequest.FromString(body)
        for scope_spans in request.resource_spans[0].scope_spans:
            received += [s.name for s in scope_spans.spans]
    assert sorted(received) == sorted(s.name for s in spans)
    assert processor.dropped == processor.failed == 0


async def test_a_503_from_the_collector_is_retried(
    collector: tuple[Endpoint, list[tuple[dict[str, str], bytes]]],
) -> None:
    server, got = collector
    spans = sdk_spans()
    processor = otlp.OtlpHttpProcessor(server.url("/flaky"), spans[0].resource, {})
    processor.on_end(spans[0])
    assert await asyncio.to_thread(processor.force_flush, 10_000)
    await asyncio.to_thread(processor.shutdown)
    assert len(got) == 2 and got[0][1] == got[1][1]
    assert processor.failed == 0


async def test_spans_past_the_queue_limit_are_dropped_and_counted(
    collector: tuple[Endpoint, list[tuple[dict[str, str], bytes]]],
) -> None:
    server, got = collector
    spans = sdk_spans()
    env = {"OTEL_BSP_MAX_QUEUE_SIZE": "3", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "3"}
    processor = otlp.OtlpHttpProcessor(server.url("/slow"), spans[0].resource, env)
    for _ in range(50):  # far faster than a collector that takes 0.3 s per request
        processor.on_end(spans[0])
    await asyncio.to_thread(processor.shutdown)
    exported = sum(
        len(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)
        for _, body in got
    )
    assert processor.dropped > 0
    assert exported + processor.dropped == 50


def test_a_bad_header_setting_fails_at_start() -> None:
    with pytest.raises(otlp.InvalidSpec, match="OTEL_EXPORTER_OTLP_HEADERS"):
        otlp.parse_headers("authorization")
