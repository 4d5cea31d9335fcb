"""The endpoint registry in Redis, and the local cache receivers and dispatchers read.

Its keys are in :mod:`hookline.store.keys`: the records, the index of hashed
ingest keys, the disabled endpoints — written by dispatchers (410 Gone,
auto-disable) and kept apart so that the operator rewriting a record never
clears it by accident — and the channel announcing every change.

Writers (the operator, the local stack) use :class:`Registry`. Readers hold a
:class:`RegistryCache`: a full load at start, a reload of one endpoint on each
notification (well under a second), and a periodic full reload as a backstop
for notifications missed while disconnected. Whatever interrupts it (a killed
connection, Redis down, a record it cannot read), the cache starts over a
second later with a new subscription and a full load; only ``stop()`` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from hookline.models import Endpoint, Source, key_hash
from hookline.store import scripts
from hookline.store.connection import Connection, text

log = logging.getLogger(__name__)


class Registry:
    """Reads and writes endpoint records; every write is announced on the channel."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.keys = conn.keys
        self.channel = conn.keys.channel

    async def put(self, endpoint: Endpoint) -> None:
        keys = [self.keys.endpoints, self.keys.key_index, self.channel]
        args = [endpoint.id, endpoint.to_json(), endpoint.id, *endpoint.key_hashes]
        await self.conn.run("registry", scripts.PUT_RECORD, keys, args)

    async def remove(self, endpoint_id: str) -> bool:
        """Remove an endpoint; True when it was there. A missing one counts as removed."""
        keys = [self.keys.endpoints, self.keys.key_index, self.channel]
        args = [endpoint_id, "", endpoint_id]
        removed = await self.conn.run("registry", scripts.PUT_RECORD, keys, args)
        await self.conn.call("registry", "HDEL", self.keys.disabled, endpoint_id)
        return bool(removed)

    async def put_source(self, source: Source) -> None:
        keys = [self.keys.sources, self.keys.source_key_index, self.channel]
        args = [source.id, source.to_json(), SOURCE + source.id, *source.key_hashes]
        await self.conn.run("registry", scripts.PUT_RECORD, keys, args)

    async def remove_source(self, source_id: str) -> bool:
        """Remove a source; True when it was there. Its subscribers stay, receiving nothing."""
        keys = [self.keys.sources, self.keys.source_key_index, self.channel]
        args = [source_id, "", SOURCE + source_id]
        return bool(await self.conn.run("registry", scripts.PUT_RECORD, keys, args))

    async def get_source(self, source_id: str) -> Source | None:
        with self.conn.errors("registry"):
            raw = await self.conn.redis.hget(self.keys.sources, source_id)  # type: ignore[misc]
        return Source.from_json(raw) if raw else None

    async def sources(self) -> dict[str, Source]:
        with self.conn.errors("registry"):
            raw = await self.conn.redis.hgetall(self.keys.sources)  # type: ignore[misc]
        return _records(raw, Source.from_json)

    async def get(self, endpoint_id: str) -> Endpoint | None:
        with self.conn.errors("registry"):
            raw = await self.conn.redis.hget(self.keys.endpoints, endpoint_id)  # type: ignore[misc]
        return Endpoint.from_json(raw) if raw else None

    async def all(self) -> dict[str, Endpoint]:
        with self.conn.errors("registry"):
            raw = await self.conn.redis.hgetall(self.keys.endpoints)  # type: ignore[misc]
        return _records(raw, Endpoint.from_json)

    async def disable(self, endpoint_id: str, reason: str) -> None:
        value = json.dumps({"reason": reason, "at": time.time()})
        keys = [self.keys.disabled, self.channel]
        await self.conn.run("registry", scripts.SET_DISABLED, keys, [endpoint_id, value])

    async def enable(self, endpoint_id: str) -> None:
        keys = [self.keys.disabled, self.channel]
        await self.conn.run("registry", scripts.SET_DISABLED, keys, [endpoint_id, ""])

    async def disabled(self) -> dict[str, dict[str, Any]]:
        with self.conn.errors("registry"):
            raw = await self.conn.redis.hgetall(self.keys.disabled)  # type: ignore[misc]
        return {text(k): json.loads(v) for k, v in raw.items()}

    async def disabled_one(self, endpoint_id: str) -> dict[str, Any] | None:
        with self.conn.errors("registry"):
            raw = await self.conn.redis.hget(self.keys.disabled, endpoint_id)  # type: ignore[misc]
        return json.loads(raw) if raw else None


SOURCE = "source "  # how the channel announces a source: "source ns/name"


