"""Per-endpoint admission: the circuit breaker, concurrency caps and rate limits.

The dispatcher asks :meth:`Gates.refuse` as it reads each entry and
:meth:`Gates.admit` before each attempt. A refusal is a
:class:`~hookline.models.Deferred` outcome — the entry goes back on the retry
schedule with a short delay and no attempt counted — so a slow or throttled
endpoint never holds a worker that another endpoint could use.

* **Concurrency.** Each process allows at most ``endpoint_concurrency`` deliveries
  to one endpoint (a hanging endpoint cannot take every worker). ``spec.maxInFlight``
  is enforced across all replicas with leases in Redis that expire after the
  endpoint's timeout, so a crashed dispatcher's slots free themselves
  (:mod:`hookline.store.leases`).
* **Rate.** ``spec.rateLimit`` is a token bucket in Redis, refilled from Redis's
  own clock, shared by all replicas. It is exact up to the moment an admitted
  request is sent: admitted requests leave within milliseconds, so the endpoint
  sees at most ``burst`` above the rate over any second.
* **Circuit.** The queue's settle scripts count each endpoint's consecutive
  failed attempts across all dispatchers; :func:`hookline.dispatcher.policy.circuit_open`
  says what that streak means. While it is open, deliveries are deferred until it
  closes; then one probe, chosen through Redis, decides: a success closes it,
  a failure opens it again. Each process learns the state from its own outcomes
  and refreshes it for failing endpoints every second.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, deque
from dataclasses import dataclass

from hookline.config import Config
from hookline.dispatcher.policy import circuit_open
from hookline.metrics import Metrics
from hookline.models import Deferred, Endpoint
from hookline.store import Settled, Store

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
    def __init__(self, store: Store, config: Config, metrics: Metrics):
        self.leases = store.leases
        self.figures = store.figures
        self.config = config
        self.metrics = metrics
        self._local: Counter[str] = Counter()
        # endpoint → in-flight start times, oldest first (tickets are added as they start)
        self._starts: dict[str, dict[int, float]] = {}
        self._latency: dict[str, float] = {}  # endpoint → moving average, seconds
        self._next_slot: dict[str, float] = {}  # endpoint → when the last deferral was sent
        # endpoint → attempts waiting for one of its local slots, oldest first; a slot that
        # comes free is handed to the first (its future gets True) without being uncounted
        self._waiting: dict[str, deque[asyncio.Future[bool]]] = {}
        self._health: dict[str, tuple[int, float]] = {}  # endpoint → (streak, open until)

    def in_flight(self, endpoint_id: str) -> int:
        return self._local[endpoint_id]

    def circuit_open(self, endpoint_id: str, now: float) -> bool:
        streak, until = self._health.get(endpoint_id, (0, 0.0))
        return circuit_open(streak, until, self.config.circuit_threshold, now)

    def refuse(self, endpoint: Endpoint, now: float) -> Deferred | None:
        """A refusal this process can tell at once, without Redis or waiting: the circuit is
        open, or the endpoint is at this process's cap and not fast enough to wait for.
        None: ask :meth:`admit`. The dispatcher asks before it starts a delivery at all, so
        a saturated endpoint's backlog costs a read and a batched deferral, no task."""
        if self.circuit_open(endpoint.id, now):
            until = self._health[endpoint.id][1]
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
            probe = await self.leases.claim_probe(endpoint)
            if not probe:
                return Deferred("circuit half-open: a probe is in flight", self._short())
        cap = self._cap(endpoint)
        if self._local[endpoint.id] < cap:
            self._local[endpoint.id] += 1
        elif not await self._local_slot(endpoint.id):
            await self.leases.release(endpoint.id, None, probe)
            delay = self._spread(endpoint.id, cap, timeout=endpoint.timeout_seconds)
            return Deferred("endpoint at its concurrency limit", delay)
        # This attempt holds one of the endpoint's local slots from here on.
        lease = None
        if endpoint.max_in_flight or endpoint.rate_limit:
            lease = os.urandom(8).hex()
            try:
                wait = await self.leases.admit(endpoint, lease)
            except BaseException:
                self._free_slot(endpoint.id)
                raise
            if wait:
                self._free_slot(endpoint.id)
                await self.leases.release(endpoint.id, None, probe)
                if wait < 0:
                    delay = self._spread(endpoint.id, cap, timeout=endpoint.timeout_seconds)
                    return Deferred("endpoint at maxInFlight", delay)
                assert endpoint.rate_limit is not None
                spread = self._spread(endpoint.id, 1, 1 / endpoint.rate_limit.per_second)
                return Deferred("endpoint rate limit", max(wait / 1000, spread))
        ticket = Ticket(
            endpoint.id, time.monotonic(), lease if endpoint.max_in_flight else None, probe
        )
        self._starts.setdefault(endpoint.id, {})[id(ticket)] = ticket.started
        return ticket

    async def release(self, ticket: Ticket) -> None:
        ep = ticket.endpoint
        self._free_slot(ep)
        starts = self._starts.get(ep, {})
        starts.pop(id(ticket), None)
        if not starts:
            self._starts.pop(ep, None)
        took = time.monotonic() - ticket.started
        self._latency[ep] = 0.8 * self._latency.get(ep, took) + 0.2 * took
        await self.leases.release(ticket.endpoint, ticket.lease, ticket.probe)

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
        for endpoint_id, (streak, until) in (await self.figures.health(failing)).items():
            if streak == 0:
                self.observe(endpoint_id, None)
            else:
                self._health[endpoint_id] = (streak, until)
                self.metrics.circuit_open.labels(endpoint_id).set(
                    int(self.circuit_open(endpoint_id, now))
                )

    # -- pacing

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

    async def _local_slot(self, endpoint_id: str) -> bool:
        """Wait briefly for one of this process's slots of a *fast* endpoint: for an
        endpoint answering in milliseconds, a slot frees sooner than a deferral would
        come back, and costs no Redis round trip. A slow endpoint is not waited for.
        True: a slot was handed over, counted for this attempt."""
        if not self._fast(endpoint_id):
            return False
        loop = asyncio.get_running_loop()
        handed: asyncio.Future[bool] = loop.create_future()
        self._waiting.setdefault(endpoint_id, deque()).append(handed)
        timer = loop.call_later(FAST_ENDPOINT, _settle, handed, False)
        try:
            return await handed
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled() and handed.result():
                self._free_slot(endpoint_id)  # handed over as this attempt was cancelled
            raise
        finally:
            timer.cancel()

    def _free_slot(self, endpoint_id: str) -> None:
        """A local slot of the endpoint comes free: handed to the oldest attempt waiting
        for one (it stays counted), else uncounted."""
        waiting = self._waiting.get(endpoint_id)
        while waiting:
            handed = waiting.popleft()
            if not handed.done():
                handed.set_result(True)
                return
        self._waiting.pop(endpoint_id, None)
        self._local[endpoint_id] -= 1
        if self._local[endpoint_id] <= 0:
            del self._local[endpoint_id]

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


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)
