"""hookline.local.jaeger's pure parts: the config it writes, which folder counts as a built
Jaeger UI, which trace id a delivery names, and when a trace is complete enough to link."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hookline.local.jaeger import config_text, delivered, trace_id_of, ui_problem

UI_INDEX = "<html><head><title>Jaeger UI</title><script>JAEGER_VERSION = DEFAULT_VERSION;"
PLACEHOLDER = "<title>Test Page</title><script>JAEGER_VERSION = DEFAULT_VERSION;"


def test_the_config_listens_on_loopback_only_and_serves_the_ui_only_when_given(
    tmp_path: Path,
) -> None:
    bare = yaml.safe_load(config_text(16686, 4318))
    query = bare["extensions"]["jaeger_query"]
    assert query["http"]["endpoint"] == "127.0.0.1:16686"
    assert query["grpc"]["endpoint"] == "127.0.0.1:16685"
    otlp = bare["receivers"]["otlp"]["protocols"]
    assert (otlp["http"]["endpoint"], otlp["grpc"]["endpoint"]) == (
        "127.0.0.1:4318",
        "127.0.0.1:4317",
    )
    assert "ui" not in query
    odd = tmp_path / "a 'quoted' \"ui\""
    with_ui = yaml.safe_load(config_text(16686, 4318, str(odd)))
    assert with_ui["extensions"]["jaeger_query"]["ui"] == {"assets_path": str(odd.resolve())}


def test_only_a_built_jaeger_ui_counts(tmp_path: Path) -> None:
    assert "is not set" in (ui_problem("") or "")
    assert "has no index.html" in (ui_problem(str(tmp_path)) or "")
    (tmp_path / "index.html").write_text(PLACEHOLDER)  # what Jaeger serves without a UI
    assert "another index.html" in (ui_problem(str(tmp_path)) or "")
    (tmp_path / "index.html").write_text(UI_INDEX)
    assert ui_problem(str(tmp_path)) is None


def test_a_delivery_names_its_trace_by_its_traceparent() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of(f"00-{trace.upper()}-00f067aa0ba902b7-01") == trace
    for wrong in ("", "00-abc-00f067aa0ba902b7-01", f"00-{'0' * 32}-00f067aa0ba902b7-01"):
        assert trace_id_of(wrong) is None
    assert trace_id_of(f"00-{'g' * 32}-00f067aa0ba902b7-01") is None


def jaeger_trace(services: list[str], outcomes: list[str]) -> dict[str, Any]:
    processes = {f"p{i}": {"serviceName": s} for i, s in enumerate(services)}
    spans = [{"tags": [{"key": "hookline.outcome", "value": o}]} for o in outcomes]
    return {"processes": processes, "spans": spans}


def test_a_trace_is_linked_once_every_service_and_a_delivered_attempt_are_in() -> None:
    want = ("hookline-receiver", "hookline-dispatcher", "hookline-sink")
    assert delivered(jaeger_trace(list(want), ["failed", "delivered"]), want)
    assert not delivered(jaeger_trace(list(want), ["failed"]), want)
    assert not delivered(jaeger_trace(list(want[:2]), ["delivered"]), want)
