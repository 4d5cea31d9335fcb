"""The durable queue: one Redis stream per dispatcher pool and its retry schedule.

The receiver enqueues; dispatchers read, claim what a dead consumer left, and settle
each entry — delivered, rescheduled, deferred or dead-lettered (the key families are
in :mod:`hookline.store.keys`, the scripts in :mod:`hookline.store.scripts`).

Every change of an entry's state is one Lua script, so it is atomic: an entry is
acknowledged *and* deleted from the stream in the same step that records its
outcome (delivered, scheduled for retry, dead-lettered). The stream therefore
holds only entries not yet finished, nothing is ever trimmed blindly, and its
length is the pool's backlog. A script first checks that ``XACK`` really
acknowledged the entry: when a slow consumer and the one that reclaimed its
entry both finish, only the first outcome is recorded.

Duplicates are counted from what Redis knows before each POST: a dispatcher
records that an attempt is about to be sent (:meth:`Queue.sending`, in the
``sending`` hash, only while the entry is still pending to it) and the settle
script of its outcome takes the record back. Records left behind are attempts
whose outcome was never recorded — their dispatcher died, or was overtaken by
one that reclaimed the entry — and each may have reached the endpoint, so the
webhook's next delivery counts each as a duplicate (a retry carries them).

Every write goes through one pipelined connection (:class:`~hookline.store.wire.Wire`):
the writes of concurrent requests leave together ("group commit"), so a burst
of N enqueues costs one write and one round trip, not N. Deliveries settled in
the same turn of the event loop are recorded by a single script call that still
checks and counts each entry on its own.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from hookline.errors import StoreNotReached, StoreUnavailable
from hookline.models import Webhook
from hookline.store import scripts
from hookline.store.connection import Connection, text
from hookline.store.keys import GROUP
from hookline.store.wire import NotSent, WireError, pack


@dataclass(frozen=True, slots=True)
class Settled:
    """What recording an outcome found: whether this consumer settled the entry (False:
    another had, and took this attempt into account), after a failed attempt the
    endpoint's health, and after a delivery how many duplicates it was counted as."""

    acked: bool
    streak: int = 0  # consecutive failed attempts of the endpoint, across all dispatchers
    open_until: float = 0.0  # Unix seconds; the circuit is open before then
    failing_since: float = 0.0  # Unix seconds; when the streak began
    # The webhook's other attempts that were started and never settled (their dispatcher
    # died, or the entry was reclaimed from it): each may have reached the endpoint.
    duplicates: int = 0
    # The delivery was the last to hold its shared body (a source's event): a body in the
    # body store is no longer referenced.
    last: bool = False

    @classmethod
    def from_script(cls, raw: list[Any]) -> Settled:
        if len(raw) < 4:
            return cls(bool(raw[0]))
        return cls(True, int(raw[1]), int(raw[2]) / 1000, int(raw[3]) / 1000)


_SETTLED = Settled(True)
_ALREADY_SETTLED = Settled(False)


