"""Delivery policy at work: signatures, isolation, rate limits, circuit breaking,
auto-disable (tests/unit/test_policy.py has the retry policy's pure functions)."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import replace

import pytest
import standardwebhooks
from standardwebhooks.webhooks import hmac_data

from hookline.config import Config
from hookline.models import SigningSecret, endpoint_from_spec
from hookline.signing import new_key, new_secret
from tests.peers import Endpoint, eventually, fail_then_ok, slow, status
from tests.stack import Stack, queued


async def test_deliveries_verify_with_the_standardwebhooks_package(
    stack: Stack, endpoint: Endpoint
) -> None:
    ep, key = await stack.add_endpoint(endpoint.url("/signed"))
    _, body = await stack.send(key, b'{"type":"order.paid","amount":42}')
    await endpoint.wait_for(lambda: body["id"] in endpoint.ids(), 5, "the delivery")
    got = endpoint.received[0]
    assert standardwebhooks.Webhook(stack.secrets[ep.id]).verify(got.body, got.headers) == {
        "type": "order.paid",
        "amount": 42,
    }
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(got.body, got.headers)
    assert int(got.headers["webhook-timestamp"]) == pytest.approx(time.time(), abs=30)


async def test_during_rotation_both_secrets_sign_and_an_expired_one_does_not(
    stack: Stack, endpoint: Endpoint
) -> None:
    old, new, expired = new_secret(), new_secret(), new_secret()
    key = new_key()
    now = time.time()
    record = endpoint_from_spec(
        "test/rotating",
        {"url": endpoint.url("/rot")},
        [key],
        [SigningSecret(new), SigningSecret(old, now + 3600), SigningSecret(expired, now - 1)],
        stack.config,
    )
    await stack.registry.put(record)
    await stack.propagated(lambda c: c.get(record.id) == record, "the rotating endpoint")
    _, body = await stack.send(key, b'{"n":1}')
    await endpoint.wait_for(lambda: body["id"] in endpoint.ids(), 5, "the delivery")
    got = endpoint.received[0]
    assert len(got.headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(got.body, got.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(expired).verify(got.body, got.headers)


async def test_bodies_that_are_not_utf8_are_signed_over_their_bytes(
    stack: Stack, endpoint: Endpoint
) -> None:
    ep, key = await stack.add_endpoint(endpoint.url("/bin"))
    payload = b"\xff\xfe\x00binary\x80" + os.urandom(64)
    _, body = await stack.send(key, payload, **{"Content-Type": "application/octet-stream"})
    await endpoint.wait_for(lambda: body["id"] in endpoint.ids(), 5, "the delivery")
    got = endpoint.received[0]
    assert got.body == payload
    # The Python package's verify() decodes the body as UTF-8 first, so it cannot take
    # these; its HMAC primitive over the raw bytes is what the specification defines.
    secret = base64.b64decode(stack.secrets[ep.id].removeprefix("whsec_"))
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode() + payload
    expected = "v1," + base64.b64encode(hmac_data(secret, signed)).decode()
    assert expected in got.headers["webhook-signature"].split()


async def test_retry_after_is_bounded_by_the_configured_maximum(
    config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(replace(config, retry_after_max=0.5)).start()
    try:
        _, key = await stack.add_endpoint(
            endpoint.on("/busy", status(503, {"Retry-After": "86400"}))
        )
        await stack.send(key)
        await endpoint.wait_for(lambda: len(endpoint.received) >= 2, 5, "a retry within 0.5 s")
    finally:
        await stack.stop()


async def test_max_in_flight_holds_across_dispatchers(config: Config, endpoint: Endpoint) -> None:
    stack = await Stack(config).start(dispatchers=2)
    try:
        _, key = await stack.add_endpoint(endpoint.on("/one", slow(0.2)), maxInFlight=2)
        ids = {(await stack.send(key))[1]["id"] for _ in range(12)}
        await endpoint.wait_for(lambda: ids <= set(endpoint.ids()), 30, "12 deliveries")
        assert endpoint.max_concurrent == 2
        assert all(n == 1 for n in endpoint.ids().values()), "a deferral counted as an attempt"
    finally:
        await stack.stop()


async def test_a_burst_beyond_the_local_cap_of_a_fast_endpoint_waits_for_slots(
    config: Config, endpoint: Endpoint
) -> None:
    """A fast endpoint at this process's cap: the deliveries beyond it wait for a slot
    (a fraction of a second at most) instead of going back on the schedule."""
    stack = await Stack(replace(config, endpoint_concurrency=4)).start()
    try:
        ep, key = await stack.add_endpoint(endpoint.on("/burst", slow(0.02)))
        await stack.send(key)  # its first answer, once recorded, shows it to be fast

        async def recorded() -> bool:
            return await stack.redis.hget(stack.store.keys.stats(ep.id), "delivered") == b"1"

        await eventually(recorded, 5, "the first delivery to be recorded")
        burst = [queued(ep.id) for _ in range(20)]
        await asyncio.gather(*(stack.queue.enqueue(config.pool, w) for w in burst))
        ids = {w.id for w in burst}
        await endpoint.wait_for(lambda: ids <= set(endpoint.ids()), 30, "the burst")
        assert endpoint.max_concurrent == 4
        assert all(n == 1 for n in endpoint.ids().values())
        deferred = stack.metrics.registry.get_sample_value(
            "hookline_deliveries_total", {"outcome": "deferred"}
        )
        # Waiting is bounded (FAST_ENDPOINT): a starved machine may put off a few.
        assert (deferred or 0) < 5, (
            f"{deferred} deferrals in a burst of 20: they should have waited"
        )
    finally:
        await stack.stop()


async def test_rate_limit_holds_across_dispatchers(config: Config, endpoint: Endpoint) -> None:
    stack = await Stack(config).start(dispatchers=2)
    try:
        _, key = await stack.add_endpoint(
            endpoint.url("/rated"), rateLimit={"perSecond": 10, "burst": 2}
        )
        ids = {(await stack.send(key))[1]["id"] for _ in range(25)}
        await endpoint.wait_for(lambda: ids <= set(endpoint.ids()), 30, "25 deliveries")
        times = sorted(r.at for r in endpoint.received)
        # 25 requests at 10/s with a burst of 2 take at least 2.3 s, and no second holds
        # more than rate + burst.
        assert times[-1] - times[0] >= 2.0
        for t in times:
            assert sum(1 for u in times if t <= u < t + 1.0) <= 12
    finally:
        await stack.stop()


async def test_circuit_opens_after_consecutive_failures_and_a_probe_closes_it(
    config: Config, endpoint: Endpoint
) -> None:
    cfg = replace(config, circuit_threshold=3, circuit_cooldown=1.5, retry_base=0.05)
    stack = await Stack(cfg).start()
    healthy = False

    async def answer(request: object, nth: int) -> object:
        return await (status(200) if healthy else status(500))(request, nth)  # type: ignore[arg-type]

    try:
        ep, key = await stack.add_endpoint(endpoint.on("/cb", answer), retry={"attempts": 50})  # type: ignore[arg-type]
        ids = {(await stack.send(key))[1]["id"] for _ in range(5)}
        await endpoint.wait_for(lambda: len(endpoint.received) >= 3, 5, "three failures")
        await asyncio.sleep(0.5)
        # Open: no attempt during the cool-down, although retries come due every 0.05 s.
        assert len(endpoint.received) <= 5
        opened = len(endpoint.received)
        assert stack.metrics.circuit_open.labels(ep.id)._value.get() == 1
        healthy = True
        await endpoint.wait_for(
            lambda: (
                ids <= {r.headers["webhook-id"] for r in endpoint.received if r.at > 0}
                and all(
                    any(r.headers["webhook-id"] == i for r in endpoint.received[opened:])
                    for i in ids
                )
            ),
            15,
            "delivery after the circuit closed",
        )
        stats = await stack.store.figures.stats(ep.id)
        assert "streak" not in stats and "open_until" not in stats
        assert stack.metrics.circuit_open.labels(ep.id)._value.get() == 0
    finally:
        await stack.stop()


async def test_an_endpoint_failing_continuously_is_disabled_with_its_reason(
    config: Config, endpoint: Endpoint
) -> None:
    cfg = replace(config, disable_after=0.5, circuit_threshold=1000)
    stack = await Stack(cfg).start()
    try:
        ep, key = await stack.add_endpoint(
            endpoint.on("/down", status(502)), retry={"attempts": 1000}
        )
        await stack.send(key)

        async def disabled() -> bool:
            return ep.id in await stack.registry.disabled()

        await eventually(disabled, 10, "the endpoint to be disabled")
        reason = (await stack.registry.disabled())[ep.id]["reason"]
        assert reason.startswith("failing continuously since")

        async def dead() -> bool:
            return len(await stack.store.dead_letters.find()) == 1

        await eventually(dead, 10, "its pending webhook in the dead letter")
        (letter,) = await stack.store.dead_letters.find()
        assert "disabled" in letter.reason
    finally:
        await stack.stop()


async def test_attempt_log_and_figures(stack: Stack, endpoint: Endpoint) -> None:
    ep, key = await stack.add_endpoint(endpoint.on("/log", fail_then_ok(1, 503)))
    _, body = await stack.send(key)
    await endpoint.wait_for(lambda: endpoint.ids()[body["id"]] == 2, 5, "two attempts")

    async def logged() -> bool:
        return len(await stack.store.figures.attempts(ep.id)) == 2

    await eventually(logged, 5, "two attempts in the log")
    newest, oldest = await stack.store.figures.attempts(ep.id)
    assert newest["status"] == 200 and oldest["status"] == 503
    assert "503" in oldest["reason"] and oldest["latency"] >= 0
    stats = await stack.store.figures.stats(ep.id)
    assert stats["delivered"] == "1" and stats["failed"] == "1"
    assert float(stats["last_success"]) > 0 and "503" in stats["last_failure"]