R = TypeVar("R", Endpoint, Source)


def _records(raw: dict[bytes, bytes], parse: Callable[[bytes], R]) -> dict[str, R]:
    out = {}
    for k, v in raw.items():
        try:
            record = parse(v)
        except (ValueError, KeyError, TypeError):
            log.warning("registry: skipping unreadable record %r", k)
            continue
        out[record.id] = record
    return out


class Subscriptions:
    """Which endpoints of one source take an event type, indexed: a look-up costs a few
    dictionary reads (one per dot in the type), however many endpoints do not match."""

    __slots__ = ("every", "exact", "prefix")

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.every: list[str] = []  # no filter: every type
        self.exact: dict[str, list[str]] = {}
        self.prefix: dict[str, list[str]] = {}  # "invoice." for the filter "invoice.*"
        for ep in endpoints:
            if not ep.event_types:
                self.every.append(ep.id)
            for pattern in ep.event_types:
                if pattern.endswith(".*"):
                    self.prefix.setdefault(pattern[:-1], []).append(ep.id)
                else:
                    self.exact.setdefault(pattern, []).append(ep.id)

    def match(self, event_type: str) -> list[str]:
        ids = [*self.every, *self.exact.get(event_type, ())]
        if self.prefix:
            dot = event_type.find(".")
            while dot >= 0:
                ids += self.prefix.get(event_type[: dot + 1], ())
                dot = event_type.find(".", dot + 1)
        return list(dict.fromkeys(ids))  # an endpoint that two filters match, once


