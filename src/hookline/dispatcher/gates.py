"""Per-endpoint admission: the circuit breaker, concurrency caps and rate limits.

The dispatcher asks :meth:`Gates.refuse` as it reads each entry and
:meth:`Gates.admit` before each attempt. A refusal is a
:class:`~hookline.models.Deferred` outcome — the entry goes back on the retry
schedule with a short delay and no attempt counted — so a slow or throttled
endpoint never holds a worker that another endpoint could use.

* **Concurrency.** Each process allows at most ``endpoint_concurrency`` deliveries
  to one endpoint (a hanging endpoint cannot take every worker). ``spec.maxInFlight``
  is enforced across all replicas with a Redis sorted set of leases that expire
  after the endpoint's timeout, so a crashed dispatcher's slots free themselves.
* **Rate.** ``spec.rateLimit`` is a token bucket in Redis, refilled from Redis's
  own clock, shared by all replicas. It is exact up to the moment an admitted
  request is sent: admitted requests leave within milliseconds, so the endpoint
  sees at most ``burst`` above the rate over any second.
* **Circuit.** The queue's settle scripts count each endpoint's consecutive
  failed attempts across all dispatchers and open its circuit for
  ``circuit_cooldown`` once they reach ``circuit_threshold`` (see
  :mod:`hookline.queue`). While it is open, deliveries are deferred until it
  closes; then one probe, chosen through Redis, decides: a success closes it,
  a failure opens it again. Each process learns the state from its own outcomes
  and refreshes it for failing endpoints every second.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hookline.config import Config
from hookline.errors import StoreUnavailable
from hookline.metrics import Metrics
from hookline.models import Deferred, Endpoint
from hookline.queue import Queue, Settled

# KEYS: in-flight leases (zset), token bucket (hash)
# ARGV: lease id, max in flight (0: none), lease ms, rate per second (0: none), burst
# Returns 0 (admitted), -1 (at max in flight) or the milliseconds until a token.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[2])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= cap then return -1 end
end
local rate = tonumber(ARGV[4])
if rate > 0 then
  local burst = tonumber(ARGV[5])
  local tokens = tonumber(redis.call('HGET', KEYS[2], 'tokens') or burst)
  local ts = tonumber(redis.call('HGET', KEYS[2], 'ts') or now)
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  if tokens < 1 then
    redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'ts', now)
    return math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'ts', now)
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
end
if cap > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return 0
"""


# An endpoint whose attempts take less than this is waited for when it is at its
# per-process cap (at most this long), instead of deferred through Redis.
FAST_ENDPOINT = 0.25


