"""Registry records and queue entries (hookline.models): an endpoint built from its spec,
and what survives the trip through Redis."""

from __future__ import annotations

from typing import Any

import pytest

from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.models import (
    Endpoint,
    RateLimit,
    RetryPolicy,
    SigningSecret,
    Webhook,
    endpoint_from_spec,
    key_hash,
)
from hookline.store.queue import UNREADABLE, Entry

CONFIG = Config(retry_attempts=7, retry_base=1.5, delivery_timeout=4.0)


def build(spec: dict[str, Any]) -> Endpoint:
    return endpoint_from_spec("shop/orders", spec, ["k-123"], [SigningSecret("whsec_x")], CONFIG)


def test_a_spec_with_only_a_url_takes_the_configured_defaults() -> None:
    ep = build({"url": "https://hooks.example.com/in"})
    assert ep.retry == RetryPolicy(7, 1.5, CONFIG.retry_max_backoff, CONFIG.retry_max_age)
    assert ep.timeout_seconds == 4.0
    assert (ep.pool, ep.paused, ep.rate_limit, ep.max_in_flight) == ("default", False, None, None)


def test_a_spec_sets_retries_limits_pool_and_forwarded_headers() -> None:
    ep = build(
        {
            "url": "http://hooks.example.com:8080/in",
            "retry": {"attempts": 3, "maxAgeSeconds": 600},
            "rateLimit": {"perSecond": 5},
            "maxInFlight": 2,
            "forwardHeaders": ["X-Request-Id", "Traceparent"],
            "pool": "bulk",
            "paused": True,
        }
    )
    assert (ep.retry.attempts, ep.retry.max_age_seconds, ep.retry.base_seconds) == (3, 600, 1.5)
    assert ep.rate_limit == RateLimit(5.0, 5)  # the burst defaults to one second's worth
    assert ep.max_in_flight == 2
    assert ep.forward_headers == ("x-request-id", "traceparent")
    assert (ep.pool, ep.paused) == ("bulk", True)


def test_ingest_keys_are_kept_only_as_their_hashes() -> None:
    ep = build({"url": "https://hooks.example.com/in"})
    assert ep.key_hashes == (key_hash("k-123"),)
    assert "k-123" not in ep.to_json()


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({}, "spec.url is required"),
        ({"url": "/relative"}, "absolute http"),
        ({"url": "ftp://files.example.com/"}, "absolute http"),
        ({"url": "https://"}, "with a host"),
        ({"url": "https://h.example.com", "retry": {"attempts": "many"}}, "invalid endpoint spec"),
        ({"url": "https://h.example.com", "rateLimit": {"burst": 3}}, "invalid endpoint spec"),
    ],
)
def test_an_invalid_spec_is_refused_with_the_reason(spec: dict[str, Any], complaint: str) -> None:
    with pytest.raises(InvalidSpec, match=complaint):
        build(spec)


def test_a_record_reads_back_from_its_json_as_it_was_written() -> None:
    ep = endpoint_from_spec(
        "shop/orders",
        {"url": "https://hooks.example.com/in", "rateLimit": {"perSecond": 2, "burst": 4}},
        ["k-1", "k-2"],
        [SigningSecret("whsec_new"), SigningSecret("whsec_old", 1_700_000_000.0)],
        CONFIG,
        generation=9,
    )
    assert Endpoint.from_json(ep.to_json()) == ep
    assert Endpoint.from_json(ep.to_json().encode()) == ep


def test_a_queue_entry_carries_the_body_byte_for_byte() -> None:
    body = b'{"a":1}\n\x00\xff\n' + bytes(range(256))  # newlines and bytes that are not UTF-8
    hook = Webhook(
        "msg_1",
        "shop/orders",
        {"content-type": "application/octet-stream"},
        body,
        size=len(body),
        attempt=2,
        created_ms=1_700_000_000_000,
        trace={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    assert Webhook.unpack(hook.pack()) == hook
    stored = Webhook("msg_2", "shop/orders", {}, body_ref="bodies/msg_2", size=10_000_000)
    assert Webhook.unpack(stored.pack()) == stored


def test_the_body_reference_reads_from_the_entry_without_its_body() -> None:
    stored = Webhook("msg_2", "shop/orders", {"ref": "x"}, body_ref="2026/12/02/msg_2", size=9)
    assert Webhook.body_ref_of(stored.pack()) == "2026/12/02/msg_2"
    # A header named "ref", and a body that looks like a reference, are not one.
    inline = Webhook("msg_3", "shop/orders", {"ref": "a/b"}, b'\n{"ref":"2026/12/02/msg_9"}')
    assert Webhook.body_ref_of(inline.pack()) is None
    assert Webhook.body_ref_of(b'{"ref":"2026/12/02/msg_4", broken') is None
    assert Webhook.body_ref_of(b"") is None


def test_the_endpoint_and_age_read_from_the_entry_without_unpacking_it() -> None:
    hook = Webhook("msg_5", "shop/orders", {"x": '","ep":"evil/one","t":1,'}, b"{}", created_ms=17)
    assert Webhook.route_of(hook.pack()) == ("shop/orders", 17)
    # Packed in the order of earlier versions (the time after the headers): unpacked then.
    older = b'{"id":"msg_6","ep":"shop/orders","h":{},"ref":null,"sz":2,"n":0,"t":18,"tc":{}}\n{}'
    assert Webhook.route_of(older) is None
    assert Entry(b"1-0", older).route() == ("shop/orders", 18)
    assert Webhook.route_of(b"not an entry") is None
    assert Entry(b"1-1", b"not an entry").route() == (UNREADABLE, 0)  # to the dead letter


def test_a_rotated_out_secret_signs_until_its_time_and_the_current_one_always() -> None:
    assert SigningSecret("whsec_new").valid(now=1e12)
    old = SigningSecret("whsec_old", not_after=100.0)
    assert old.valid(99.9) and not old.valid(100.0)
