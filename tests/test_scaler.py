"""The queue figures the scaler reads, from a real Redis (tests/unit/test_scaler.py has
its decision function and policy annotations)."""

from __future__ import annotations

import redis.asyncio as aioredis

from hookline.config import Config
from hookline.models import Webhook, new_id
from hookline.store import Store


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
        await queue.delivered("p", *read[0])
        assert await figures.group("p") == {"lag": 3, "pending": 1, "consumers": 1}
        backlog = await figures.backlog("p")
        assert backlog["stream"] == 4  # lag + pending: settled entries leave the stream
    finally:
        await store.aclose()
        await client.aclose()
