"""The endpoint registry and the caches that receivers and dispatchers read."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
import redis.asyncio as aioredis

from hookline.config import Config
from hookline.models import key_hash
from hookline.store import RegistryCache
from tests.peers import Endpoint, RedisServer, eventually
from tests.stack import Stack


async def test_keys_are_stored_hashed_never_in_clear(stack: Stack, endpoint: Endpoint) -> None:
    _, key = await stack.add_endpoint(endpoint.url("/a"))
    dump = b"".join(
        [k + v for k, v in (await stack.redis.hgetall(stack.store.keys.key_index)).items()]
        + list((await stack.redis.hgetall(stack.store.keys.endpoints)).values())
    )
    assert key.encode() not in dump
    assert key_hash(key).encode() in dump


async def test_a_changed_key_takes_effect_within_a_second(stack: Stack, endpoint: Endpoint) -> None:
    ep, old_key = await stack.add_endpoint(endpoint.url("/a"), name="rekey")
    assert (await stack.send(old_key))[0] == 202
    new_key = "whk_rotated-key-value"
    changed = replace(ep, key_hashes=(key_hash(new_key),))
    start = time.monotonic()
    await stack.registry.put(changed)

    async def switched() -> bool:
        return (await stack.send(new_key))[0] == 202 and (await stack.send(old_key))[0] == 401

    await eventually(switched, 1.0, "the new key to work and the old one to stop")
    assert time.monotonic() - start < 1.0


async def test_the_periodic_reload_repairs_a_missed_notification(
    config: Config, endpoint: Endpoint, stack: Stack
) -> None:
    ep, _ = await stack.add_endpoint(endpoint.url("/a"), name="quiet")
    cache = RegistryCache(stack.store.registry, refresh_interval=0.3)
    await cache.start()
    try:
        assert cache.get(ep.id) == ep
        # A write that announces nothing (as if the notification were lost).
        moved = replace(ep, url=endpoint.url("/b"))
        await stack.redis.hset(stack.store.keys.endpoints, ep.id, moved.to_json())

        async def reloaded() -> bool:
            return cache.get(ep.id) == moved

        await eventually(reloaded, 3, "the full reload to pick up the change")
    finally:
        await cache.stop()


async def test_removing_an_endpoint_stops_ingest_and_a_missing_one_counts_as_removed(
    stack: Stack, endpoint: Endpoint
) -> None:
    ep, key = await stack.add_endpoint(endpoint.url("/a"), name="gone")
    assert await stack.registry.remove(ep.id) is True
    await stack.propagated(lambda c: c.get(ep.id) is None, "the removal")
    assert (await stack.send(key))[0] == 401
    assert await stack.registry.remove(ep.id) is False


# -- the cache survives its connections: killed, or Redis gone for a while

FOLLOWS_WITHIN = 5.0  # seconds for a component to be ready and see a change again


async def ready(stack: Stack) -> bool:
    assert stack.client is not None
    try:
        async with stack.client.get(stack.url + "/readyz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def follows_the_registry(stack: Stack, endpoint: Endpoint, name: str) -> None:
    """The receiver is ready, and a new endpoint is known to the receiver and dispatcher
    within the bound: its webhook is taken and delivered."""
    await eventually(lambda: ready(stack), FOLLOWS_WITHIN, f"/readyz 200 ({name})")
    ep, key = await stack.add_endpoint(endpoint.url(f"/{name}"), name=name, within=FOLLOWS_WITHIN)
    status, body = await stack.send(key)
    assert status == 202, body
    await endpoint.wait_for(lambda: body["id"] in endpoint.ids(), 5, f"delivery to {ep.id}")


async def client_kill(admin: aioredis.Redis, kind: str) -> int:
    """Close every connection of ``kind`` (pubsub, normal) but the admin's own."""
    return int(await admin.execute_command("CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes"))


@pytest.fixture
async def admin(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(own_redis.url)
    yield client
    await client.aclose()


async def test_the_cache_recovers_from_connections_killed_at_start_up_and_while_serving(
    own_redis: RedisServer, admin: aioredis.Redis, config: Config, endpoint: Endpoint
) -> None:
    rng = random.Random(16)
    killing = asyncio.Event()

    async def kill_repeatedly() -> None:
        while not killing.is_set():
            await client_kill(admin, rng.choice(["pubsub", "normal"]))
            await asyncio.sleep(rng.uniform(0.0, 0.1))

    # Start-up: the receiver and the dispatcher load the registry while their
    # connections are being killed.
    killer = asyncio.create_task(kill_repeatedly())
    stack = Stack(replace(config, redis_url=own_redis.url))
    try:
        await stack.start()
        await asyncio.sleep(1.5)  # the killing goes on for a while after the start
        killing.set()
        await killer
        await follows_the_registry(stack, endpoint, "after-start")
        # Serving: the subscription, then the connections that read, then both at once.
        assert await client_kill(admin, "pubsub") >= 2  # the receiver's and the dispatcher's
        await follows_the_registry(stack, endpoint, "pubsub-killed")
        assert await client_kill(admin, "normal") >= 1
        await follows_the_registry(stack, endpoint, "normal-killed")
        for _ in range(5):
            await client_kill(admin, "pubsub")
            await client_kill(admin, "normal")
            await asyncio.sleep(0.2)
        await follows_the_registry(stack, endpoint, "both-killed")
    finally:
        killing.set()
        await killer
        await stack.stop()


async def test_the_cache_follows_again_after_redis_was_down_for_seconds(
    own_redis: RedisServer, config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(replace(config, redis_url=own_redis.url)).start()
    try:
        await follows_the_registry(stack, endpoint, "before")
        own_redis.stop(kill=True)
        await asyncio.sleep(3.0)  # an outage of a few seconds: nothing to wait for
        own_redis.start()
        await follows_the_registry(stack, endpoint, "after")
    finally:
        await stack.stop()


async def test_an_unreadable_record_announced_does_not_stop_the_cache_following(
    stack: Stack, endpoint: Endpoint
) -> None:
    # A record no version of hookline can read (a bad write, a newer format) is announced.
    await stack.redis.hset(stack.store.keys.endpoints, "test/broken", b"{not json")
    await stack.redis.publish(stack.store.keys.channel, "test/broken")
    await follows_the_registry(stack, endpoint, "after-broken")
