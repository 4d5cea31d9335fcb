"""The spans' context between the receiver and the dispatcher, without a backend
(tests/tracing checks the spans themselves in a real Jaeger)."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from hookline import spans
from hookline.models import Webhook
from hookline.spans import _CARRIER, _extract_entry
from hookline.tracing import OFF


def test_off_leaves_the_entry_without_context() -> None:
    webhook = Webhook(id="msg_1", endpoint="a/b", headers={})
    with spans.produce(OFF, webhook, "hookline:stream:default"):
        pass
    assert webhook.trace == {}


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