class Queue:
    """Enqueue, read, claim and settle webhooks."""

    def __init__(
        self,
        conn: Connection,
        idempotency_ttl: float = 86400.0,
        circuit_threshold: int = 10,
        circuit_cooldown: float = 30.0,
        attempt_log: int = 50,
    ):
        self.conn = conn
        self.keys = conn.keys
        self.idempotency_ttl_ms = int(idempotency_ttl * 1000)
        self._health_args = [circuit_threshold, int(circuit_cooldown * 1000), attempt_log]
        self.attempt_log = attempt_log
        self._xadd_heads: dict[str, bytes] = {}
        # Attempts and deliveries to record at the end of this turn of the loop.
        self._sending = _PerTurn(self._sending_call)
        self._delivered = _PerTurn(self._delivered_call)
        self._claim_cursor: dict[str, str] = {}

    def stream(self, pool: str) -> str:
        return self.keys.stream(pool)

    # -- producers

    async def enqueue(self, pool: str, webhook: Webhook, idempotency_key: str | None = None) -> str:
        """Append a webhook to its pool's stream; returns its id (the first one for a repeated
        Idempotency-Key). Raises StoreUnavailable when Redis does not take it."""
        data = webhook.pack()
        if idempotency_key is None:
            head = self._xadd_heads.get(pool)
            if head is None:
                empty = pack("XADD", self.keys.stream(pool), "*", "d", "")
                head = self._xadd_heads[pool] = empty.removesuffix(b"$0\r\n\r\n")
            try:  # the receiver's hot path: no more layers than needed
                await self.conn.wire.call(b"%s$%d\r\n%s\r\n" % (head, len(data), data))
            except NotSent as exc:
                raise StoreNotReached(f"queue: {exc}") from exc
            except WireError as exc:
                raise StoreUnavailable(f"queue: {exc}") from exc
            return webhook.id
        keys = [self.keys.idempotency(idempotency_key), self.keys.stream(pool)]
        args = [webhook.id, self.idempotency_ttl_ms, data]
        return text(await self.conn.run("queue", scripts.ENQUEUE_ONCE, keys, args))

    async def fan_out(
        self,
        source_id: str,
        event_id: str,
        deliveries: Sequence[tuple[str, Webhook]],
        body: bytes = b"",
        idempotency_key: str | None = None,
    ) -> tuple[str, int]:
        """Queue a source's event to each (pool, delivery) at once, or nothing: one script.
        With more than one delivery the body is kept once (``P:body:ID``; ``body`` is empty
        when it is in the body store) and the entries carry none. Returns the event id and
        how many endpoints it went to — the first event's for a repeated Idempotency-Key."""
        body_key = self.keys.body(event_id)
        keys = [
            self.keys.idempotency(idempotency_key) if idempotency_key else body_key,
            body_key,
            self.keys.source_stats(source_id),
        ]
        shared = len(deliveries) > 1
        args: list[Any] = [
            event_id,
            self.idempotency_ttl_ms if idempotency_key else 0,
            len(deliveries),
            int(shared),
            body if shared else b"",
        ]
        index: dict[str, int] = {}
        for pool, webhook in deliveries:
            if pool not in index:
                keys.append(self.keys.stream(pool))
                index[pool] = len(keys)
            args += (index[pool], webhook.pack())
        answer = text(await self.conn.run("queue", scripts.FANOUT, keys, args))
        ident, _, width = answer.partition(" ")
        return ident, int(width)

    # -- consumers

    async def ensure_group(self, pool: str) -> None:
        # From id 0: a group created at '$' would skip entries added before it.
        try:
            with self.conn.errors("queue"):
                await self.conn.redis.xgroup_create(
                    self.keys.stream(pool), GROUP, id="0", mkstream=True
                )
        except StoreUnavailable as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, pool: str, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for this consumer, waiting up to ``block_ms`` for the first; with
        ``block_ms`` None, only those already there, through the pipelined connection
        (hiredis's lists, no dict per entry: a busy dispatcher's reads; a blocking read
        must never go through it)."""
        stream = self.keys.stream(pool)
        if block_ms is None:
            command = ("XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count, "STREAMS", stream)
            resp = await self._consume(pool, self.conn.call("queue", *command, ">"))
            if not resp:
                return []
            return [Entry(mid, _field(fields, b"d")) for mid, fields in resp[0][1]]
        streams: dict[Any, Any] = {stream: ">"}
        resp = await self._consume(
            pool, self.conn.redis.xreadgroup(GROUP, consumer, streams, count=count, block=block_ms)
        )
        if not resp:
            return []
        return [Entry(mid, fields.get(b"d", b"")) for mid, fields in resp[0][1]]

    async def shared_body(self, webhook_id: str) -> bytes | None:
        """The body a source's event keeps once for all its deliveries; None when gone."""
        raw = await self.conn.call("queue", "HGET", self.keys.body(webhook_id), "b")
        return None if raw is None else bytes(raw)

    async def claim(self, pool: str, consumer: str, min_idle: float, count: int) -> list[Entry]:
        """Take over entries another consumer left pending for ``min_idle`` seconds."""
        start = self._claim_cursor.get(pool, "0-0")
        resp = await self._consume(
            pool,
            self.conn.redis.xautoclaim(
                self.keys.stream(pool), GROUP, consumer, int(min_idle * 1000), start, count=count
            ),
        )
        if not resp:
            return []
        self._claim_cursor[pool] = text(resp[0])
        return [Entry(mid, fields.get(b"d", b"")) for mid, fields in resp[1] if fields]

    async def _consume(self, pool: str, call: Any) -> Any:
        """A group read; a group Redis lost (restart, flush) is made again, read as empty."""
        try:
            with self.conn.errors("queue"):
                return await call
        except StoreUnavailable as exc:
            lost = isinstance(exc.__cause__, (ResponseError, WireError)) and "NOGROUP" in str(exc)
            if not lost:
                raise
        await self.ensure_group(pool)
        return None

    # -- settling

    async def sending(self, pool: str, consumer: str, msg_id: bytes, delivery: str) -> bool:
        """Record that an attempt of the entry is about to be sent, before it is; False when
        the entry is no longer this consumer's (settled or reclaimed meanwhile): then nothing
        is sent. The settle of the attempt's outcome takes the record back; a record left by
        a dispatcher that died makes the webhook's next delivery count as a duplicate.
        Attempts started in the same turn of the event loop share one script call."""
        return bool(await self._sending.add((pool, consumer), msg_id, delivery))

    def _sending_call(self, key: Any, entries: list[tuple[Any, ...]]) -> Awaitable[Any]:
        pool, consumer = key
        keys = [self.keys.stream(pool), self.keys.sending(pool)]
        args: list[Any] = [GROUP, consumer]
        for msg_id, delivery, _ in entries:
            args += (msg_id, delivery)
        return self.conn.run("queue", scripts.SENDING, keys, args)

    async def delivered(
        self, pool: str, msg_id: bytes, webhook: Webhook, attempt: dict[str, Any] | None = None
    ) -> Settled:
        """Record a delivery (its attempt recorded by :meth:`sending`). ``acked`` is False
        when another consumer had settled the entry already; ``duplicates`` says how many
        duplicates this delivery was counted as. Deliveries recorded in the same turn of
        the event loop share one script call."""
        log_entry = orjson.dumps(attempt or {"at": time.time()})
        result = await self._delivered.add(pool, msg_id, webhook, log_entry)
        if result == -1:
            return _ALREADY_SETTLED
        duplicates, last = result
        if duplicates or last:
            return Settled(True, duplicates=duplicates, last=bool(last))
        return _SETTLED

    def _delivered_call(self, pool: Any, entries: list[tuple[Any, ...]]) -> Awaitable[Any]:
        index: dict[str, int] = {}  # key → its index in KEYS (1-based, as Lua counts)
        keys = [self.keys.stream(pool), self.keys.sending(pool)]

        def at(key: str, *more: str) -> int:
            if key not in index:
                index[key] = len(keys) + 1
                keys.extend((key, *more))
            return index[key]

        args: list[Any] = [GROUP, now_ms(), self.attempt_log]
        for msg_id, webhook, log_entry, _ in entries:
            endpoint = webhook.endpoint
            stats = at(self.keys.stats(endpoint), self.keys.attempts(endpoint))
            body = at(self.keys.body(webhook.id)) if webhook.shared else 0
            source = at(self.keys.source_stats(webhook.source)) if webhook.source else 0
            args += (msg_id, stats, log_entry, webhook.delivery, body, source)
        return self.conn.run("queue", scripts.DELIVERED, keys, args)

    async def reschedule(
        self,
        pool: str,
        msg_id: bytes,
        webhook: Webhook,
        delay: float,
        failure: dict[str, Any] | None = None,
        sent: bool = False,
    ) -> Settled:
        """Settle the entry and put the (updated) webhook on the retry schedule; ``failure``
        is the failed attempt that led here (None for a deferral, which is no attempt);
        ``sent`` says whether :meth:`sending` recorded the attempt being settled."""
        uid = f"{webhook.id}:{webhook.attempt}:{time.time_ns()}"
        now = now_ms()
        keys = [
            self.keys.stream(pool),
            self.keys.retry(pool),
            self.keys.retry_data(pool),
            self.keys.stats(webhook.endpoint),
            self.keys.attempts(webhook.endpoint),
            self.keys.sending(pool),
        ]
        if webhook.source:
            keys.append(self.keys.source_stats(webhook.source))
        fail = orjson.dumps(failure) if failure else b""
        args = [GROUP, msg_id, uid, now + int(delay * 1000), webhook.pack(), fail, now]
        args += [*self._health_args, webhook.delivery, int(sent)]
        raw = await self.conn.run("queue", scripts.RESCHEDULE, keys, args)
        return Settled.from_script(raw)

    async def defer(self, pool: str, entries: list[tuple[bytes, float]]) -> int:
        """Put entries (stream id, delay in seconds) back on the schedule unchanged, in one
        call: the dispatcher's cheap path for webhooks whose endpoint cannot take them now.
        Returns how many were moved (the others had been settled already)."""
        keys = [self.keys.stream(pool), self.keys.retry(pool), self.keys.retry_data(pool)]
        args: list[Any] = [GROUP, now_ms()]
        for msg_id, delay in entries:
            args += (msg_id, int(delay * 1000))
        return int(await self.conn.run("queue", scripts.DEFER, keys, args))

    async def dead(
        self,
        pool: str,
        msg_id: bytes | None,
        webhook: Webhook,
        reason: str,
        failure: dict[str, Any] | None = None,
    ) -> Settled:
        """Settle the entry into the dead letter with its reason."""
        keys = [
            self.keys.stream(pool),
            self.keys.dead,
            self.keys.stats(webhook.endpoint),
            self.keys.attempts(webhook.endpoint),
            self.keys.sending(pool),
        ]
        if webhook.source:
            keys.append(self.keys.source_stats(webhook.source))
        fail = orjson.dumps(failure) if failure else b""
        args: list[Any] = [GROUP, msg_id or "", webhook.pack(), reason, pool, webhook.endpoint]
        args += [fail, now_ms(), *self._health_args, webhook.delivery]
        raw = await self.conn.run("queue", scripts.DEAD, keys, args)
        return Settled.from_script(raw)

    async def move_due(self, pool: str, limit: int = 1000) -> int:
        """Move retries whose time has come back onto the stream; returns how many (none
        while a body reaper pass reads the references, see :mod:`hookline.store.references`)."""
        return (await self.move_due_next(pool, limit))[0]

    async def move_due_next(self, pool: str, limit: int = 1000) -> tuple[int, float | None]:
        """:meth:`move_due`, and when the next retry left on the schedule is due (Unix
        seconds; None: there is none; 0.0 while a reaper pass keeps them: try again soon)."""
        keys = [
            self.keys.retry(pool),
            self.keys.retry_data(pool),
            self.keys.stream(pool),
            self.keys.reaper_pass,
        ]
        moved, first = await self.conn.run("queue", scripts.MOVE_DUE, keys, [now_ms(), limit])
        if not first:
            return int(moved), None
        return int(moved), max(0.0, float(first) / 1000)


