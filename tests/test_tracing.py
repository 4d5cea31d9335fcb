"""The span runtime's sampling and propagation, without a backend (tests/tracing has the
real Jaeger)."""

from __future__ import annotations

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from hookline.config import Config
from hookline.telemetry import RECEIVER, setup
from hookline.tracing import default_propagator

# Nothing listens there: spans are encoded and their export fails at once.
ENDPOINT = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "100",
}


def test_the_sender_context_is_continued_or_dropped_as_the_sampler_says() -> None:
    env = {**ENDPOINT, "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    tracing = setup(Config(), RECEIVER, env, install_global=False)
    try:
        for flags in (1, 0):
            remote = SpanContext(0xABC, 0xDEF, True, TraceFlags(flags))
            context = trace.set_span_in_context(NonRecordingSpan(remote), Context())
            span = tracing.start("x", trace.SpanKind.SERVER, context, {}, None)
            assert span.get_span_context().trace_id == 0xABC
            assert span.is_recording() is bool(flags)
            span.end()
        root = tracing.start("y", trace.SpanKind.SERVER, Context(), {}, None)
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
            tracing.start("child", trace.SpanKind.CLIENT, context, {}, None),
            tracing.start("root", trace.SpanKind.CLIENT, Context(), {}, None),
            NonRecordingSpan(SpanContext(0x1, 0x2, False, TraceFlags(0))),
        ):
            direct: dict[str, str] = {}
            tracing.inject(direct, span)
            standard: dict[str, str] = {}
            default_propagator().inject(standard, trace.set_span_in_context(span))
            assert direct == standard
            span.end()
        # with baggage the propagators write it (W3C and Jaeger's uberctx- headers)
        span = tracing.start("b", trace.SpanKind.CLIENT, Context(), {}, None)
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


def test_ratio_samplers_decide_as_the_sdk_samplers() -> None:
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

    judge = TraceIdRatioBased(0.5)
    for name in ("traceidratio", "parentbased_traceidratio"):
        env = {**ENDPOINT, "OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": "0.5"}
        tracing = setup(Config(), RECEIVER, env, install_global=False)
        try:
            decisions = set()
            for _ in range(200):
                root = tracing.start("r", trace.SpanKind.SERVER, Context(), {}, None)
                trace_id = root.get_span_context().trace_id
                sampled = judge.should_sample(None, trace_id, "r").decision
                assert root.is_recording() is (sampled is Decision.RECORD_AND_SAMPLE)
                decisions.add(root.is_recording())
                child = tracing.start("c", trace.SpanKind.PRODUCER, set_span_in(root), {}, None)
                assert child.get_span_context().trace_id == trace_id
                if name.startswith("parentbased"):  # the child follows its parent
                    assert child.is_recording() is root.is_recording()
                    assert child.get_span_context().trace_flags.sampled is root.is_recording()
                child.end()
                root.end()
            assert decisions == {True, False}
        finally:
            tracing.provider.shutdown()  # type: ignore[union-attr]


def set_span_in(span: trace.Span) -> Context:
    return trace.set_span_in_context(span, Context())


def test_a_root_left_out_gets_only_its_traceparent_and_a_kept_one_its_trace_id() -> None:
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

    judge = TraceIdRatioBased(0.5)
    env = {
        **ENDPOINT,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
    }
    tracing = setup(Config(), RECEIVER, env, install_global=False)
    try:
        outcomes = set()
        for _ in range(200):
            traceparent, trace_id = tracing.unsampled_root({})
            if traceparent is not None:  # left out: no span, the decision in the flags
                version, tid, sid, flags = traceparent.split("-")
                assert (version, flags, trace_id) == ("00", "00", 0) and len(sid) == 16
                assert judge.should_sample(None, int(tid, 16), "r").decision is Decision.DROP
            else:  # kept: the span is made with the trace id decided on
                span = tracing.start("r", trace.SpanKind.SERVER, Context(), {}, None, trace_id)
                assert span.is_recording() and span.get_span_context().trace_id == trace_id
                span.end()
            outcomes.add(traceparent is None)
        assert outcomes == {True, False}
        # a request that carries a context is decided by it, with a span, as before
        carried = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
        assert tracing.unsampled_root(carried) == (None, 0)
    finally:
        tracing.provider.shutdown()  # type: ignore[union-attr]
    always = setup(Config(), RECEIVER, ENDPOINT, install_global=False)  # parentbased_always_on
    try:
        assert always.unsampled_root({}) == (None, 0)
    finally:
        always.provider.shutdown()  # type: ignore[union-attr]


def test_an_entry_left_out_is_passed_on_with_the_headers_its_span_would_inject() -> None:
    from hookline.spans import _extract_entry

    env = {**ENDPOINT, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
    tracing = setup(
        Config(), RECEIVER, {**env, "OTEL_TRACES_SAMPLER_ARG": "0.5"}, install_global=False
    )
    try:
        left = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        span = tracing.start(
            "POST", trace.SpanKind.CLIENT, _extract_entry({"traceparent": left}), {}, None
        )
        assert not span.is_recording()
        injected: dict[str, str] = {}
        tracing.inject(injected, span)
        assert tracing.unsampled_headers({"traceparent": left}) == injected
        for carrier in (
            {"traceparent": left[:-2] + "01"},  # kept: its spans are made
            {"traceparent": left, "tracestate": "vendor=v1"},
            {"traceparent": left.upper().replace("0X", "0x")},
            {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-00"},
            {},
        ):
            assert tracing.unsampled_headers(carrier) is None, carrier
    finally:
        tracing.provider.shutdown()  # type: ignore[union-attr]
