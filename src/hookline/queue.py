"""The durable queue: one Redis stream per dispatcher pool, a retry schedule, a dead letter.

Layout (``P`` is the configured prefix, ``pool`` the dispatcher pool):

* ``P:stream:pool``     stream of packed :class:`~hookline.models.Webhook` entries (``d``),
  read by the consumer group ``dispatchers``
* ``P:retry:pool``      sorted set: retry uid → due time (ms), entries in ``P:retrydata:pool``
* ``P:dead``            stream: dead letters with their reason, pool and endpoint
* ``P:idem:HASH``       an Idempotency-Key's first webhook id
* ``P:stats:ENDPOINT``  per-endpoint figures (delivered, failed, dead, duplicates, last outcomes)
  and health (failure streak, circuit open until)
* ``P:attempts:ENDPOINT``  the endpoint's latest attempts, capped

Every change of an entry's state is one Lua script, so it is atomic: an entry is
acknowledged *and* deleted from the stream in the same step that records its
outcome (delivered, scheduled for retry, dead-lettered). The stream therefore
holds only entries not yet finished, nothing is ever trimmed blindly, and its
length is the pool's backlog. A script first checks that ``XACK`` really
acknowledged the entry: when a slow consumer and the one that reclaimed its
entry both finish, only the first outcome is recorded (the second delivery is
counted as a duplicate).

Every write goes through one pipelined connection (:class:`~hookline.wire.Wire`):
the writes of concurrent requests leave together ("group commit"), so a burst
of N enqueues costs one write and one round trip, not N. Deliveries settled in
the same turn of the event loop are recorded by a single script call that still
checks and counts each entry on its own.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from hookline.config import Config
from hookline.errors import StoreUnavailable
from hookline.models import Webhook
from hookline.wire import Wire, WireError, pack

GROUP = "dispatchers"

_ENQUEUE_ONCE = """
local prev = redis.call('GET', KEYS[1])
if prev then return prev end
redis.call('XADD', KEYS[2], '*', 'd', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

# Shared by the scripts that record a failed attempt: figures, the attempt log,
# and the endpoint's health — the streak of consecutive failures, when it
# began, and until when its circuit is open. Returns {streak, open_until, since}.
_FAILED = """
local function failed(stats, attempts, failure, now, threshold, cooldown, logsize)
  redis.call('HINCRBY', stats, 'failed', 1)
  redis.call('HSET', stats, 'last_failure', failure)
  redis.call('LPUSH', attempts, failure)
  redis.call('LTRIM', attempts, 0, logsize - 1)
  local streak = redis.call('HINCRBY', stats, 'streak', 1)
  redis.call('HSETNX', stats, 'streak_since', now)
  local open_until = tonumber(redis.call('HGET', stats, 'open_until') or '0')
  if streak >= threshold and open_until <= now then
    open_until = now + cooldown
    redis.call('HSET', stats, 'open_until', open_until)
  end
  return {streak, open_until, tonumber(redis.call('HGET', stats, 'streak_since'))}
end
"""

# KEYS: stream, then per endpoint its stats and attempts keys
# ARGV: group, now, log size, then per entry: msgid, index of its stats key, attempt json
# Returns 1 per entry it acknowledged, 0 per entry already settled (counted as a duplicate).
# A delivery ends the endpoint's failure streak and closes its circuit.
_DELIVERED = """
local acked_by, dups_by, out = {}, {}, {}
local logsize = tonumber(ARGV[3])
for i = 4, #ARGV, 3 do
  local k = tonumber(ARGV[i + 1])
  local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
  out[#out + 1] = acked
  if acked == 0 then
    dups_by[k] = (dups_by[k] or 0) + 1
  else
    acked_by[k] = (acked_by[k] or 0) + 1
    redis.call('LPUSH', KEYS[k + 1], ARGV[i + 2])
  end
end
for k, n in pairs(acked_by) do
  redis.call('HINCRBY', KEYS[k], 'delivered', n)
  redis.call('HSET', KEYS[k], 'last_success', ARGV[2])
  redis.call('HDEL', KEYS[k], 'streak', 'streak_since', 'open_until')
  redis.call('LTRIM', KEYS[k + 1], 0, logsize - 1)
end
for k, n in pairs(dups_by) do redis.call('HINCRBY', KEYS[k], 'duplicates', n) end
return out
"""

# KEYS: stream, retry zset, retry hash, stats, attempts
# ARGV: group, msgid, uid, due_ms, packed, failure json ('' when not an attempt),
#       now, threshold, cooldown, log size
_RESCHEDULE = (
    _FAILED
    + """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if acked == 0 then return {0} end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
if ARGV[6] == '' then return {1} end
local h = failed(KEYS[4], KEYS[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]),
                 tonumber(ARGV[9]), tonumber(ARGV[10]))
return {1, h[1], h[2], h[3]}
"""
)

# KEYS: stream, retry zset, retry hash   ARGV: group, now_ms, then per entry: msgid, delay_ms
# Puts entries back on the schedule as they are, their data copied from the stream (a
# deferral changes nothing in the webhook). Returns how many it moved; an entry another
# consumer already settled is only acknowledged.
_DEFER = """
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local e = redis.call('XRANGE', KEYS[1], id, id)[1]
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 and e then
    local f = e[2]
    for j = 1, #f, 2 do
      if f[j] == 'd' then
        redis.call('HSET', KEYS[3], id, f[j + 1])
        redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[i + 1]), id)
        n = n + 1
      end
    end
    redis.call('XDEL', KEYS[1], id)
  end
end
return n
"""

# KEYS: stream, dead stream, stats, attempts
# ARGV: group, msgid, packed, reason, pool, endpoint, failure json ('' when no attempt),
#       now, threshold, cooldown, log size
_DEAD = (
    _FAILED
    + """
if ARGV[2] ~= '' then
  local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  if acked == 0 then return {0} end
end
redis.call('XADD', KEYS[2], '*', 'd', ARGV[3], 'reason', ARGV[4], 'pool', ARGV[5], 'ep', ARGV[6])
redis.call('HINCRBY', KEYS[3], 'dead', 1)
if ARGV[7] == '' then return {1} end
local h = failed(KEYS[3], KEYS[4], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]),
                 tonumber(ARGV[10]), tonumber(ARGV[11]))
return {1, h[1], h[2], h[3]}
"""
)

# KEYS: retry zset, retry hash, stream   ARGV: now_ms, limit
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, uid in ipairs(due) do
  local d = redis.call('HGET', KEYS[2], uid)
  if d then redis.call('XADD', KEYS[3], '*', 'd', d) end
  redis.call('HDEL', KEYS[2], uid)
  redis.call('ZREM', KEYS[1], uid)
end
return #due
"""

# KEYS: dead stream, target stream   ARGV: dead id, packed
_REPLAY = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'd', ARGV[2])
return 1
"""

# name → (source, SHA-1): scripts run by SHA, and by source when Redis does not know them.
_SCRIPTS = {
    name: (source, hashlib.sha1(source.encode()).hexdigest())
    for name, source in {
        "enqueue_once": _ENQUEUE_ONCE,
        "delivered": _DELIVERED,
        "reschedule": _RESCHEDULE,
        "defer": _DEFER,
        "dead": _DEAD,
        "move_due": _MOVE_DUE,
        "replay": _REPLAY,
    }.items()
}


@dataclass(frozen=True, slots=True)
class Settled:
    """What recording an outcome found: whether this consumer settled the entry (False:
    another had, this was a duplicate) and, after a failed attempt, the endpoint's health."""

    acked: bool
    streak: int = 0  # consecutive failed attempts of the endpoint, across all dispatchers
    open_until: float = 0.0  # Unix seconds; the circuit is open before then
    failing_since: float = 0.0  # Unix seconds; when the streak began

    @classmethod
    def from_script(cls, raw: list[Any]) -> Settled:
        if len(raw) < 4:
            return cls(bool(raw[0]))
        return cls(True, int(raw[1]), int(raw[2]) / 1000, int(raw[3]) / 1000)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str  # the dead-letter stream id
    webhook: Webhook
    reason: str
    pool: str
    at: float  # Unix seconds


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class Queue:
    """Enqueue, read, claim and settle webhooks; all Redis I/O of the pipeline goes through here.

    Writes use a pipelined connection of their own, opened on first use: :meth:`aclose`
    closes it (the redis-py client, used for reads and figures, stays the caller's)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        idempotency_ttl: float = 86400.0,
        circuit_threshold: int = 10,
        circuit_cooldown: float = 30.0,
        attempt_log: int = 50,
    ):
        self.redis = redis
        self.prefix = prefix
        self.idempotency_ttl_ms = int(idempotency_ttl * 1000)
        self._health_args = [circuit_threshold, int(circuit_cooldown * 1000), attempt_log]
        self.attempt_log = attempt_log
        self.dead_key = f"{prefix}:dead"
        self._wire = Wire(redis)
        self._xadd_heads: dict[str, bytes] = {}
        # Deliveries to record at the end of this turn of the loop: stream → entries.
        self._delivered: dict[str, list[tuple[bytes, str, str, asyncio.Future[Any]]]] = {}
        self._claim_cursor: dict[str, str] = {}

    @classmethod
    def from_config(cls, redis: aioredis.Redis, config: Config) -> Queue:
        return cls(
            redis,
            config.prefix,
            config.idempotency_ttl,
            config.circuit_threshold,
            config.circuit_cooldown,
            config.attempt_log,
        )

    async def aclose(self) -> None:
        await self._wire.aclose()

    # -- keys

    def stream(self, pool: str) -> str:
        return f"{self.prefix}:stream:{pool}"

    def stats_key(self, endpoint_id: str) -> str:
        return f"{self.prefix}:stats:{endpoint_id}"

    def attempts_key(self, endpoint_id: str) -> str:
        return f"{self.prefix}:attempts:{endpoint_id}"

    def _retry_keys(self, pool: str) -> tuple[str, str]:
        return f"{self.prefix}:retry:{pool}", f"{self.prefix}:retrydata:{pool}"

    # -- writing

    async def _call(self, command: bytes, fallback: bytes | None = None) -> Any:
        try:
            return await self._wire.call(command, fallback)
        except WireError as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script by its SHA; Redis that lost its script cache gets the source."""
        source, sha = _SCRIPTS[name]
        command = pack("EVALSHA", sha, len(keys), *keys, *args)
        return await self._call(command, pack("EVAL", source, len(keys), *keys, *args))

    async def ping(self) -> None:
        """A round trip on the connection every write takes (opening it if needed): the
        receiver is ready only when this answers, not merely when some other connection does."""
        await self._call(_PING)

    # -- producers

    async def enqueue(self, pool: str, webhook: Webhook, idempotency_key: str | None = None) -> str:
        """Append a webhook to its pool's stream; returns its id (the first one for a repeated
        Idempotency-Key). Raises StoreUnavailable when Redis does not take it."""
        data = webhook.pack()
        if idempotency_key is None:
            head = self._xadd_heads.get(pool)
            if head is None:
                empty = pack("XADD", self.stream(pool), "*", "d", "")
                head = self._xadd_heads[pool] = empty.removesuffix(b"$0\r\n\r\n")
            try:  # the receiver's hot path: no more layers than needed
                await self._wire.call(b"%s$%d\r\n%s\r\n" % (head, len(data), data))
            except WireError as exc:
                raise StoreUnavailable(f"queue: {exc}") from exc
            return webhook.id
        idem = f"{self.prefix}:idem:{idempotency_key}"
        keys = [idem, self.stream(pool)]
        result = await self._script(
            "enqueue_once", keys, [webhook.id, self.idempotency_ttl_ms, data]
        )
        return _s(result)

    # -- consumers

    async def ensure_group(self, pool: str) -> None:
        # From id 0: a group created at '$' would skip entries added before it.
        try:
            await self.redis.xgroup_create(self.stream(pool), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise StoreUnavailable(f"queue: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc

    async def read(
        self, pool: str, consumer: str, count: int, block_ms: int
    ) -> list[tuple[bytes, Webhook]]:
        """New entries for this consumer."""
        try:
            resp = await self.redis.xreadgroup(
                GROUP, consumer, {self.stream(pool): ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost the group (restart, flush): make it again
                await self.ensure_group(pool)
                return []
            raise StoreUnavailable(f"queue: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc
        if not resp:
            return []
        return [(mid, _unpack(fields)) for mid, fields in resp[0][1]]

    async def claim(
        self, pool: str, consumer: str, min_idle: float, count: int
    ) -> list[tuple[bytes, Webhook]]:
        """Take over entries another consumer left pending for ``min_idle`` seconds."""
        start = self._claim_cursor.get(pool, "0-0")
        try:
            resp = await self.redis.xautoclaim(
                self.stream(pool), GROUP, consumer, int(min_idle * 1000), start, count=count
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                await self.ensure_group(pool)
                return []
            raise StoreUnavailable(f"queue: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc
        self._claim_cursor[pool] = _s(resp[0])
        return [(mid, _unpack(fields)) for mid, fields in resp[1] if fields]

    async def delivered(
        self, pool: str, msg_id: bytes, endpoint_id: str, attempt: dict[str, Any] | None = None
    ) -> bool:
        """Record a delivery; False when the entry had already been settled (a duplicate).
        Deliveries recorded in the same turn of the event loop share one script call."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        stream = self.stream(pool)
        if not self._delivered:
            asyncio.get_running_loop().call_soon(self._send_delivered)
        log_entry = json.dumps(attempt or {"at": time.time()})
        self._delivered.setdefault(stream, []).append((msg_id, endpoint_id, log_entry, fut))
        return bool(await fut)

    def _send_delivered(self) -> None:
        batches, self._delivered = self._delivered, {}
        now = _now_ms()
        for stream, entries in batches.items():
            index: dict[str, int] = {}
            keys = [stream]
            args: list[Any] = [GROUP, now, self.attempt_log]
            for msg_id, endpoint_id, log_entry, _ in entries:
                if endpoint_id not in index:
                    index[endpoint_id] = len(keys) + 1
                    keys += (self.stats_key(endpoint_id), self.attempts_key(endpoint_id))
                args += (msg_id, index[endpoint_id], log_entry)
            call = asyncio.ensure_future(self._script("delivered", keys, args))
            call.add_done_callback(functools.partial(_resolve, entries=entries))

    async def reschedule(
        self,
        pool: str,
        msg_id: bytes,
        webhook: Webhook,
        delay: float,
        failure: dict[str, Any] | None = None,
    ) -> Settled:
        """Settle the entry and put the (updated) webhook on the retry schedule; ``failure``
        is the failed attempt that led here (None for a deferral, which is no attempt)."""
        zkey, hkey = self._retry_keys(pool)
        uid = f"{webhook.id}:{webhook.attempt}:{time.time_ns()}"
        now = _now_ms()
        keys = [
            self.stream(pool),
            zkey,
            hkey,
            self.stats_key(webhook.endpoint),
            self.attempts_key(webhook.endpoint),
        ]
        fail = json.dumps(failure) if failure else ""
        args = [GROUP, msg_id, uid, now + int(delay * 1000), webhook.pack(), fail, now]
        raw = await self._script("reschedule", keys, [*args, *self._health_args])
        return Settled.from_script(raw)

    async def defer(self, pool: str, entries: list[tuple[bytes, float]]) -> int:
        """Put entries (stream id, delay in seconds) back on the schedule unchanged, in one
        call: the dispatcher's cheap path for webhooks whose endpoint cannot take them now.
        Returns how many were moved (the others had been settled already)."""
        zkey, hkey = self._retry_keys(pool)
        args: list[Any] = [GROUP, _now_ms()]
        for msg_id, delay in entries:
            args += (msg_id, int(delay * 1000))
        return int(await self._script("defer", [self.stream(pool), zkey, hkey], args))

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
            self.stream(pool),
            self.dead_key,
            self.stats_key(webhook.endpoint),
            self.attempts_key(webhook.endpoint),
        ]
        fail = json.dumps(failure) if failure else ""
        args = [GROUP, msg_id or "", webhook.pack(), reason, pool, webhook.endpoint, fail]
        raw = await self._script("dead", keys, [*args, _now_ms(), *self._health_args])
        return Settled.from_script(raw)

    async def health(self, endpoint_ids: list[str]) -> dict[str, tuple[int, float]]:
        """(failure streak, circuit open until) of each endpoint, for dispatchers whose
        own view may be stale."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for ep in endpoint_ids:
                    pipe.hmget(self.stats_key(ep), ["streak", "open_until"])
                rows = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc
        return {
            ep: (int(streak or 0), int(until or 0) / 1000)
            for ep, (streak, until) in zip(endpoint_ids, rows, strict=True)
        }

    async def attempts(self, endpoint_id: str, count: int | None = None) -> list[dict[str, Any]]:
        """The endpoint's latest attempts, newest first."""
        try:
            raw = await self.redis.lrange(  # type: ignore[misc]
                self.attempts_key(endpoint_id), 0, (count or self.attempt_log) - 1
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc
        return [json.loads(r) for r in raw]

    async def expire_dead(self, before: float) -> list[str]:
        """Drop dead letters older than ``before`` (Unix seconds); returns the body references
        they held, for the caller to delete."""
        cutoff = f"{int(before * 1000)}-0"
        refs: list[str] = []
        try:
            start = "-"
            while True:
                batch = await self.redis.xrange(self.dead_key, start, f"({cutoff}", count=500)
                refs.extend(r for _, f in batch if (r := _unpack(f).body_ref))
                if len(batch) < 500:
                    break
                start = "(" + _s(batch[-1][0])
            await self.redis.xtrim(self.dead_key, minid=cutoff)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc
        return refs

    async def move_due(self, pool: str, limit: int = 1000) -> int:
        """Move retries whose time has come back onto the stream; returns how many."""
        zkey, hkey = self._retry_keys(pool)
        keys = [zkey, hkey, self.stream(pool)]
        return int(await self._script("move_due", keys, [_now_ms(), limit]))

    # -- figures

    async def backlog(self, pool: str) -> dict[str, int]:
        """Entries waiting in the stream (unread or in flight) and retries due or scheduled."""
        zkey, _ = self._retry_keys(pool)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(self.stream(pool))
                pipe.zcount(zkey, "-inf", _now_ms())
                pipe.zcard(zkey)
                stream_len, due, scheduled = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc
        return {"stream": stream_len, "retry_due": due, "retry_scheduled": scheduled}

    async def group(self, pool: str) -> dict[str, int | None]:
        """The dispatchers' consumer group as XINFO GROUPS reports it: ``lag`` (entries not
        yet read; None when Redis cannot tell), ``pending`` (read, not yet settled) and
        ``consumers``. A pool whose group does not exist yet reads as all lag."""
        stream = self.stream(pool)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.exists(stream)
                pipe.xlen(stream)
                exists, length = await pipe.execute()
            groups = await self.redis.xinfo_groups(stream) if exists else []
        except ResponseError as exc:
            if "no such key" in str(exc).lower():  # the stream went away in between
                return {"lag": 0, "pending": 0, "consumers": 0}
            raise StoreUnavailable(f"queue: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc
        for g in groups:
            if _s(g["name"]) == GROUP:
                lag = g.get("lag")
                return {
                    "lag": None if lag is None else int(lag),
                    "pending": int(g["pending"]),
                    "consumers": int(g["consumers"]),
                }
        return {"lag": int(length), "pending": 0, "consumers": 0}

    async def stats(self, endpoint_id: str) -> dict[str, str]:
        try:
            raw = await self.redis.hgetall(self.stats_key(endpoint_id))  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc
        return {_s(k): _s(v) for k, v in raw.items()}

    # -- dead letter

    async def dead_letters(
        self, since: float | None = None, endpoint: str | None = None, count: int = 100
    ) -> list[DeadLetter]:
        start = f"{int(since * 1000)}-0" if since else "-"
        out: list[DeadLetter] = []
        try:
            while len(out) < count:
                batch = await self.redis.xrange(self.dead_key, start, "+", count=500)
                if not batch:
                    break
                for mid, fields in batch:
                    letter = _dead_letter(mid, fields)
                    if endpoint is None or letter.webhook.endpoint == endpoint:
                        out.append(letter)
                if len(batch) < 500:
                    break
                start = "(" + _s(batch[-1][0])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"queue: {exc}") from exc
        return out[:count]

    async def dead_letter(self, ident: str) -> DeadLetter | None:
        """A dead letter by its dead-letter id or by its webhook id."""
        if not ident.startswith("msg_"):
            batch = await self.redis.xrange(self.dead_key, ident, ident)
            return _dead_letter(*batch[0]) if batch else None
        for letter in await self.dead_letters(count=1_000_000):
            if letter.webhook.id == ident:
                return letter
        return None

    async def replay(self, letter: DeadLetter, pool: str) -> bool:
        """Re-enqueue a dead letter with the same webhook id and a fresh attempt count."""
        wh = letter.webhook
        wh.attempt = 0
        wh.created_ms = _now_ms()
        keys = [self.dead_key, self.stream(pool)]
        return bool(await self._script("replay", keys, [letter.id, wh.pack()]))


_PING = pack("PING")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _resolve(
    call: asyncio.Future[Any], entries: list[tuple[bytes, str, str, asyncio.Future[Any]]]
) -> None:
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


def _unpack(fields: dict[bytes, bytes]) -> Webhook:
    """The entry's webhook; an entry that cannot be read becomes one addressed to the
    endpoint ``?unreadable`` that carries the raw entry, so it ends in the dead letter."""
    raw = fields.get(b"d", b"")
    try:
        return Webhook.unpack(raw)
    except (KeyError, ValueError, TypeError):
        return Webhook(id="unreadable", endpoint=UNREADABLE, headers={}, body=raw, size=len(raw))


def _dead_letter(mid: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    wh = _unpack(fields)
    ident = _s(mid)
    return DeadLetter(
        id=ident,
        webhook=wh,
        reason=_s(fields.get(b"reason", b"")),
        pool=_s(fields.get(b"pool", b"default")),
        at=int(ident.split("-")[0]) / 1000,
    )
