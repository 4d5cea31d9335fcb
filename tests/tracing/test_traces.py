"""One trace per webhook in a real Jaeger: from the sender, through receiver, queue and
dispatcher, to the endpoint, read back through Jaeger's HTTP API."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jaeger_client
import pytest
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentracing.propagation import Format

from hookline.config import Config
from hookline.telemetry import DISPATCHER, RECEIVER, setup
from hookline.tracing import Tracing
from tests.peers import Endpoint, fail_then_ok, ok
from tests.stack import Stack
from tests.tracing.conftest import SENDER
from tests.tracing.jaeger import JaegerServer, Span, jaeger_id, spans

BODY = b'{"type":"order.created","card":"4111-secret-body-marker"}'


async def wait_for_trace(
    jaeger: JaegerServer,
    trace_id: str,
    flush: list[Tracing],
    complete: Callable[[list[Span]], bool],
    what: str,
    seconds: float = 20.0,
) -> tuple[list[Span], dict[str, Any]]:
    """Flush the tracers and poll Jaeger until the trace satisfies ``complete``."""
    deadline = time.monotonic() + seconds
    found: list[Span] = []
    while time.monotonic() < deadline:
        for tracing in flush:
            await asyncio.to_thread(tracing.flush)
        raw = await asyncio.to_thread(jaeger.trace, trace_id)
        if raw is not None:
            found = spans(raw)
            if complete(found):
                return found, raw
        await asyncio.sleep(0.1)
    pytest.fail(
        f"timed out after {seconds} s waiting for {what} in trace {trace_id}; Jaeger has {found}",
        pytrace=False,
    )


def one(found: list[Span], service: str, kind: str | None, name: str | None = None) -> Span:
    matches = [
        s
        for s in found
        if s.service == service and s.kind == kind and (name is None or s.name == name)
    ]
    assert len(matches) == 1, f"expected one {service} {kind} {name or ''} span in {found}"
    return matches[0]


def of_kind(found: list[Span], kind: str, service: str | None = None) -> list[Span]:
    return [s for s in found if s.kind == kind and service in (None, s.service)]


def trace_id_of(traceparent: str) -> int:
    version, trace_id, _span_id, _flags = traceparent.split("-")
    assert version == "00"
    return int(trace_id, 16)


def sender_headers(sender: jaeger_client.Tracer, operation: str) -> tuple[Any, dict[str, str]]:
    """Start the sender's span; its context as the Jaeger client sends it (uber-trace-id)."""
    span = sender.start_span(operation)
    headers: dict[str, str] = {}
    sender.inject(span.context, Format.HTTP_HEADERS, headers)
    return span, headers


def no_secrets(raw: dict[str, Any], *secrets: str) -> None:
    text = json.dumps(raw)
    for secret in secrets:
        assert secret not in text, f"{secret[:12]}... appears in the trace"


