"""hookline's OTLP/HTTP export: batches delivered to a real HTTP server standing in for
a collector, with the configured headers, compression, retries and queue limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from hookline.export import OtlpHttpProcessor
from tests.peers import Endpoint
from tests.unit.spans import sdk_spans


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
    processor = OtlpHttpProcessor(server.url("/v1/traces"), spans[0].resource, env)
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
    processor = OtlpHttpProcessor(server.url("/flaky"), spans[0].resource, {})
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
    processor = OtlpHttpProcessor(server.url("/slow"), spans[0].resource, env)
    for _ in range(50):  # far faster than a collector that takes 0.3 s per request
        processor.on_end(spans[0])
    await asyncio.to_thread(processor.shutdown)
    exported = sum(
        len(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)
        for _, body in got
    )
    assert processor.dropped > 0
    assert exported + processor.dropped == 50
