"""A 503 whose enqueue Redis ran after all: the receiver gave up waiting (the wire's
socket timeout) and deleted the body it had stored, but the command was already on its
way, and Redis ran it once it was free again. The deliveries then name a body that is
gone; a retry with the same Idempotency-Key is answered 202 with that event's id, and
every delivery of it ends in the dead letter ("body missing").

The receiver therefore never deletes a stored body after a failure that may have reached
Redis (a timeout, or a connection lost with the command written): it leaves it to the
body reaper, which removes it after the grace when no entry names it.
Real Redis (kept busy by a script of the test's own), real receiver.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from hookline.config import Config
from tests.peers import Endpoint, RedisServer, eventually, ok
from tests.stack import Stack, stack_config

# Keeps Redis busy for ARGV[1] µs: commands from other clients wait, unanswered.
BUSY = """
local t0 = redis.call('TIME')
local start = t0[1] * 1000000 + t0[2]
while true do
  local t = redis.call('TIME')
  if t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) then break end
end
return 1
"""
BUSY_US = 8_000_000  # longer than the wire waits for a reply (the socket timeout, 3-6 s)


@pytest.fixture
async def busy_redis(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    # Past this, Redis would answer other clients BUSY during the script: a clear refusal.
    await client.config_set("busy-reply-threshold", 20_000)
    yield client
    await client.aclose()


@pytest.mark.parametrize("key_of", ["endpoint", "source"])
async def test_a_503_that_redis_ran_late_keeps_the_body_its_deliveries_need(
    own_redis: RedisServer,
    busy_redis: aioredis.Redis,
    config: Config,
    endpoint: Endpoint,
    key_of: str,
) -> None:
    config = stack_config(own_redis.url, "late", config.body_dir)
    stack = await Stack(config).start(dispatchers=0)
    try:
        headers = {"Idempotency-Key": "once"}
        if key_of == "source":
            source, key = await stack.add_source("late")
            for name in ("a", "b"):
                await stack.add_endpoint(endpoint.on(f"/{name}", ok), name, source="late")
            await stack.propagated(lambda c: len(c.subscribed(source.id)) == 2, "subscribers")
            headers["X-WH-Event-Type"] = "a.b"
        else:
            _, key = await stack.add_endpoint(endpoint.on("/a", ok), "a")
        # One event first, so that Redis knows the script: the late command is no NOSCRIPT.
        assert (await stack.send(key, b"{}", **{**headers, "Idempotency-Key": "warm"}))[0] == 202
        await stack.redis.delete(stack.queue.stream("default"))
        body = os.urandom(config.inline_limit * 2)  # stored in the body store first

        busy = asyncio.create_task(busy_redis.eval(BUSY, 0, BUSY_US))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        status, answer = await stack.send(key, body, **headers)
        assert (status, answer["error"]) == (503, "store_unavailable"), answer
        await busy
        assert await stack.redis.xlen(stack.queue.stream("default")) > 0, "Redis ran it late"

        status, answer = await stack.send(key, body, **headers)  # the sender's retry
        assert status == 202, answer
        await stack.start_dispatcher()
        paths = ["/a", "/b"] if key_of == "source" else ["/a"]

        async def settled() -> bool:
            dead = await stack.store.dead_letters.find()
            return len(endpoint.received) + len(dead) >= len(paths)

        await eventually(settled, 15, "the event's deliveries to settle")
        dead = await stack.store.dead_letters.find()
        assert dead == [], [d.reason for d in dead]
        assert sorted(r.path for r in endpoint.received) == paths
        assert all(r.body == body for r in endpoint.received)
    finally:
        await stack.stop()
