"""The ingest contract: what a sender sees from POST /webhooks/send."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import aiohttp

from hookline.config import Config
from hookline.models import key_hash
from hookline.signing import new_key
from tests.peers import Endpoint, RedisServer
from tests.stack import Stack


async def backlog(stack: Stack, pool: str = "default") -> int:
    return (await stack.store.figures.backlog(pool))["stream"]


async def test_missing_and_unknown_keys_get_json_errors_and_enqueue_nothing(
    stack: Stack, endpoint: Endpoint
) -> None:
    await stack.add_endpoint(endpoint.url("/a"))
    status, body = await stack.send(None)
    assert (status, body["error"]) == (401, "missing_key")
    assert "X-WH-Endpoint-Key" in body["reason"]
    status, body = await stack.send("not-a-key")
    assert (status, body["error"]) == (401, "unknown_key")
    assert await backlog(stack) == 0


async def test_oversize_body_is_refused_with_413_and_nothing_is_enqueued(
    redis_server: RedisServer, config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(replace(config, max_body_bytes=4096, inline_limit=1024)).start()
    try:
        _, key = await stack.add_endpoint(endpoint.url("/a"))
        status, body = await stack.send(key, b"x" * 4097)
        assert (status, body["error"]) == (413, "body_too_large")
        assert "4096" in body["reason"]

        # Without a Content-Length the cap is enforced while streaming.
        async def chunks() -> object:
            for _ in range(10):
                yield b"y" * 1000

        assert stack.client is not None
        async with stack.client.post(
            stack.url + "/webhooks/send", data=chunks(), headers={"X-WH-Endpoint-Key": key}
        ) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "body_too_large"
        assert await backlog(stack) == 0
        assert not any(f for _, _, f in os.walk(config.body_dir) if f), "no body file left"
        # A body exactly at the cap is fine (and goes through the body store).
        status, _ = await stack.send(key, b"z" * 4096)
        assert status == 202
    finally:
        await stack.stop()


async def test_redis_down_answers_503_with_retry_after_never_2xx(
    own_redis: RedisServer, config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(replace(config, redis_url=own_redis.url)).start(dispatchers=0)
    try:
        _, key = await stack.add_endpoint(endpoint.url("/a"))
        assert (await stack.send(key))[0] == 202
        own_redis.stop(kill=True)
        for body in (b"small", b"L" * (config.inline_limit + 10)):
            status, answer = await stack.send(key, body)
            assert status == 503, answer
            assert answer["error"] == "store_unavailable"
        assert stack.client is not None
        async with stack.client.post(
            stack.url + "/webhooks/send", data=b"x", headers={"X-WH-Endpoint-Key": key}
        ) as resp:
            assert resp.headers["Retry-After"] == "1"
        async with stack.client.get(stack.url + "/readyz") as resp:
            assert resp.status == 503
        # Nothing half-written: the large body's file was removed with the refusal.
        assert not any(f for _, _, f in os.walk(config.body_dir) if f)
    finally:
        own_redis.start()
        await stack.stop()


async def test_idempotency_key_returns_the_first_id_and_delivers_once(
    stack: Stack, endpoint: Endpoint
) -> None:
    _, key = await stack.add_endpoint(endpoint.url("/a"))
    first = await stack.send(key, b"one", **{"Idempotency-Key": "order-42"})
    again = await stack.send(key, b"one", **{"Idempotency-Key": "order-42"})
    other = await stack.send(key, b"two", **{"Idempotency-Key": "order-43"})
    assert first[0] == again[0] == other[0] == 202
    assert first[1]["id"] == again[1]["id"] != other[1]["id"]
    await endpoint.wait_for(lambda: len(endpoint.ids()) == 2, 5, "two deliveries")
    await asyncio.sleep(0.3)  # a second delivery of the repeated key would have come by now
    assert endpoint.ids() == {first[1]["id"]: 1, other[1]["id"]: 1}


async def test_only_allowed_headers_are_forwarded(stack: Stack, endpoint: Endpoint) -> None:
    _, key = await stack.add_endpoint(endpoint.url("/a"), forwardHeaders=["X-Event-Type"])
    status, body = await stack.send(
        key,
        b"{}",
        **{
            "X-Event-Type": "order.paid",
            "X-Other": "no",
            "Authorization": "Bearer s3cret",
            "Cookie": "a=b",
        },
    )
    assert status == 202
    await endpoint.wait_for(lambda: body["id"] in endpoint.ids(), 5, "the delivery")
    got = endpoint.received[0].headers
    assert got["x-event-type"] == "order.paid"
    assert "x-other" not in got and "cookie" not in got and "x-wh-endpoint-key" not in got
    assert "authorization" not in got


async def test_large_body_goes_through_the_body_store_byte_identical(
    stack: Stack, endpoint: Endpoint
) -> None:
    _, key = await stack.add_endpoint(endpoint.url("/a"))
    payload = os.urandom(stack.config.inline_limit * 3 + 7)
    status, body = await stack.send(key, payload)
    assert status == 202
    await endpoint.wait_for(lambda: body["id"] in endpoint.ids(), 5, "the delivery")
    assert endpoint.received[0].body == payload

    async def gone() -> bool:
        return not any(f for _, _, f in os.walk(stack.config.body_dir) if f)

    from tests.peers import eventually

    await eventually(gone, 5, "the body file to be deleted after delivery")


async def test_paused_endpoint_is_refused_with_a_reason(stack: Stack, endpoint: Endpoint) -> None:
    _, key = await stack.add_endpoint(endpoint.url("/a"), paused=True)
    status, body = await stack.send(key)
    assert (status, body["error"]) == (409, "endpoint_paused")
    assert await backlog(stack) == 0


async def test_slow_sender_hits_the_request_deadline(config: Config, endpoint: Endpoint) -> None:
    stack = await Stack(replace(config, request_timeout=0.5)).start(dispatchers=0)
    try:
        _, key = await stack.add_endpoint(endpoint.url("/a"))

        async def trickle() -> object:
            for _ in range(20):
                yield b"x"
                await asyncio.sleep(0.1)

        assert stack.client is not None
        try:
            async with stack.client.post(
                stack.url + "/webhooks/send", data=trickle(), headers={"X-WH-Endpoint-Key": key}
            ) as resp:
                assert resp.status == 408
                assert (await resp.json())["error"] == "request_timeout"
        except aiohttp.ClientError:
            pass  # the server may close the connection while the client still writes
        assert await backlog(stack) == 0
    finally:
        await stack.stop()


async def test_probes_and_metrics(stack: Stack, endpoint: Endpoint) -> None:
    _, key = await stack.add_endpoint(endpoint.url("/a"))
    await stack.send(key)
    assert stack.client is not None
    async with stack.client.get(stack.url + "/healthz") as resp:
        assert resp.status == 200
    async with stack.client.get(stack.url + "/readyz") as resp:
        assert resp.status == 200
    async with stack.client.get(stack.url + "/metrics") as resp:
        text = await resp.text()
    assert 'hookline_ingested_total{storage="inline"} 1.0' in text


async def test_a_rotated_or_removed_key_stops_working_at_once(
    stack: Stack, endpoint: Endpoint
) -> None:
    ep, key = await stack.add_endpoint(endpoint.url("/a"))
    assert (await stack.send(key))[0] == 202  # the receiver now remembers this key
    fresh = new_key()
    rotated = replace(ep, key_hashes=(key_hash(fresh),), generation=ep.generation + 1)
    await stack.registry.put(rotated)
    await stack.propagated(lambda c: c.get(ep.id) == rotated, "the rotated key")
    status, body = await stack.send(key)
    assert (status, body["error"]) == (401, "unknown_key")
    assert (await stack.send(fresh))[0] == 202
    await stack.registry.remove(ep.id)
    await stack.propagated(lambda c: c.get(ep.id) is None, "the removal")
    status, body = await stack.send(fresh)
    assert (status, body["error"]) == (401, "unknown_key")
