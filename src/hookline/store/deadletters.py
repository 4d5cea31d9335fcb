"""The dead letter: webhooks that will not be delivered, with their reason.

Dispatchers put entries here as they settle them (:meth:`hookline.store.queue.Queue.dead`);
``hookline dlq`` lists, shows and replays them, and the dispatcher's retention job
expires them (returning the body references it must delete).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

from hookline.errors import InvalidSpec, StoreUnavailable
from hookline.models import Webhook
from hookline.store import scripts
from hookline.store.connection import Connection, text
from hookline.store.queue import now_ms, unpack

_STREAM_ID = re.compile(r"\d+(-\d+)?")
_BATCH = 500
_REPLAY_WAIT = 30.0  # longer than a reaper pass over all but very large backlogs


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str  # the dead-letter stream id
    webhook: Webhook
    reason: str
    pool: str
    at: float  # Unix seconds


class DeadLetters:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.key = conn.keys.dead

    async def find(
        self, since: float | None = None, endpoint: str | None = None, count: int = 100
    ) -> list[DeadLetter]:
        """The oldest ``count`` dead letters (of one endpoint, or since a time)."""
        start = f"{int(since * 1000)}-0" if since else "-"
        out: list[DeadLetter] = []
        with self.conn.errors("dead letters"):
            while len(out) < count:
                batch = await self.conn.redis.xrange(self.key, start, "+", count=_BATCH)
                for mid, fields in batch:
                    letter = _dead_letter(mid, fields)
                    if endpoint is None or letter.webhook.endpoint == endpoint:
                        out.append(letter)
                if len(batch) < _BATCH:
                    break
                start = "(" + text(batch[-1][0])
        return out[:count]

    async def get(self, ident: str) -> DeadLetter | None:
        """A dead letter by its dead-letter id or by its webhook id."""
        if ident.startswith("msg_"):
            for letter in await self.find(count=1_000_000):
                if letter.webhook.id == ident:
                    return letter
            return None
        if not _STREAM_ID.fullmatch(ident):
            raise InvalidSpec(
                f"{ident!r} is neither a dead-letter id (like 1764650000000-0) "
                "nor a webhook id (msg_…)"
            )
        with self.conn.errors("dead letters"):
            batch = await self.conn.redis.xrange(self.key, ident, ident)
        return _dead_letter(*batch[0]) if batch else None

    async def replay(self, letter: DeadLetter, pool: str) -> bool:
        """Re-enqueue a dead letter with the same webhook id and a fresh attempt count; False
        when it is no longer there. Waits while a body reaper pass reads the references (a
        replay then could carry a body past the reads, see :mod:`hookline.store.references`)."""
        wh = letter.webhook
        wh.attempt = 0
        wh.created_ms = now_ms()
        keys = [self.key, self.conn.keys.stream(pool), self.conn.keys.reaper_pass]
        args = [letter.id, wh.pack()]
        deadline = time.monotonic() + _REPLAY_WAIT
        while True:
            replayed = int(await self.conn.run("dead letters", scripts.REPLAY, keys, args))
            if replayed >= 0:
                return bool(replayed)
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"dead letters: a body reaper pass held replays for {_REPLAY_WAIT:g} s"
                )
            await asyncio.sleep(0.1)

    async def expire(self, before: float) -> list[str]:
        """Drop dead letters older than ``before`` (Unix seconds); returns the body references
        no longer held by anything, for the caller to delete (a source's event keeps its
        body until the last of its deliveries lets go, :data:`scripts.EXPIRE_DEAD`)."""
        cutoff = f"{int(before * 1000)}-0"
        refs: list[str] = []
        while True:
            with self.conn.errors("dead letters"):
                batch = await self.conn.redis.xrange(self.key, "-", f"({cutoff}", count=_BATCH)
            if not batch:
                return refs
            letters = [(mid, unpack(fields)) for mid, fields in batch]
            keys = [self.key]
            args: list[Any] = []
            for mid, wh in letters:
                if wh.shared:
                    keys.append(self.conn.keys.body(wh.id))
                args += (mid, len(keys) if wh.shared else 0)
            gone = await self.conn.run("dead letters", scripts.EXPIRE_DEAD, keys, args)
            refs.extend(
                wh.body_ref for (_, wh), g in zip(letters, gone, strict=True) if g and wh.body_ref
            )
            if len(batch) < _BATCH:
                return refs

    async def body(self, letter: DeadLetter) -> bytes | None:
        """The dead letter's body when it is in Redis (in its entry, or kept once for a
        source's event); None when it is in the body store or gone."""
        wh = letter.webhook
        if wh.body_ref is not None:
            return None
        if not wh.shared:
            return wh.body
        raw = await self.conn.call("dead letters", "HGET", self.conn.keys.body(wh.id), "b")
        return None if raw is None else bytes(raw)


def _dead_letter(mid: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    wh = unpack(fields)
    ident = text(mid)
    return DeadLetter(
        id=ident,
        webhook=wh,
        reason=text(fields.get(b"reason", b"")),
        pool=text(fields.get(b"pool", b"default")),
        at=int(ident.split("-")[0]) / 1000,
    )