def now_ms() -> int:
    return int(time.time() * 1000)


class _PerTurn:
    """Calls made in one turn of the event loop, sent at its end as one script call per
    key (``call(key, entries)``); each caller's future gets its own entry's answer."""

    def __init__(self, call: Callable[[Any, list[tuple[Any, ...]]], Awaitable[Any]]) -> None:
        self.call = call
        self.pending: dict[Any, list[tuple[Any, ...]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # see Wire._loop

    def add(self, key: Any, *entry: Any) -> asyncio.Future[Any]:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._send)
        self.pending.setdefault(key, []).append((*entry, fut))
        return fut

    def _send(self) -> None:
        batches, self.pending = self.pending, {}
        for key, entries in batches.items():
            call = asyncio.ensure_future(self.call(key, entries))
            call.add_done_callback(functools.partial(_resolve, entries=entries))


def _resolve(call: asyncio.Future[Any], entries: Sequence[tuple[Any, ...]]) -> None:
    """Hand each delivery its own answer from a batch's script call."""
    error = call.exception() if not call.cancelled() else StoreUnavailable("queue: cancelled")
    results = call.result() if error is None else [error] * len(entries)
    for (*_, fut), result in zip(entries, results, strict=True):
        if fut.done():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


UNREADABLE = "?unreadable"


def _field(fields: list[bytes] | None, name: bytes) -> bytes:
    """A field of a stream entry as hiredis hands it over: [name, value, name, value...]."""
    if fields:
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == name:
                return fields[i + 1]
    return b""


class Entry:
    """A stream entry as read: its id and its packed webhook, unpacked when first asked
    for (:attr:`webhook`); :meth:`route` reads only what decides whether it waits. It
    unpacks as the pair ``(msg_id, webhook)``."""

    __slots__ = ("_webhook", "data", "msg_id")

    def __init__(self, msg_id: bytes, data: bytes) -> None:
        self.msg_id = msg_id
        self.data = data
        self._webhook: Webhook | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.msg_id, self.webhook))

    @property
    def webhook(self) -> Webhook:
        if self._webhook is None:
            self._webhook = _unpack(self.data)
        return self._webhook

    def route(self) -> tuple[str, int]:
        """The webhook's endpoint and creation time (ms)."""
        route = Webhook.route_of(self.data)
        if route is None:
            webhook = self.webhook
            return webhook.endpoint, webhook.created_ms
        return route


def unpack(fields: dict[bytes, bytes]) -> Webhook:
    """The entry's webhook; an entry that cannot be read becomes one addressed to the
    endpoint ``?unreadable`` that carries the raw entry, so it ends in the dead letter."""
    return _unpack(fields.get(b"d", b""))


def _unpack(raw: bytes) -> Webhook:
    try:
        return Webhook.unpack(raw)
    except (KeyError, ValueError, TypeError):
        return Webhook(id="unreadable", endpoint=UNREADABLE, headers={}, body=raw, size=len(raw))
