"""Tracing settings and propagation, without a backend (tests/tracing has the real Jaeger)."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from hookline import config as config_mod
from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.models import Webhook
from hookline.tracing import (
    _CARRIER,
    OFF,
    RECEIVER,
    _extract_entry,
    default_propagator,
    enabled,
    export_target,
    sampler,
    setup,
)

# Nothing listens there: spans are encoded and their export fails at once.
ENDPOINT = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "100",
}


@pytest.mark.parametrize(
    ("setting", "environ", "on"),
    [
        ("auto", {}, False),
        ("auto", ENDPOINT, True),
        ("auto", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ("on", {}, True),
        ("off", ENDPOINT, False),
        ("on", {"OTEL_SDK_DISABLED": "true"}, False),
        ("auto", {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_off_unless_configured(setting: str, environ: dict[str, str], on: bool) -> None:
    assert enabled(Config(tracing=setting), environ) is on


def test_hookline_tracing_accepts_the_usual_switch_spellings() -> None:
    assert config_mod.load({"HOOKLINE_TRACING": "1"}).tracing == "on"
    assert config_mod.load({"HOOKLINE_TRACING": "False"}).tracing == "off"
    assert config_mod.load({}).tracing == "auto"
    with pytest.raises(InvalidSpec, match="HOOKLINE_TRACING"):
        config_mod.load({"HOOKLINE_TRACING": "sometimes"})


def test_off_leaves_the_entry_without_context() -> None:
    webhook = Webhook(id="msg_1", endpoint="a/b", headers={})
    with OFF.produce(webhook, "hookline:stream:default"):
        pass
    assert webhook.trace == {}
    assert setup(Config(), RECEIVER, {}) is OFF


@pytest.mark.parametrize(
    ("environ", "target"),
    [
        ({}, ("http/protobuf", "http://localhost:4318/v1/traces")),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318/"},
            ("http/protobuf", "http://j:4318/v1/traces"),
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c/otlp/traces"},
            ("http/protobuf", "https://c/otlp/traces"),
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ("grpc", "http://localhost:4317")),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4317"},
            ("grpc", "http://j:4317"),
        ),
    ],
)
def test_the_export_target_follows_the_otlp_variables(
    environ: dict[str, str], target: tuple[str, str]
) -> None:
    assert export_target(environ) == target


def test_unknown_samplers_and_protocols_fail_at_start() -> None:
    with pytest.raises(InvalidSpec, match="OTEL_TRACES_SAMPLER"):
        sampler({"OTEL_TRACES_SAMPLER": "sometimes"})
    with pytest.raises(InvalidSpec, match="OTEL_TRACES_SAMPLER_ARG"):
        sampler({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"})
    with pytest.raises(InvalidSpec, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        export_target({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_the_sender_context_is_continued_or_dropped_as_the_sampler_says() -> None:
    env = {**ENDPOINT, "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    tracing = setup(Config(), RECEIVER, env, install_global=False)
    try:
        for flags in (1, 0):
            remote = SpanContext(0xABC, 0xDEF, True, TraceFlags(flags))
            context = trace.set_span_in_context(NonRecordingSpan(remote), Context())
            span = tracing._start("x", trace.SpanKind.SERVER, context, {}, None)
            assert span.get_span_context().trace_id == 0xABC
            assert span.is_recording() is bool(flags)
            span.end()
        root = tracing._start("y", trace.SpanKind.SERVER, Context(), {}, None)
        assert root.is_recording() and root.get_span_context().trace_id not in (0, 0xABC)
        root.end()
    finally:
        tracing.provider.shutdown()  # type: ignore[union-attr]


def test_headers_formatted_directly_match_the_propagators() -> None:
    tracing = setup(Config(), RECEIVER, ENDPOINT, install_global=False)
    assert tracing._default_propagation  # the headers are formatted directly
    try:
        state = TraceState([("vendor", "v1")])
        parent = SpanContext(
            0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(1), state
        )
        context = trace.set_span_in_context(NonRecordingSpan(parent), Context())
        for span in (
            tracing._start("child", trace.SpanKind.CLIENT, context, {}, None),
            tracing._start("root", trace.SpanKind.CLIENT, Context(), {}, None),
            NonRecordingSpan(SpanContext(0x1, 0x2, False, TraceFlags(0))),
        ):
            direct: dict[str, str] = {}
            tracing.inject(direct, span)
            standard: dict[str, str] = {}
            default_propagator().inject(standard, trace.set_span_in_context(span))
            assert direct == standard
            span.end()
        # with baggage the propagators write it (W3C and Jaeger's uberctx- headers)
        span = tracing._start("b", trace.SpanKind.CLIENT, Context(), {}, None)
        with_baggage = baggage.set_baggage("tenant", "acme")
        token = otel_context.attach(with_baggage)
        try:
            carrier: dict[str, str] = {}
            tracing.inject(carrier, span)
        finally:
            otel_context.detach(token)
        assert carrier["baggage"] == "tenant=acme"
        assert carrier["uberctx-tenant"] == "acme"
    finally:
        tracing.provider.shutdown()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "carrier",
    [
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"},
        {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x"},
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "a=b",
        },
        {"traceparent": "garbage"},
    ],
)
def test_an_entry_context_reads_as_the_propagators_read_it(carrier: dict[str, str]) -> None:
    ours = trace.get_current_span(_extract_entry(carrier)).get_span_context()
    theirs = trace.get_current_span(_CARRIER.extract(carrier)).get_span_context()
    assert ours == theirs
