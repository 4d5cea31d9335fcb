"""The queue figures the scaler reads, from a real Redis (tests/unit/test_scaler.py has
its decision function and policy annotations)."""

from __future__ import annotations

import redis.asyncio as aioredis

from hookline.config import Config
from hookline.models import Webhook, new_id
from hookline.store import Store, Waiting


async def test_queue_reports_lag_and_pending_of_the_consumer_group(config: Config) -> None:
    client = aioredis.from_url(config.redis_url)
    store = Store(client, config)
    queue, figures = store.queue, store.figures
    try:
        assert await figures.group("p") == {"lag": 0, "pending": 0, "consumers": 0}
        for _ in range(5):
            await queue.enqueue("p", Webhook(new_id(), "ns/ep", {}, b"{}"))
        assert await figures.group("p") == {"lag": 5, "pending": 0, "consumers": 0}
        await queue.ensure_group("p")
        read = await queue.read("p", "c1", 2, block_ms=10)
        assert await figures.group("p") == {"lag": 3, "pending": 2, "consumers": 1}
        await queue.delivered("p", read[0].msg_id, read[0].webhook)
        assert await figures.group("p") == {"lag": 3, "pending": 1, "consumers": 1}
        backlog = await figures.backlog("p")
        assert backlog["stream"] == 4  # lag + pending: settled entries leave the stream
    finally:
        await store.aclose()
        await client.aclose()


async def test_waiting_ages_count_from_when_redis_added_the_oldest_entry(config: Config) -> None:
    """``Figures.waiting``: the age of the oldest entry, and of the oldest no dispatcher has
    read; read entries keep counting until settled (the operator exports both per pool)."""
    client = aioredis.from_url(config.redis_url)
    store = Store(client, config)
    queue, figures = store.queue, store.figures
    try:
        assert await figures.waiting("w") == Waiting(0.0, 0.0)
        for _ in range(3):
            await queue.enqueue("w", Webhook(new_id(), "ns/ep", {}, b"{}"))
        [(first, _)] = await client.xrange(queue.stream("w"), count=1)
        added = int(first.decode().partition("-")[0]) / 1000
        # No consumer group yet (no dispatcher ever ran): every entry is unread.
        assert await figures.waiting("w", now=added + 90) == Waiting(90.0, 90.0)
        await queue.ensure_group("w")
        [entry] = await queue.read("w", "c1", 1, block_ms=10)
        assert entry.msg_id == first
        later = await figures.waiting("w", now=added + 90)
        assert later.oldest == 90.0  # read, in flight: still waiting to be settled
        assert 0 < later.unread <= 90.0  # the next entry, added a moment after the first
        await queue.delivered("w", entry.msg_id, entry.webhook)
        rest = await queue.read("w", "c1", 10, block_ms=10)
        assert len(rest) == 2
        assert (await figures.waiting("w", now=added + 90)).unread == 0.0  # all read
        for entry in rest:
            await queue.delivered("w", entry.msg_id, entry.webhook)
        assert await figures.waiting("w") == Waiting(0.0, 0.0)
    finally:
        await store.aclose()
        await client.aclose()