async def test_jaeger_client_sender_trace_runs_through_hookline_to_the_endpoint(
    traced: Stack, endpoint: Endpoint, jaeger: JaegerServer, sender: jaeger_client.Tracer
) -> None:
    ep, key = await traced.add_endpoint(endpoint.on("/orders", ok))
    span, headers = sender_headers(sender, "POST order.created")
    assert list(headers) == ["uber-trace-id"]
    status, answer = await traced.send(key, BODY, **headers)
    span.finish()
    assert status == 202
    await endpoint.wait_for(lambda: len(endpoint.received) == 1, 10, "the delivery")
    trace_id = jaeger_id(span.context.trace_id)
    stream = traced.queue.stream(ep.pool)

    found, raw = await wait_for_trace(
        jaeger,
        trace_id,
        [traced.receiver_tracing, traced.dispatcher_tracing],
        lambda f: len(f) >= 5 and any(s.service == SENDER for s in f),
        "the sender's, receiver's and dispatcher's spans",
    )
    assert len(found) == 5, found
    sent = one(found, SENDER, None, "POST order.created")
    server = one(found, "hookline-receiver", "server", "POST /webhooks/send")
    enqueue = one(found, "hookline-receiver", "producer", f"send {stream}")
    attempt = one(found, "hookline-dispatcher", "consumer", f"process {stream}")
    outbound = one(found, "hookline-dispatcher", "client", "POST")
    assert sent.parent is None
    assert server.parent == sent.id
    assert enqueue.parent == server.id
    assert attempt.parent == enqueue.id
    assert outbound.parent == attempt.id

    assert server.tags["http.request.method"] == "POST"
    assert server.tags["http.route"] == "/webhooks/send"
    assert server.tags["http.response.status_code"] == 202
    assert enqueue.tags["messaging.destination.name"] == stream
    assert enqueue.tags["messaging.message.id"] == answer["id"]
    assert attempt.tags["messaging.message.id"] == answer["id"]
    assert attempt.tags["messaging.consumer.group.name"] == "dispatchers"
    assert attempt.tags["hookline.endpoint"] == ep.id
    assert attempt.tags["hookline.attempt"] == 1
    assert attempt.tags["hookline.outcome"] == "delivered"
    assert outbound.tags["http.response.status_code"] == 200
    assert outbound.tags["url.full"] == ep.url
    no_secrets(raw, key, traced.secrets[ep.id], "4111-secret-body-marker")

    # (b) the endpoint got the trace: traceparent names the outbound call's span
    delivered = endpoint.received[0].headers
    assert delivered["traceparent"] == f"00-{int(trace_id, 16):032x}-{outbound.id}-01"
    assert int(delivered["uber-trace-id"].split(":")[0], 16) == int(trace_id, 16)


async def test_a_failed_then_delivered_webhook_shows_both_attempts_in_its_trace(
    traced: Stack, endpoint: Endpoint, jaeger: JaegerServer, config: Config
) -> None:
    _, key = await traced.add_endpoint(endpoint.on("/flaky", fail_then_ok(1)))
    # This sender is instrumented with OpenTelemetry and sends W3C traceparent only.
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http}
    sender = setup(config, "webhook-sender-w3c", env, install_global=False)
    try:
        assert sender.provider is not None
        tracer = sender.provider.get_tracer("webhook-sender")
        with tracer.start_as_current_span("POST invoice.paid", kind=SpanKind.CLIENT) as span:
            headers: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(headers)
            status, _ = await traced.send(key, BODY, **headers)
        assert status == 202
        await endpoint.wait_for(lambda: len(endpoint.received) == 2, 10, "the second attempt")
        trace_id = jaeger_id(span.get_span_context().trace_id)
        found, raw = await wait_for_trace(
            jaeger,
            trace_id,
            [sender, traced.receiver_tracing, traced.dispatcher_tracing],
            lambda f: (
                len(of_kind(f, "consumer")) == 2
                and all("hookline.outcome" in s.tags for s in of_kind(f, "consumer"))
                and len(of_kind(f, "client", "hookline-dispatcher")) == 2
            ),
            "two delivery attempts",
        )
    finally:
        await sender.close()
    if os.environ.get("HOOKLINE_TRACE_DUMP"):  # docs/render_trace.py draws docs/trace.svg from it
        dump = Path(os.environ["HOOKLINE_TRACE_DUMP"])
        await asyncio.to_thread(dump.write_text, json.dumps({"data": [raw]}, indent=1))
    sent = one(found, "webhook-sender-w3c", "client", "POST invoice.paid")
    server = one(found, "hookline-receiver", "server")
    enqueue = one(found, "hookline-receiver", "producer")
    assert server.parent == sent.id
    assert enqueue.parent == server.id
    first, second = of_kind(found, "consumer")
    assert (first.parent, second.parent) == (enqueue.id, enqueue.id)
    assert (first.tags["hookline.attempt"], second.tags["hookline.attempt"]) == (1, 2)
    assert first.tags["hookline.outcome"] == "failed"
    assert first.tags["hookline.outcome.reason"] == "endpoint answered 500"
    assert first.tags["otel.status_code"] == "ERROR"
    assert second.tags["hookline.outcome"] == "delivered"
    calls = {c.parent: c for c in of_kind(found, "client", "hookline-dispatcher")}
    assert calls[first.id].tags["http.response.status_code"] == 500
    assert calls[first.id].tags["error.type"] == "500"
    assert calls[second.id].tags["http.response.status_code"] == 200
    parents = [trace_id_of(r.headers["traceparent"]) for r in endpoint.received]
    assert parents == [int(trace_id, 16)] * 2