class RegistryCache:
    """A local copy of the registry that sees each change within a second.

    ``by_key``, ``get`` and ``subscribers`` are plain dictionary look-ups: the hot path
    of both the receiver and the dispatcher never waits on Redis for an endpoint.
    ``by_key`` also remembers which endpoint or source a key found, so that the SHA-256
    runs once per distinct key; that memo is dropped on every change the cache sees.
    """

    MEMO_SIZE = 4096  # distinct keys remembered before the memo starts afresh
    # The longest a step of the follower (subscribing and loading, or one message and
    # what it reloads) may take before its connection is given up for a fresh one;
    # above redis-py's own retries of a command on a dropped connection.
    STEP_TIMEOUT = 15.0

    def __init__(
        self,
        registry: Registry,
        refresh_interval: float = 30.0,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.refresh_interval = refresh_interval
        self.on_change = on_change
        self._by_id: dict[str, Endpoint] = {}
        self._sources: dict[str, Source] = {}
        self._by_key: dict[str, Endpoint | Source] = {}  # key hash → its endpoint or source
        self._memo: dict[str, Endpoint | Source] = {}  # raw key → the same, in this process
        self._disabled: dict[str, dict[str, Any]] = {}
        # source id → its subscriptions; made again on the first look-up after a change
        self._subscriptions: dict[str, Subscriptions] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.loaded = asyncio.Event()

    def get(self, endpoint_id: str) -> Endpoint | None:
        return self._by_id.get(endpoint_id)

    def source(self, source_id: str) -> Source | None:
        return self._sources.get(source_id)

    def by_key(self, key: str) -> Endpoint | Source | None:
        """The endpoint or the source an ingest key belongs to."""
        found = self._memo.get(key)
        if found is None:
            found = self._by_key.get(key_hash(key))
            if found is not None:  # unknown keys are not kept: senders cannot fill it
                if len(self._memo) >= self.MEMO_SIZE:
                    self._memo.clear()
                self._memo[key] = found
        return found

    def subscribers(self, source_id: str, event_type: str) -> list[Endpoint]:
        """The endpoints an event of this type from this source goes to: those that
        subscribe to the source with a matching filter and are not disabled (a paused
        one is included: it is delivered to when it resumes)."""
        subscriptions = self._subscriptions
        if subscriptions is None:
            subscriptions = self._subscriptions = self._index()
        subs = subscriptions.get(source_id)
        if subs is None:
            return []
        return [self._by_id[i] for i in subs.match(event_type) if i not in self._disabled]

    def subscribed(self, source_id: str) -> list[Endpoint]:
        """Every endpoint that subscribes to the source, whatever its filter."""
        return [ep for ep in self._by_id.values() if ep.source == source_id]

    def _index(self) -> dict[str, Subscriptions]:
        by_source: dict[str, list[Endpoint]] = {}
        for ep in self._by_id.values():
            if ep.source is not None:
                by_source.setdefault(ep.source, []).append(ep)
        return {sid: Subscriptions(eps) for sid, eps in by_source.items()}

    def disabled_reason(self, endpoint_id: str) -> str | None:
        d = self._disabled.get(endpoint_id)
        return str(d["reason"]) if d else None

    def endpoints(self) -> list[Endpoint]:
        return list(self._by_id.values())

    def sources(self) -> list[Source]:
        return list(self._sources.values())

    async def reload(self) -> None:
        endpoints = await self.registry.all()
        sources = await self.registry.sources()
        disabled = await self.registry.disabled()
        self._by_id = endpoints
        self._sources = sources
        self._by_key = {h: s for s in sources.values() for h in s.key_hashes}
        self._by_key.update({h: ep for ep in endpoints.values() for h in ep.key_hashes})
        self._memo = {}
        self._disabled = disabled
        self._subscriptions = None
        self.loaded.set()

    async def _reload_one(self, announced: str) -> None:
        if announced.startswith(SOURCE):
            source_id = announced.removeprefix(SOURCE)
            self._replace(self._sources, source_id, await self.registry.get_source(source_id))
        else:
            ep = await self.registry.get(announced)
            disabled = await self.registry.disabled_one(announced)
            self._replace(self._by_id, announced, ep)
            if disabled:
                self._disabled[announced] = disabled
            else:
                self._disabled.pop(announced, None)
            self._subscriptions = None
        if self.on_change is not None:
            self.on_change(announced)

    def _replace(self, records: dict[str, R], record_id: str, record: R | None) -> None:
        """Put a record (None: its removal) in place, and its keys in the key index."""
        old = records.get(record_id)
        self._memo = {}
        if old is not None:
            for h in old.key_hashes:
                self._by_key.pop(h, None)
        if record is None:
            records.pop(record_id, None)
        else:
            records[record_id] = record
            for h in record.key_hashes:
                self._by_key[h] = record

    async def start(self, wait: float = 5.0) -> bool:
        """Follow the registry; returns whether the first full load finished within ``wait``
        seconds. Never raises: while Redis is down the follower keeps retrying, and
        ``loaded`` tells readiness probes when the cache can answer."""
        self._task = asyncio.create_task(self._follow(), name="registry-follow")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.loaded.wait(), wait)
        return self.loaded.is_set()

    async def stop(self) -> None:
        # The follower checks the flag at least once a second. It is not cancelled
        # first: redis-py's pub/sub read can swallow a cancellation and hang.
        self._stopping = True
        if self._task is None:
            return
        done, _ = await asyncio.wait([self._task], timeout=3.0)
        if not done:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=1.0)

    async def _follow(self) -> None:
        """Rounds of :meth:`_follow_round` until stopped. Whatever ends a round — a dropped
        connection, Redis gone, a step that does not finish within ``STEP_TIMEOUT``, a
        record that cannot be read, a cancellation nobody asked for — is logged, and the
        next round starts a second later on a fresh connection with a full load, which
        also picks up what changed meanwhile. Only :meth:`stop` (or cancelling the task)
        ends the follower: a cache that stops following silently serves a stale registry
        forever, or never becomes ready."""
        pause = 0.0
        while not self._stopping:
            try:
                if pause:
                    await asyncio.sleep(pause)
                pause = 1.0
                await self._follow_round()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._stopping or (task is not None and task.cancelling()):
                    raise
                # Nobody is cancelling this task (not stop(), not the loop's shutdown):
                # a stray CancelledError from inside the round, which used to end the
                # follower without a word.
                log.warning("registry cache: interrupted; retrying in 1 s")
            except Exception as exc:  # whatever it is, the next round starts afresh
                log.warning("registry cache: %s; retrying in 1 s", exc or type(exc).__name__)

    async def _follow_round(self) -> None:
        """Subscribe, load everything, then apply each change announced and reload all of
        it every ``refresh_interval``; every step bounded in time."""
        async with self.registry.conn.redis.pubsub() as pubsub:
            async with asyncio.timeout(self.STEP_TIMEOUT):
                await pubsub.subscribe(self.registry.channel)
                await self.reload()  # anything that changed while we were not subscribed
            next_full = time.monotonic() + self.refresh_interval
            while not self._stopping:
                wait = min(max(0.0, next_full - time.monotonic()), 1.0)
                async with asyncio.timeout(wait + self.STEP_TIMEOUT):
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                    if msg is not None and msg["type"] == "message":
                        await self._reload_one(text(msg["data"]))
                    if time.monotonic() >= next_full:
                        await self.reload()
                        next_full = time.monotonic() + self.refresh_interval
