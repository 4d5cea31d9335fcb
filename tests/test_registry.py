"""The endpoint registry and the caches that receivers and dispatchers read."""

from __future__ import annotations

import time
from dataclasses import replace

from hookline.config import Config
from hookline.models import key_hash
from hookline.store import RegistryCache
from tests.peers import Endpoint, eventually
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
