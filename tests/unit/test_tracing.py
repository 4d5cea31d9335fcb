"""Tracing settings and propagation, without a backend and without exporting: whether
tracing is on, where it would export, and how an entry's context is read.
tests/test_tracing.py has the tests that export (to a port where nothing listens),
tests/tracing the real Jaeger."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from hookline import config as config_mod
from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.models import Webhook
from hookline.tracing import (
    _CARRIER,
    OFF,
    RECEIVER,
    _extract_entry,
    enabled,
    export_target,
    sampler,
    setup,
)

# Only read as settings here: nothing is exported.
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
