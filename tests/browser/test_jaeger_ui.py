"""A webhook's trace as a person sees it in the Jaeger UI: a sender instrumented with
OpenTelemetry posts a webhook, the endpoint (a real HTTP server) answers 500 to the
first attempt and 200 to the retry, and headless Chromium opens ``/trace/<id>``.

The page is saved as a PNG: ``HOOKLINE_SCREENSHOT`` names the file (``make screenshot``
writes docs/jaeger-trace.png this way), else it goes to the test's temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from playwright.async_api import Locator, Page, expect

from hookline.config import Config
from hookline.telemetry import setup
from tests.peers import Endpoint, fail_then_ok
from tests.stack import Stack
from tests.tracing.jaeger import JaegerServer, jaeger_id
from tests.tracing.test_traces import of_kind, wait_for_trace

pytestmark = pytest.mark.ui

SENDER = "webhook-sender"
BODY = b'{"type":"invoice.paid","invoice":"in_1042"}'


def row(page: Page, service: str, name: str, nth: int = 0) -> Locator:
    """The timeline row of the ``nth`` span named ``name`` of ``service``, as listed."""
    rows = page.locator(".span-row").filter(has=page.locator(".span-svc-name", has_text=service))
    return rows.filter(has=page.locator(".endpoint-name", has_text=name)).nth(nth)


async def open_tags(page: Page, span_row: Locator) -> dict[str, str]:
    """Open a span's detail (a click on its name) and its Tags: the tags as listed."""
    await span_row.locator(".span-name").click()
    detail = page.locator(".detail-row")
    await expect(detail).to_have_count(1)
    await detail.locator(".AccordianKeyValues--header", has_text="Tags").click()
    rows = detail.locator(".KeyValueTable--row")
    await expect(rows.first).to_be_visible()
    shown = {}
    for tag in await rows.all():
        key = await tag.locator(".KeyValueTable--keyColumn").inner_text()
        shown[key.strip()] = (await tag.locator(".KeyValueTable--valueColumn").inner_text()).strip()
    return shown


async def close(page: Page, span_row: Locator) -> None:
    await span_row.locator(".span-name").click()
    await expect(page.locator(".detail-row")).to_have_count(0)


async def test_the_jaeger_ui_shows_a_webhook_delivered_after_a_failed_attempt(
    traced: Stack,
    endpoint: Endpoint,
    jaeger_ui: JaegerServer,
    config: Config,
    page: Page,
    tmp_path: Path,
) -> None:
    ep, key = await traced.add_endpoint(endpoint.on("/hooks/invoices", fail_then_ok(1)))
    stream = traced.queue.stream(ep.pool)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger_ui.otlp_http, "OTEL_TRACES_SAMPLER": "always_on"}
    sender = setup(config, SENDER, env, install_global=False)
    try:
        assert sender.provider is not None
        tracer = sender.provider.get_tracer(SENDER)
        with tracer.start_as_current_span("POST invoice.paid", kind=SpanKind.CLIENT) as span:
            headers: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(headers)
            status, _ = await traced.send(key, BODY, **headers)
        assert status == 202
        await endpoint.wait_for(lambda: len(endpoint.received) == 2, 15, "the retry")
        trace_id = jaeger_id(span.get_span_context().trace_id)
        await wait_for_trace(
            jaeger_ui,
            trace_id,
            [sender, traced.receiver_tracing, traced.dispatcher_tracing],
            lambda f: (
                len(of_kind(f, "consumer")) == 2
                and all("hookline.outcome" in s.tags for s in of_kind(f, "consumer"))
                and len(of_kind(f, "client", "hookline-dispatcher")) == 2
                and any(s.service == SENDER for s in f)
            ),
            "both attempts and the sender's span",
        )
    finally:
        await sender.close()

    await page.goto(f"{jaeger_ui.base}/trace/{trace_id}")
    shot = Path(os.environ.get("HOOKLINE_SCREENSHOT") or tmp_path / "jaeger-trace.png")
    try:
        # the header names the trace by its root span; seven spans in the timeline
        await expect(page.locator(".TracePageHeader--title")).to_contain_text(
            f"{SENDER}: POST invoice.paid", timeout=20_000
        )
        await expect(page.locator(".span-row")).to_have_count(7)
        for service, name in [
            (SENDER, "POST invoice.paid"),
            ("hookline-receiver", "POST /webhooks/send"),
            ("hookline-receiver", f"send {stream}"),
        ]:
            await expect(row(page, service, name)).to_be_visible()
        first, retry = (
            row(page, "hookline-dispatcher", f"process {stream}", 0),
            row(page, "hookline-dispatcher", f"process {stream}", 1),
        )
        first_call, retry_call = (
            row(page, "hookline-dispatcher", "POST", 0),
            row(page, "hookline-dispatcher", "POST", 1),
        )
        # the failed attempt and its request carry the error mark; nothing else does
        await expect(page.locator(".span-row .SpanBarRow--errorIcon")).to_have_count(2)
        for errored in (first, first_call):
            await expect(errored.locator(".SpanBarRow--errorIcon")).to_have_count(1)
        for fine in (retry, retry_call):
            await expect(fine.locator(".SpanBarRow--errorIcon")).to_have_count(0)

        # their tags, as the span detail lists them, one span open at a time
        retried = await open_tags(page, retry_call)
        assert retried["http.response.status_code"] == "200"
        await close(page, retry_call)
        attempt = await open_tags(page, first)
        assert attempt["hookline.attempt"] == "1"
        assert attempt["hookline.outcome"] == "failed"
        assert attempt["hookline.outcome.reason"] == "endpoint answered 500"
        assert attempt["otel.status_code"] == "ERROR"
        await close(page, first)
        # left open for the picture: the failed request to the endpoint
        failed = await open_tags(page, first_call)
        assert failed["http.response.status_code"] == "500"
        assert failed["error.type"] == "500"
        assert failed["otel.status_code"] == "ERROR"
        assert failed["url.full"] == ep.url
    finally:
        await picture(page, shot)


async def picture(page: Page, path: Path) -> None:
    """The page down to the last row, its name column widened so that no span name is
    cut (a person would drag the divider the same way)."""
    dragger = page.locator(".TimelineHeaderRow .VerticalResizer--dragger")
    box = await dragger.bounding_box()
    if box is not None:
        await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        await page.mouse.down()
        await page.mouse.move(
            page.viewport_size["width"] * 0.36 if page.viewport_size else 500, box["y"] + 5, steps=5
        )
        await page.mouse.up()
    await page.mouse.move(0, 0)
    rows = page.locator(".span-row, .detail-row")
    bottom = 0.0
    for item in await rows.all():
        edge = await item.bounding_box()
        if edge is not None:
            bottom = max(bottom, edge["y"] + edge["height"])
    width = page.viewport_size["width"] if page.viewport_size else 1400
    path.parent.mkdir(parents=True, exist_ok=True)
    clip = {"x": 0, "y": 0, "width": width, "height": bottom + 12} if bottom else None
    await page.screenshot(path=str(path), clip=clip, full_page=clip is None)
