"""Which subscribers a source's event goes to (hookline.store.registry.Subscriptions), and
the spec rules of sources and subscriptions (hookline.models)."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import pytest

from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.models import (
    Endpoint,
    SigningSecret,
    Source,
    Webhook,
    endpoint_from_spec,
    source_from_spec,
    valid_event_type,
)
from hookline.store import Subscriptions


def subscriber(name: str, *patterns: str, namespace: str = "shop") -> Endpoint:
    spec: dict[str, Any] = {"url": f"https://{name}.example.com/", "source": "billing"}
    if patterns:
        spec["eventTypes"] = list(patterns)
    return endpoint_from_spec(
        f"{namespace}/{name}", spec, ["k"], [SigningSecret("whsec_x")], Config()
    )


def test_exact_names_prefixes_and_no_filter_each_match_what_they_say() -> None:
    subs = Subscriptions(
        [
            subscriber("all"),
            subscriber("invoices", "invoice.*"),
            subscriber("lines", "invoice.line.*"),
            subscriber("paid", "invoice.paid", "customer.created"),
        ]
    )
    assert sorted(subs.match("invoice.paid")) == ["shop/all", "shop/invoices", "shop/paid"]
    assert sorted(subs.match("invoice.line.added")) == ["shop/all", "shop/invoices", "shop/lines"]
    assert sorted(subs.match("customer.created")) == ["shop/all", "shop/paid"]
    assert subs.match("invoice") == ["shop/all"], "invoice.* needs something after the dot"
    assert subs.match("invoicepaid") == ["shop/all"]


def test_an_endpoint_two_filters_match_is_listed_once() -> None:
    subs = Subscriptions([subscriber("both", "invoice.*", "invoice.paid")])
    assert subs.match("invoice.paid") == ["shop/both"]


def lines_run(subs: Subscriptions, event_type: str) -> int:
    """How many lines of Python ``match`` executes: work that does not depend on the
    machine's speed."""
    count = 0

    def tracer(frame: FrameType, event: str, _: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        subs.match(event_type)
    finally:
        sys.settrace(None)
    return count


def test_matching_does_no_more_work_with_ten_thousand_endpoints_that_do_not_match() -> None:
    def index(others: int) -> Subscriptions:
        eps = [subscriber("paid", "invoice.paid"), subscriber("lines", "invoice.line.*")]
        eps += [subscriber(f"o{i}", f"other{i}.event", f"other{i}.*") for i in range(others)]
        return Subscriptions(eps)

    small, large = index(10), index(10_000)
    assert sorted(large.match("invoice.line.added")) == ["shop/lines"]
    assert lines_run(large, "invoice.line.added") == lines_run(small, "invoice.line.added")
    assert lines_run(large, "invoice.paid") == lines_run(small, "invoice.paid")


def test_a_subscription_names_a_source_in_its_own_namespace() -> None:
    ep = subscriber("a", "invoice.*", namespace="team-b")
    assert (ep.source, ep.event_types) == ("team-b/billing", ("invoice.*",))
    assert Endpoint.from_json(ep.to_json()) == ep


@pytest.mark.parametrize("pattern", ["", "*", ".paid", "a b", "invoice.*.paid", "x" * 129])
def test_invalid_filters_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidSpec, match="event type filter"):
        subscriber("a", pattern)


def test_a_source_keeps_its_catalog_and_refuses_invalid_names() -> None:
    source = source_from_spec("shop/billing", {"eventTypes": ["invoice.paid", "x:y/z-1"]}, ["k"])
    assert source.event_types == ("invoice.paid", "x:y/z-1")
    assert Source.from_json(source.to_json()) == source
    with pytest.raises(InvalidSpec, match="invalid event type"):
        source_from_spec("shop/billing", {"eventTypes": ["invoice.*"]}, ["k"])
    assert valid_event_type("a" * 128) and not valid_event_type("a" * 129)


def test_a_delivery_of_a_source_event_is_named_by_event_and_endpoint() -> None:
    direct = Webhook(id="msg_1", endpoint="shop/a", headers={})
    fanned = Webhook(id="msg_1", endpoint="shop/a", headers={}, source="shop/s", shared=True)
    assert direct.delivery == "msg_1"
    assert fanned.delivery == "msg_1>shop/a"
    again = Webhook.unpack(fanned.pack())
    assert (again.source, again.shared, again.body) == ("shop/s", True, b"")
    assert b'"src"' not in direct.pack(), "a direct webhook's entry is as before"