# An endpoint whose oldest request has been open this long is treated as hanging:
# its backlog is deferred by at least its timeout.
HANGING = 1.0


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted attempt; give it back with :meth:`Gates.release`."""

    endpoint: str
    started: float  # time.monotonic() at admission
    lease: str | None = None  # a shared in-flight lease
    probe: bool = False  # the half-open circuit's probe


class Gates:
    def __init__(self, redis: aioredis.Redis, queue: Queue, config: Config, metrics: Metrics):
        self.redis = redis
        self.queue = queue
        self.config = config
        self.metrics = metrics
        self.prefix = config.prefix
        self._acquire = redis.register_script(_ACQUIRE)
        self._local: Counter[str] = Counter()
        # endpoint → in-flight start times, oldest first (tickets are added as they start)
        self._starts: dict[str, dict[int, float]] = {}
        self._latency: dict[str, float] = {}  # endpoint → moving average, seconds
        self._next_slot: dict[str, float] = {}  # endpoint → when the last deferral was sent
        self._freed: dict[str, asyncio.Condition] = {}  # endpoint → a local slot came free
        self._health: dict[str, tuple[int, float]] = {}  # endpoint → (streak, open until)

    def in_flight(self, endpoint_id: str) -> int:
        return self._local[endpoint_id]

    def circuit_open(self, endpoint_id: str, now: float) -> bool:
        streak, until = self._health.get(endpoint_id, (0, 0.0))
        return streak >= self.config.circuit_threshold and now < until

    def refuse(self, endpoint: Endpoint, now: float) -> Deferred | None:
        """A refusal this process can tell at once, without Redis or waiting: the circuit is
        open, or the endpoint is at this process's cap and not fast enough to wait for.
        None: ask :meth:`admit`. The dispatcher asks before it starts a delivery at all, so
        a saturated endpoint's backlog costs a read and a batched deferral, no task."""
        streak, until = self._health.get(endpoint.id, (0, 0.0))
        if streak >= self.config.circuit_threshold and now < until:
            return Deferred("circuit open", until - now + random.uniform(0, 1))
        cap = self._cap(endpoint)
        if self._local[endpoint.id] >= cap and not self._fast(endpoint.id):
            delay = self._spread(endpoint.id, cap, timeout=endpoint.timeout_seconds)
            return Deferred("endpoint at its concurrency limit", delay)
        return None

    async def admit(self, endpoint: Endpoint, now: float) -> Ticket | Deferred:
        """Admit one attempt now, or say how long to wait; waits at most ``FAST_ENDPOINT``
        for a local slot of a fast endpoint."""
        refused = self.refuse(endpoint, now)
        if refused is not None:
            return refused
        probe = False
        if self._health.get(endpoint.id, (0, 0.0))[0] >= self.config.circuit_threshold:
            probe = await self._claim_probe(endpoint)
            if not probe:
                return Deferred("circuit half-open: a probe is in flight", self._short())
        cap = self._cap(endpoint)
        if self._local[endpoint.id] >= cap and not await self._local_slot(endpoint.id, cap):
            await self._drop_probe(endpoint.id, probe)
            delay = self._spread(endpoint.id, cap, timeout=endpoint.timeout_seconds)
            return Deferred("endpoint at its concurrency limit", delay)
        lease = None
        if endpoint.max_in_flight or endpoint.rate_limit:
            lease = os.urandom(8).hex()
            wait = await self._shared(endpoint, lease)
            if wait:
                await self._drop_probe(endpoint.id, probe)
                if wait < 0:
                    delay = self._spread(endpoint.id, cap, timeout=endpoint.timeout_seconds)
                    return Deferred("endpoint at maxInFlight", delay)
                assert endpoint.rate_limit is not None
                spread = self._spread(endpoint.id, 1, 1 / endpoint.rate_limit.per_second)
                return Deferred("endpoint rate limit", max(wait / 1000, spread))
        self._local[endpoint.id] += 1
        ticket = Ticket(
            endpoint.id, time.monotonic(), lease if endpoint.max_in_flight else None, probe
        )
        self._starts.setdefault(endpoint.id, {})[id(ticket)] = ticket.started
        return ticket

    async def release(self, ticket: Ticket) -> None:
        ep = ticket.endpoint
        self._local[ep] -= 1
        if self._local[ep] <= 0:
            del self._local[ep]
        starts = self._starts.get(ep, {})
        starts.pop(id(ticket), None)
        if not starts:
            self._starts.pop(ep, None)
        took = time.monotonic() - ticket.started
        self._latency[ep] = 0.8 * self._latency.get(ep, took) + 0.2 * took
        freed = self._freed.get(ep)
        if freed is not None:
            async with freed:
                freed.notify()
        try:
            if ticket.lease is not None:
                await self.redis.zrem(self._key("inflight", ticket.endpoint), ticket.lease)
            await self._drop_probe(ticket.endpoint, ticket.probe)
        except (RedisError, OSError):
            pass  # leases and probes expire on their own

    def observe(self, endpoint_id: str, settled: Settled | None) -> None:
        """Learn the endpoint's health from an outcome (None: a success)."""
        if settled is None:
            if self._health.pop(endpoint_id, None) is not None:
                self.metrics.circuit_open.labels(endpoint_id).set(0)
            return
        if settled.acked and settled.streak:
            self._health[endpoint_id] = (settled.streak, settled.open_until)
            self.metrics.circuit_open.labels(endpoint_id).set(
                int(self.circuit_open(endpoint_id, time.time()))
            )

    async def refresh(self) -> None:
        """Catch up with what other dispatchers learnt about the endpoints failing here."""
        failing = list(self._health)
        if not failing:
            return
        now = time.time()
        for endpoint_id, (streak, until) in (await self.queue.health(failing)).items():
            if streak == 0:
                self.observe(endpoint_id, None)
            else:
                self._health[endpoint_id] = (streak, until)
                self.metrics.circuit_open.labels(endpoint_id).set(
                    int(self.circuit_open(endpoint_id, now))
                )

    # -- Redis

    def _key(self, kind: str, endpoint_id: str) -> str:
        return f"{self.prefix}:{kind}:{endpoint_id}"

    def _short(self) -> float:
        return self.config.defer_delay * random.uniform(0.5, 1.5)

    def _cap(self, endpoint: Endpoint) -> int:
        if endpoint.max_in_flight:
            return min(self.config.endpoint_concurrency, endpoint.max_in_flight)
        return self.config.endpoint_concurrency

    def _latency_now(self, endpoint_id: str, now: float) -> float:
        """The endpoint's latency as seen now: its moving average, or longer when its
        oldest open request has been waiting longer than that."""
        starts = self._starts.get(endpoint_id)
        oldest = next(iter(starts.values())) if starts else now
        return max(self._latency.get(endpoint_id, 0.0), now - oldest)

    def _fast(self, endpoint_id: str) -> bool:
        """Whether the endpoint has answered within ``FAST_ENDPOINT`` and its open requests
        are younger than that. One that has not answered yet is not known to be fast."""
        if endpoint_id not in self._latency:
            return False
        return self._latency_now(endpoint_id, time.monotonic()) <= FAST_ENDPOINT

    async def _local_slot(self, endpoint_id: str, cap: int) -> bool:
        """Wait briefly for one of this process's slots of a *fast* endpoint: for an
        endpoint answering in milliseconds, a slot frees sooner than a deferral would
        come back, and costs no Redis round trip. A slow endpoint is not waited for."""
        if not self._fast(endpoint_id):
            return False
        freed = self._freed.setdefault(endpoint_id, asyncio.Condition())
        try:
            async with freed:
                await asyncio.wait_for(
                    freed.wait_for(lambda: self._local[endpoint_id] < cap), FAST_ENDPOINT
                )
        except TimeoutError:
            return False
        return True

    def _spread(
        self, endpoint_id: str, cap: int, step: float | None = None, timeout: float = 0.0
    ) -> float:
        """The delay for one more deferral of a saturated endpoint: deferrals are spaced at
        the pace the endpoint can take them (its latency over its cap, or 1/rate), so a
        backlog behind a slow endpoint comes back at that pace and not all at once, and
        waits at least one latency. An endpoint that has not answered yet is taken to be
        slow (``defer_delay``), and once its requests have been open longer than
        ``HANGING`` without an answer, to need its whole ``timeout``: a hanging endpoint
        with a large backlog costs a few operations a second, not one per queued webhook
        per ``defer_delay``."""
        now = time.monotonic()
        least = self.config.defer_delay
        if step is None:
            latency = max(self._latency_now(endpoint_id, now), 0.001)
            if endpoint_id not in self._latency:
                latency = max(latency, least)
                if latency > HANGING:
                    latency = max(latency, timeout)
            if latency > max(least, HANGING):
                least = latency
            step = latency / cap
        slot = max(self._next_slot.get(endpoint_id, now), now) + step
        self._next_slot[endpoint_id] = slot
        return max(slot - now, least) * random.uniform(1.0, 1.1)

    async def _shared(self, endpoint: Endpoint, lease: str) -> int:
        rate = endpoint.rate_limit
        keys = [self._key("inflight", endpoint.id), self._key("rate", endpoint.id)]
        args: list[str | int | float] = [
            lease,
            endpoint.max_in_flight or 0,
            int((endpoint.timeout_seconds + 5) * 1000),
            rate.per_second if rate else 0,
            rate.burst if rate else 0,
        ]
        try:
            return int(await self._acquire(keys, args))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"gates: {exc}") from exc

    async def _claim_probe(self, endpoint: Endpoint) -> bool:
        try:
            ok = await self.redis.set(
                self._key("probe", endpoint.id),
                "1",
                nx=True,
                px=int((endpoint.timeout_seconds + 5) * 1000),
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"gates: {exc}") from exc
        return bool(ok)

    async def _drop_probe(self, endpoint_id: str, probe: bool) -> None:
        if probe:
            await self.redis.delete(self._key("probe", endpoint_id))
