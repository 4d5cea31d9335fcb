"""Every body reference in Redis: what the body reaper must not remove.

Called by the dispatchers' body reaper (:mod:`hookline.dispatcher.reaper`) once it has
listed the stored bodies older than the grace period; a listed body that is not among
:meth:`References.body_refs` is referenced by nothing and can go.

A webhook whose body is stored apart is in one of three places, and its entry carries the
reference: a pool's stream (queued, or being delivered), a pool's retry data (scheduled),
the dead letter. Reading them all in one atomic step would block Redis for as long as the
backlog takes to read, so they are read in batches while entries keep moving between them,
each move one atomic script. What makes the reads complete is their order and one key:

* the streams are read first, then the retry data, then the dead letter. An entry that
  leaves a stream while it is read goes somewhere read later (rescheduled or deferred:
  the retry data; dead-lettered: the dead letter) or nowhere (delivered: its body may go);
* the two moves the other way — a retry coming due (retry data → the end of its stream)
  and a replay (dead letter → a stream) — could carry an entry past the reads, so they
  wait while ``P:reaper:pass`` exists (``MOVE_DUE`` and ``REPLAY`` check it). A pass holds
  that key for as long as it reads, extending it between batches; it expires by itself
  after :data:`PASS_TTL`, so a reaper killed mid-pass holds retries up no longer than that;
* a pass whose key lapsed (a stall longer than :data:`PASS_TTL`) proves nothing: it
  returns None, and so does a pass that finds another one running.

New webhooks need no such care: the reaper lists the bodies before it reads, and only
those older than the grace period, which is longer than a receiver takes between storing
a body and enqueueing its webhook.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from hookline.models import Webhook
from hookline.store.connection import Connection, text
from hookline.store.leases import Lease

PASS_TTL = 15.0  # seconds; extended after every batch, so only a stall this long ends a pass
_BATCH = 1000
_GLOB = re.compile(r"[\\*?\[\]]")

Extend = Callable[[], Awaitable[bool]]


class _Lapsed(Exception):
    """The pass key expired while the pass was reading: moves may have happened."""


class References:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.keys = conn.keys

    async def body_refs(self) -> set[str] | None:
        """Every body reference in the queue, the retry data and the dead letter of every
        pool; None when another pass is reading or this one's key lapsed."""
        lease = Lease(self.conn, self.keys.reaper_pass, PASS_TTL, os.urandom(8).hex(), "reaper")
        if not await lease.hold():
            return None
        refs: set[str] = set()
        try:
            with self.conn.errors("reaper"):
                streams = await self._keys(self.keys.stream("*"), "stream", lease.extend)
                retries = await self._keys(self.keys.retry_data("*"), "hash", lease.extend)
                for stream in streams:
                    await self._stream(stream, refs, lease.extend)
                for retry in retries:
                    await self._hash(retry, refs, lease.extend)
                await self._stream(self.keys.dead, refs, lease.extend)
            if not await lease.extend():
                raise _Lapsed
        except _Lapsed:
            return None
        finally:
            await lease.release()
        return refs

    async def _keys(self, pattern: str, kind: str, extend: Extend) -> list[str]:
        """The keys of one family (every pool's), by SCAN: the prefix's glob characters
        escaped, the family's ``*`` kept."""
        escaped = _GLOB.sub(r"\\\g<0>", pattern[:-1]) + "*"
        found: set[str] = set()
        cursor: Any = 0
        while True:
            cursor, batch = await self.conn.redis.scan(
                cursor, match=escaped, count=_BATCH, _type=kind
            )
            found.update(text(k) for k in batch)
            if not int(cursor):
                return sorted(found)
            if not await extend():
                raise _Lapsed

    async def _stream(self, key: str, refs: set[str], extend: Extend) -> None:
        start = "-"
        while True:
            batch = await self.conn.redis.xrange(key, start, "+", count=_BATCH)
            for _, fields in batch:
                if (ref := Webhook.body_ref_of(fields.get(b"d", b""))) is not None:
                    refs.add(ref)
            if len(batch) < _BATCH:
                return
            start = "(" + text(batch[-1][0])
            if not await extend():
                raise _Lapsed

    async def _hash(self, key: str, refs: set[str], extend: Extend) -> None:
        cursor: Any = 0
        while True:
            cursor, batch = await self.conn.redis.hscan(key, cursor, count=_BATCH)
            for data in batch.values():
                if (ref := Webhook.body_ref_of(data)) is not None:
                    refs.add(ref)
            if not int(cursor):
                return
            if not await extend():
                raise _Lapsed
