"""Tracing's configuration from the OTEL_* variables (hookline.telemetry), read without a
backend and without exporting (tests/tracing has the real Jaeger)."""

from __future__ import annotations

import pytest

from hookline import config as config_mod
from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.telemetry import RECEIVER, enabled, export_target, sampler, setup
from hookline.tracing import OFF

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


def test_tracing_that_is_not_configured_is_off() -> None:
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