async def test_a_webhook_without_trace_context_starts_its_own_trace(
    traced: Stack, endpoint: Endpoint, jaeger: JaegerServer
) -> None:
    _, key = await traced.add_endpoint(endpoint.on("/big", ok))
    body = b"x" * (traced.config.inline_limit + 1)  # to the body store: an upload span
    status, _ = await traced.send(key, body)
    assert status == 202
    await endpoint.wait_for(lambda: len(endpoint.received) == 1, 10, "the delivery")
    trace_id = jaeger_id(trace_id_of(endpoint.received[0].headers["traceparent"]))
    found, _ = await wait_for_trace(
        jaeger,
        trace_id,
        [traced.receiver_tracing, traced.dispatcher_tracing],
        lambda f: len(f) >= 5 and bool(of_kind(f, "client")),
        "the webhook's spans",
    )
    assert len(found) == 5, found
    server = one(found, "hookline-receiver", "server")
    upload = one(found, "hookline-receiver", "internal", "body upload")
    enqueue = one(found, "hookline-receiver", "producer")
    attempt = one(found, "hookline-dispatcher", "consumer")
    outbound = one(found, "hookline-dispatcher", "client")
    assert server.parent is None
    assert upload.parent == server.id
    assert upload.tags["hookline.body.store"] == "fs"
    assert (enqueue.parent, attempt.parent, outbound.parent) == (server.id, enqueue.id, attempt.id)


async def test_each_webhook_is_its_own_trace(
    traced: Stack, endpoint: Endpoint, jaeger: JaegerServer, sender: jaeger_client.Tracer
) -> None:
    _, key = await traced.add_endpoint(endpoint.on("/each", ok))
    ids = []
    for n in range(3):
        span, headers = sender_headers(sender, f"send {n}")
        status, _ = await traced.send(key, BODY, **headers)
        span.finish()
        assert status == 202
        ids.append(span.context.trace_id)
    await endpoint.wait_for(lambda: len(endpoint.received) == 3, 10, "three deliveries")
    assert sorted(trace_id_of(r.headers["traceparent"]) for r in endpoint.received) == sorted(ids)
    for trace_id in ids:
        found, _ = await wait_for_trace(
            jaeger,
            jaeger_id(trace_id),
            [traced.receiver_tracing, traced.dispatcher_tracing],
            lambda f: len(f) >= 5,
            "the webhook's spans",
        )
        assert len(found) == 5, found
        assert len(of_kind(found, "server")) == 1


async def test_a_refused_webhook_is_a_server_span_with_its_status_and_no_enqueue(
    traced: Stack, endpoint: Endpoint, jaeger: JaegerServer, sender: jaeger_client.Tracer
) -> None:
    _, key = await traced.add_endpoint(endpoint.on("/small", ok))
    span, headers = sender_headers(sender, "POST too big")
    body = io.BytesIO(b"x" * (traced.config.max_body_bytes + 1))
    assert traced.client is not None
    headers["X-WH-Endpoint-Key"] = key
    async with traced.client.post(
        traced.url + "/webhooks/send", data=body, headers=headers
    ) as resp:
        status, answer = resp.status, await resp.json()
    span.finish()
    assert (status, answer["error"]) == (413, "body_too_large")
    found, _ = await wait_for_trace(
        jaeger,
        jaeger_id(span.context.trace_id),
        [traced.receiver_tracing],
        lambda f: len(f) == 2,
        "the sender's and the receiver's span",
    )
    server = one(found, "hookline-receiver", "server")
    assert server.tags["http.response.status_code"] == 413
    assert "error" not in server.tags  # the sender's mistake, not the server's
    assert server.parent == one(found, SENDER, None).id


