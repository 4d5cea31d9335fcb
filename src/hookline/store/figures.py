"""What can be read about the pipeline: per-endpoint and per-source figures, endpoints'
health, pools' backlogs.

The enqueue and settle scripts of :mod:`hookline.store.queue` write them; ``hookline
endpoints``, the operator's status and scaler, the dispatcher's gates and the tests read
them here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from hookline.store.connection import Connection, text
from hookline.store.keys import GROUP
from hookline.store.queue import now_ms


@dataclass(frozen=True)
class Waiting:
    """How long entries have waited in a pool's stream, in seconds (0: none waits).

    ``oldest`` is the oldest entry still in the stream, read or not: settled entries
    leave the stream, so it is the oldest webhook no dispatcher has finished with.
    ``unread`` is the oldest entry the pool's consumer group has not handed to any
    dispatcher yet (every entry when no dispatcher ever created the group). Stream ids
    are the time Redis added the entry (a retry is added again when it falls due)."""

    oldest: float
    unread: float


class Figures:
    def __init__(self, conn: Connection, attempt_log: int = 50) -> None:
        self.conn = conn
        self.keys = conn.keys
        self.attempt_log = attempt_log

    async def stats(self, endpoint_id: str) -> dict[str, str]:
        """The endpoint's counters, last outcomes and health, as stored."""
        with self.conn.errors("figures"):
            raw = await self.conn.redis.hgetall(self.keys.stats(endpoint_id))  # type: ignore[misc]
        return {text(k): text(v) for k, v in raw.items()}

    SOURCE_FIGURES = ("events", "unmatched", "deliveries", "delivered", "failed", "dead")

    async def source_stats(self, source_id: str) -> dict[str, int]:
        """A source's counters (:data:`SOURCE_FIGURES`; 0 for those never counted): events
        accepted, those no endpoint took (``unmatched``), deliveries queued for them, and
        their outcomes — delivered, failed attempts, dead-lettered."""
        with self.conn.errors("figures"):
            raw = await self.conn.redis.hgetall(self.keys.source_stats(source_id))  # type: ignore[misc]
        stored = {text(k): int(v) for k, v in raw.items()}
        return {name: stored.get(name, 0) for name in self.SOURCE_FIGURES}

    async def health(self, endpoint_ids: list[str]) -> dict[str, tuple[int, float]]:
        """(failure streak, circuit open until) of each endpoint, for dispatchers whose
        own view may be stale."""
        with self.conn.errors("figures"):
            async with self.conn.redis.pipeline(transaction=False) as pipe:
                for ep in endpoint_ids:
                    pipe.hmget(self.keys.stats(ep), ["streak", "open_until"])
                rows = await pipe.execute()
        return {
            ep: (int(streak or 0), int(until or 0) / 1000)
            for ep, (streak, until) in zip(endpoint_ids, rows, strict=True)
        }

    async def attempts(self, endpoint_id: str, count: int | None = None) -> list[dict[str, Any]]:
        """The endpoint's latest attempts, newest first."""
        key = self.keys.attempts(endpoint_id)
        with self.conn.errors("figures"):
            raw = await self.conn.redis.lrange(key, 0, (count or self.attempt_log) - 1)  # type: ignore[misc]
        return [json.loads(r) for r in raw]

    async def backlog(self, pool: str) -> dict[str, int]:
        """Entries waiting in the stream (unread or in flight) and retries due or scheduled."""
        zkey = self.keys.retry(pool)
        with self.conn.errors("figures"):
            async with self.conn.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(self.keys.stream(pool))
                pipe.zcount(zkey, "-inf", now_ms())
                pipe.zcard(zkey)
                stream_len, due, scheduled = await pipe.execute()
        return {"stream": stream_len, "retry_due": due, "retry_scheduled": scheduled}

    async def waiting(self, pool: str, now: float | None = None) -> Waiting:
        """The ages of the oldest and the oldest unread entry of the pool's stream."""
        stream = self.keys.stream(pool)
        redis = self.conn.redis
        at = time.time() if now is None else now
        with self.conn.errors("figures"):
            first = await redis.xrange(stream, count=1)
            if not first:
                return Waiting(0.0, 0.0)
            try:
                groups = await redis.xinfo_groups(stream)
            except ResponseError as exc:  # the stream went away in between
                if "no such key" not in str(exc).lower():
                    raise
                return Waiting(0.0, 0.0)
            read = next(
                (text(g["last-delivered-id"]) for g in groups if text(g["name"]) == GROUP), "0-0"
            )
            unread = await redis.xrange(stream, min=f"({read}", count=1)

        def age(entries: list[Any]) -> float:
            if not entries:
                return 0.0
            added_ms = int(text(entries[0][0]).partition("-")[0])
            return max(0.0, at - added_ms / 1000)

        return Waiting(age(first), age(unread))

    async def group(self, pool: str) -> dict[str, int | None]:
        """The dispatchers' consumer group as XINFO GROUPS reports it: ``lag`` (entries not
        yet read; None when Redis cannot tell), ``pending`` (read, not yet settled) and
        ``consumers``. A pool whose group does not exist yet reads as all lag."""
        stream = self.keys.stream(pool)
        redis = self.conn.redis
        with self.conn.errors("figures"):
            async with redis.pipeline(transaction=False) as pipe:
                pipe.exists(stream)
                pipe.xlen(stream)
                exists, length = await pipe.execute()
            try:
                groups = await redis.xinfo_groups(stream) if exists else []
            except Exception as exc:  # the stream went away in between
                if "no such key" not in str(exc).lower():
                    raise
                return {"lag": 0, "pending": 0, "consumers": 0}
        for g in groups:
            if text(g["name"]) == GROUP:
                lag = g.get("lag")
                return {
                    "lag": None if lag is None else int(lag),
                    "pending": int(g["pending"]),
                    "consumers": int(g["consumers"]),
                }
        return {"lag": int(length), "pending": 0, "consumers": 0}