async def test_a_source_event_is_one_trace_with_a_delivery_per_subscriber(
    traced: Stack, endpoint: Endpoint, jaeger: JaegerServer
) -> None:
    source, key = await traced.add_source("orders")
    subscribers = [
        (await traced.add_endpoint(endpoint.on(f"/{n}", ok), n, source="orders"))[0]
        for n in ("a", "b")
    ]
    await traced.propagated(lambda c: len(c.subscribed(source.id)) == 2, "two subscribers")
    status, answer = await traced.send(key, BODY, **{"X-WH-Event-Type": "order.created"})
    assert (status, answer["endpoints"]) == (202, 2)
    await endpoint.wait_for(lambda: len(endpoint.received) == 2, 10, "two deliveries")
    parents = {trace_id_of(r.headers["traceparent"]) for r in endpoint.received}
    assert len(parents) == 1, "both deliveries continue the event's one trace"
    found, _ = await wait_for_trace(
        jaeger,
        jaeger_id(parents.pop()),
        [traced.receiver_tracing, traced.dispatcher_tracing],
        lambda f: len(of_kind(f, "client", "hookline-dispatcher")) == 2,
        "both deliveries",
    )
    server = one(found, "hookline-receiver", "server")
    enqueue = one(found, "hookline-receiver", "producer", f"send source {source.id}")
    assert enqueue.parent == server.id
    assert enqueue.tags["messaging.message.id"] == answer["id"]
    attempts = of_kind(found, "consumer")
    assert {a.tags["hookline.endpoint"] for a in attempts} == {ep.id for ep in subscribers}
    assert all(a.parent == enqueue.id for a in attempts)


async def test_at_a_sampling_ratio_a_webhook_is_traced_whole_or_not_at_all(
    config: Config, endpoint: Endpoint, jaeger: JaegerServer
) -> None:
    """The production setting (docs/tracing.md): parent-based, a ratio for new traces. A
    webhook the receiver leaves out has no span anywhere, and the dispatcher follows the
    receiver's decision, which it reads from the entry's traceparent."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
    }
    stack = Stack(
        config,
        receiver_tracing=setup(config, RECEIVER, env, install_global=False),
        dispatcher_tracing=setup(config, DISPATCHER, env, install_global=False),
    )
    await stack.start()
    try:
        _, key = await stack.add_endpoint(endpoint.on("/ratio", ok))
        for _ in range(40):
            assert (await stack.send(key, BODY))[0] == 202
        await endpoint.wait_for(lambda: len(endpoint.received) == 40, 20, "40 deliveries")
        decided = [r.headers["traceparent"].split("-") for r in endpoint.received]
        kept = [jaeger_id(int(t, 16)) for _, t, _, flags in decided if flags == "01"]
        left = [jaeger_id(int(t, 16)) for _, t, _, flags in decided if flags == "00"]
        assert len(kept) + len(left) == 40 and 5 <= len(kept) <= 35, decided  # ~20 of 40
        flush = [stack.receiver_tracing, stack.dispatcher_tracing]
        for trace_id in kept:  # whole: the receiver's two spans and the dispatcher's two
            found, _ = await wait_for_trace(
                jaeger, trace_id, flush, lambda f: len(f) >= 4, "a kept webhook's spans"
            )
            assert sorted((s.service, s.kind) for s in found) == [
                ("hookline-dispatcher", "client"),
                ("hookline-dispatcher", "consumer"),
                ("hookline-receiver", "producer"),
                ("hookline-receiver", "server"),
            ], found
        for tracing in flush:  # everything ended is exported by now
            await asyncio.to_thread(tracing.flush)
        assert [t for t in left if await asyncio.to_thread(jaeger.trace, t)] == []
    finally:
        await stack.stop()
        await stack.receiver_tracing.close()
        await stack.dispatcher_tracing.close()
