"""The dispatcher: reads its pool's stream and delivers each webhook to its endpoint.

Called by ``hookline dispatcher`` (and the local stack) with its dependencies:
``Dispatcher(config, cache, store, bodies, metrics, session, tracing=...)``;
with tracing on, each attempt is a CONSUMER span holding the request's CLIENT span.

Per entry: look up the endpoint, pass its gates (paused, disabled), load and
sign the body, record in Redis that the attempt is about to be sent, POST it
with the endpoint's deadline without following redirects, and settle the entry
with the outcome — acknowledged, rescheduled or dead-lettered in one atomic
step (see :mod:`hookline.store.queue`). An entry is acknowledged only after its
outcome is recorded, so a crash at any moment leaves it pending, and another
dispatcher reclaims it after ``claim_idle``; the record of the attempt the dead
one had started makes that delivery count as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from hookline import spans
from hookline.bodies import BodyStore
from hookline.config import Config
from hookline.dispatcher.gates import Gates
from hookline.dispatcher.policy import GiveUp, classify, decide, failing_too_long
from hookline.dispatcher.reaper import Reaper
from hookline.errors import BlockedDestination, BodyMissing, StoreUnavailable
from hookline.metrics import Metrics
from hookline.models import Deferred, Delivered, Endpoint, Failed, Outcome, Rejected, Webhook
from hookline.signing import Signer
from hookline.store import GROUP, Entry, RegistryCache, Settled, Store
from hookline.tracing import OFF, Tracing

log = logging.getLogger(__name__)

USER_AGENT = "hookline/0.1 (+https://hookline.dev)"

# The retry mover: at most every MOVE_POLL seconds while retries are due or about to be,
# and every MOVE_IDLE seconds at the least when none is (then what this process schedules
# wakes it; what another dispatcher schedules, that one moves).
MOVE_POLL = 0.1
MOVE_IDLE = 1.0


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


@functools.lru_cache(maxsize=256)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """An endpoint's deadline as aiohttp takes it, made once per distinct value."""
    return aiohttp.ClientTimeout(total=seconds)


@dataclass(slots=True)
class Request:
    """A webhook signed for one attempt, ready to be POSTed."""

    body: bytes | AsyncIterator[bytes]
    headers: dict[str, str]


class Dispatcher:
    def __init__(
        self,
        config: Config,
        cache: RegistryCache,
        store: Store,
        bodies: BodyStore,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        consumer: str | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self.config = config
        self.pool = config.pool
        self.cache = cache
        self.store = store
        self.queue = store.queue
        self.bodies = bodies
        self.metrics = metrics
        self.session = session
        self.consumer = consumer or consumer_name()
        self.gates = Gates(store, config, metrics)
        self.tracing = tracing
        self._inflight: set[asyncio.Task[None]] = set()
        self._handling: set[bytes] = set()  # stream ids of the entries in flight here
        self._slot_free = asyncio.Event()
        self._read_min = max(1, min(config.read_batch, config.concurrency) // 4)
        self._stopping = asyncio.Event()
        # The outcomes' counters, counted as plain integers (hookline.metrics.Tally).
        self._outcomes = {
            kind: metrics.tally(metrics.deliveries.labels(kind))
            for kind in ("delivered", "deferred", "failed", "rejected")
        }
        # The earliest retry this process scheduled since the mover last looked (Unix s).
        self._next_retry = math.inf
        self._retry_soon = asyncio.Event()
        self.reaper: Reaper | None = None
        if config.body_reap_interval > 0:
            self.reaper = Reaper(config, store, bodies, metrics, holder=self.consumer)

    # -- the loops

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; then stop reading, give in-flight deliveries
        ``shutdown_grace`` seconds, and leave whatever did not finish pending for
        another dispatcher (nothing is lost, it may be delivered twice)."""
        await self.cache.start()
        stopped = asyncio.create_task(stop.wait())
        loaded = asyncio.create_task(self.cache.loaded.wait())
        try:
            await asyncio.wait([stopped, loaded], return_when=asyncio.FIRST_COMPLETED)
            while not stop.is_set():
                try:
                    await self.queue.ensure_group(self.pool)
                    break
                except StoreUnavailable as exc:
                    log.warning("cannot create the consumer group: %s", exc)
                    await asyncio.wait([stopped], timeout=1.0)
        finally:
            stopped.cancel()
            loaded.cancel()
        if stop.is_set():
            await self.cache.stop()
            return
        loops = [
            asyncio.create_task(self._read_loop(), name="read"),
            asyncio.create_task(self._claim_loop(), name="claim"),
            asyncio.create_task(self._move_loop(), name="move-due"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        if self.reaper is not None:
            loops.append(asyncio.create_task(self.reaper.run(self._stopping), name="reaper"))
        log.info("dispatcher %s serving pool %r", self.consumer, self.pool)
        await stop.wait()
        self._stopping.set()
        self._retry_soon.set()
        _, pending = await asyncio.wait(loops, timeout=3.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if self._inflight:
            log.info("waiting for %d deliveries in flight", len(self._inflight))
            _, unfinished = await asyncio.wait(
                list(self._inflight), timeout=self.config.shutdown_grace
            )
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        await self.cache.stop()

    def _start(self, entries: list[Entry]) -> None:
        """Start a delivery for each entry — except those whose endpoint cannot take them
        now (paused, circuit open, saturated and slow): they go back on the schedule in
        one call, with no task, no attempt and without being unpacked, so a hanging
        endpoint's backlog costs the other endpoints little more than reading it."""
        handle = self._handle_traced if self.tracing.enabled else self._handle
        now = time.time()
        put_off: list[tuple[bytes, float]] = []
        for entry in entries:
            msg_id = entry.msg_id
            if msg_id in self._handling:  # reclaimed from ourselves: already in flight
                continue
            refused = self._refusal(*entry.route(), now)
            if refused is not None:
                put_off.append((msg_id, refused.delay))
                continue
            self._spawn(msg_id, handle(msg_id, entry.webhook))
        if put_off:
            self._spawn(None, self._defer(put_off))
        self.metrics.in_flight.set(len(self._inflight))

    def _spawn(self, msg_id: bytes | None, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        if msg_id is not None:
            self._handling.add(msg_id)
            task.add_done_callback(functools.partial(self._finished, msg_id))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _refusal(self, endpoint_id: str, created_ms: int, now: float) -> Deferred | None:
        """The deferral of a webhook that can be decided without a delivery task; None
        when the full path must decide (unknown, disabled or too old: the dead letter)."""
        endpoint = self.cache.get(endpoint_id)
        if (
            endpoint is None
            or self.cache.disabled_reason(endpoint.id)
            or now - created_ms / 1000 > endpoint.retry.max_age_seconds
        ):
            return None
        if endpoint.paused:
            return Deferred("endpoint paused", self.config.defer_delay)
        return self.gates.refuse(endpoint, now)

    async def _defer(self, entries: list[tuple[bytes, float]]) -> None:
        try:
            await self.queue.defer(self.pool, entries)
        except StoreUnavailable as exc:  # left pending; tried again after claim_idle
            log.warning("could not defer %d entries: %s", len(entries), exc)
            return
        self._scheduled(min(delay for _, delay in entries))
        self._outcomes["deferred"].n += len(entries)

    def _finished(self, msg_id: bytes, _: asyncio.Task[None]) -> None:
        self._handling.discard(msg_id)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self.config.concurrency - len(self._inflight) >= self._read_min:
            self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    async def _free_slots(self) -> int:
        """Free slots, once there are at least ``_read_min``: a busy dispatcher reads fewer,
        larger batches instead of a few entries each time a delivery finishes."""
        while (free := self.config.concurrency - len(self._inflight)) < self._read_min:
            self._slot_free.clear()
            await self._slot_free.wait()
        return free

    async def _read_loop(self) -> None:
        busy = False  # the last read took all it asked for: more are likely waiting
        while not self._stopping.is_set():
            free = await self._free_slots()
            count = min(free, self.config.read_batch)
            try:
                # A busy dispatcher reads what is there without blocking, on the pipelined
                # connection; an idle one waits for the next entry.
                entries = await self.queue.read(
                    self.pool, self.consumer, count, block_ms=None if busy else 1000
                )
            except StoreUnavailable as exc:
                log.warning("read: %s", exc)
                await self._pause(1.0)
                continue
            busy = len(entries) >= count
            self._start(entries)
            if len(entries) < self._read_min and self.config.read_linger:
                # A quiet stream: what arrives meanwhile is read, recorded (sending) and
                # settled together, one wake-up and one script call for several entries
                # instead of each; a busy one (a full read) is read again at once.
                await asyncio.sleep(self.config.read_linger)

    async def _claim_loop(self) -> None:
        interval = max(0.2, min(5.0, self.config.claim_idle / 4))
        while not self._stopping.is_set():
            try:
                free = await self._free_slots()
                entries = await self.queue.claim(
                    self.pool, self.consumer, self.config.claim_idle, min(free, 100)
                )
                if entries:
                    log.info("reclaimed %d entries left by other dispatchers", len(entries))
                    self._start(entries)
                    continue
            except StoreUnavailable as exc:
                log.warning("claim: %s", exc)
            await self._pause(interval)

    async def _move_loop(self) -> None:
        """Move due retries onto the stream: again at once while there were some, else when
        the next is due — within ``MOVE_POLL`` to ``MOVE_IDLE`` s, or sooner when this
        process schedules one (an idle dispatcher looks once a second, not ten times)."""
        last_gauge = 0.0
        while not self._stopping.is_set():
            wait = MOVE_POLL
            self._next_retry = math.inf  # what is scheduled from now on, the pause sees
            try:
                moved, next_at = await self.queue.move_due_next(self.pool)
                now = time.monotonic()
                if now - last_gauge > 5.0:
                    last_gauge = now
                    backlog = await self.store.figures.backlog(self.pool)
                    self.metrics.queue_backlog.labels(self.pool).set(backlog["stream"])
                    self.metrics.retry_backlog.labels(self.pool).set(backlog["retry_scheduled"])
                if moved:
                    continue
                wait = MOVE_IDLE if next_at is None else next_at - time.time()
            except StoreUnavailable as exc:
                log.warning("moving due retries: %s", exc)
            await self._until_due(min(max(wait, MOVE_POLL), MOVE_IDLE))

    def _scheduled(self, delay: float) -> None:
        """A retry this process put on the schedule, due in ``delay`` s: the mover moves it
        in time even when it was sleeping until later."""
        at = time.time() + delay
        if at < self._next_retry:
            self._next_retry = at
            self._retry_soon.set()

    async def _until_due(self, wait: float) -> None:
        """Sleep ``wait`` s, or until the earliest retry this process schedules meanwhile
        is due, but at least ``MOVE_POLL`` s; until stopping."""
        loop = asyncio.get_running_loop()
        floor = loop.time() + MOVE_POLL
        deadline = loop.time() + wait
        while not self._stopping.is_set():
            if self._next_retry < math.inf:
                due = loop.time() + self._next_retry - time.time()
                deadline = min(deadline, max(floor, due))
            left = deadline - loop.time()
            if left <= 0:
                return
            self._retry_soon.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry_soon.wait(), left)

    async def _housekeeping(self) -> None:
        """Every second, catch up on failing endpoints' circuits; every minute, drop dead
        letters (and their bodies) past retention. The body reaper runs next to it, in a
        loop of its own (a pass may take seconds; circuits must not wait for it)."""
        next_expiry = 0.0
        while not self._stopping.is_set():
            try:
                await self.gates.refresh()
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + 60
                    cutoff = time.time() - self.config.body_retention
                    for ref in await self.store.dead_letters.expire(cutoff):
                        await self.bodies.delete(ref)
            except StoreUnavailable as exc:
                log.warning("housekeeping: %s", exc)
            await self._pause(1.0)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- one delivery

    async def _handle_traced(self, msg_id: bytes, webhook: Webhook) -> None:
        """One attempt as a CONSUMER span continuing the entry's trace; ``attempt()``'s
        request is its CLIENT span (see :func:`hookline.spans.post`)."""
        untraced = self.tracing.unsampled_headers(webhook.trace)
        if untraced is not None:  # left out by the receiver: no span, its context passed on
            await self._handle(msg_id, webhook, untraced)
            return
        with spans.consume(self.tracing, webhook, self.queue.stream(self.pool), GROUP):
            await self._handle(msg_id, webhook)

    async def _handle(
        self, msg_id: bytes, webhook: Webhook, untraced: dict[str, str] | None = None
    ) -> None:
        endpoint = self.cache.get(webhook.endpoint)
        if endpoint is None:
            await self._dead(msg_id, webhook, f"endpoint {webhook.endpoint!r} does not exist")
            return
        disabled = self.cache.disabled_reason(endpoint.id)
        if disabled:
            await self._dead(msg_id, webhook, f"endpoint disabled: {disabled}")
            return
        outcome: Outcome
        sent = False  # whether an attempt was recorded as sent (see _may_send)
        if endpoint.paused:
            outcome = Deferred("endpoint paused", self.config.defer_delay)
        else:
            try:
                admitted = await self.gates.admit(endpoint, time.time())
            except StoreUnavailable as exc:
                log.warning("gates: %s", exc)  # left pending; tried again after claim_idle
                return
            if isinstance(admitted, Deferred):
                outcome = admitted
            else:
                try:
                    request = await self.prepare(endpoint, webhook)
                    if isinstance(request, Request):
                        if not await self._may_send(msg_id, webhook):
                            return
                        sent = True
                        outcome = await self.post(endpoint, request, untraced)
                    else:
                        outcome = request
                finally:
                    await self.gates.release(admitted)
        await self._settle(msg_id, webhook, endpoint, outcome, sent)

    async def _may_send(self, msg_id: bytes, webhook: Webhook) -> bool:
        """Record in Redis that this attempt is about to be sent, before any byte of it is
        (:meth:`hookline.store.queue.Queue.sending`); False when it must not be sent: the
        entry is no longer ours, or Redis did not take the record (then it stays pending)."""
        try:
            if await self.queue.sending(self.pool, self.consumer, msg_id, webhook.delivery):
                return True
            log.info("%s was settled or reclaimed by another dispatcher: not sent", webhook.id)
        except StoreUnavailable as exc:
            log.warning("could not record the attempt of %s: %s", webhook.id, exc)
        return False

    async def prepare(self, endpoint: Endpoint, webhook: Webhook) -> Request | Outcome:
        """The signed request for one attempt, or the outcome when it cannot be made (the
        body is missing, or the body store does not answer)."""
        now = time.time()
        timestamp = int(now)
        signer = Signer(endpoint.signing_secrets, webhook.id, timestamp, now)
        body: bytes | AsyncIterator[bytes]
        try:
            if webhook.body_ref is None:
                body = webhook.body
                if webhook.shared:  # a source's event: its body is kept once in Redis
                    shared = await self.queue.shared_body(webhook.id)
                    if shared is None:
                        raise BodyMissing(f"the shared body of {webhook.id} is gone")
                    body = shared
                signer.update(body)
            else:
                async for chunk in self.bodies.open(webhook.body_ref):
                    signer.update(chunk)
                body = self.bodies.open(webhook.body_ref)
        except BodyMissing as exc:
            return Rejected(f"body missing: {exc}")
        except StoreUnavailable as exc:
            return Deferred(f"body store unavailable: {exc}", 5.0)
        headers = dict(webhook.headers)
        headers["webhook-id"] = webhook.id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = signer.header()
        headers["user-agent"] = USER_AGENT
        if webhook.body_ref is not None:
            headers["content-length"] = str(webhook.size)
        return Request(body, headers)

    async def post(
        self, endpoint: Endpoint, request: Request, untraced: dict[str, str] | None = None
    ) -> Outcome:
        """POST the request once; never raises for anything the endpoint or network does.
        ``untraced``: the trace headers of a webhook left out (see :func:`spans.post`)."""
        timeout = _timeout(endpoint.timeout_seconds)
        start = time.monotonic()
        try:
            async with spans.post(
                self.tracing,
                self.session,
                endpoint.url,
                data=request.body,
                headers=request.headers,
                untraced=untraced,
                allow_redirects=False,
                timeout=timeout,
            ) as resp:
                await resp.content.read(self.config.response_cap)
                latency = time.monotonic() - start
                self.metrics.delivery_latency.observe(latency)
                return classify(resp.status, resp.headers.get("Retry-After"), latency)
        except TimeoutError:
            return Failed(
                f"timed out after {endpoint.timeout_seconds:g} s", None, time.monotonic() - start
            )
        except BlockedDestination as exc:  # the SSRF guard: permanent, see hookline.outbound
            return Rejected(str(exc), None, time.monotonic() - start)
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc.__cause__, StoreUnavailable):  # the body store failed mid-stream
                return Deferred(f"body store unavailable: {exc.__cause__}", 5.0)
            return Failed(
                f"connection failed: {exc or type(exc).__name__}", None, time.monotonic() - start
            )
        except StoreUnavailable as exc:  # the body store failed while streaming
            return Deferred(f"body store unavailable: {exc}", 5.0)

    async def _settle(
        self, msg_id: bytes, webhook: Webhook, endpoint: Endpoint, outcome: Outcome, sent: bool
    ) -> None:
        spans.outcome(self.tracing, outcome)
        try:
            await self._settle_outcome(msg_id, webhook, endpoint, outcome, sent)
        except StoreUnavailable as exc:
            # Left pending: another dispatcher (or this one) takes it again later.
            log.warning("could not record the outcome of %s: %s", webhook.id, exc)

    async def _settle_outcome(
        self, msg_id: bytes, webhook: Webhook, endpoint: Endpoint, outcome: Outcome, sent: bool
    ) -> None:
        now = time.time()
        self._outcomes[type(outcome).__name__.lower()].n += 1
        if isinstance(outcome, Delivered):
            if self.config.fault_ack_delay:
                await asyncio.sleep(self.config.fault_ack_delay)
            attempt = {"at": now, "status": outcome.status, "latency": round(outcome.latency, 4)}
            settled = await self.queue.delivered(self.pool, msg_id, webhook, attempt)
            if settled.duplicates:
                self.metrics.duplicates.inc(settled.duplicates)
                log.info("%s delivered again: counted as a duplicate", webhook.id)
            self.gates.observe(endpoint.id, None)
            self.metrics.end_to_end.observe(max(0.0, now - webhook.created_ms / 1000))
            if webhook.body_ref is not None and (settled.last or not webhook.shared):
                if self.config.fault_delete_delay:
                    await asyncio.sleep(self.config.fault_delete_delay)
                # A lost delete (this process killed now, the store failing) leaves the body
                # to the reaper: no entry references it any more.
                with contextlib.suppress(StoreUnavailable):
                    await self.bodies.delete(webhook.body_ref)
            return
        if isinstance(outcome, Deferred):
            age = now - webhook.created_ms / 1000
            if age > endpoint.retry.max_age_seconds:
                await self._dead(msg_id, webhook, f"gave up at age {age:.0f} s: {outcome.reason}")
            else:
                await self.queue.reschedule(self.pool, msg_id, webhook, outcome.delay, sent=sent)
                self._scheduled(outcome.delay)
            return
        failure = {
            "at": now,
            "status": outcome.status,
            "latency": round(outcome.latency, 4),
            "reason": outcome.reason,
            "attempt": webhook.attempt + 1,
        }
        webhook.attempt += 1
        if isinstance(outcome, Rejected):
            if outcome.disable:
                await self._disable(endpoint, outcome.reason, "gone")
            await self._dead(msg_id, webhook, outcome.reason, failure, endpoint)
            return
        decision = decide(outcome, webhook, endpoint.retry, self.config.retry_after_max, now)
        if isinstance(decision, GiveUp):
            await self._dead(msg_id, webhook, decision.reason, failure, endpoint)
            return
        settled = await self.queue.reschedule(
            self.pool, msg_id, webhook, decision.delay, failure, sent=sent
        )
        self._scheduled(decision.delay)
        if settled.acked:
            self.metrics.retries.inc()
        await self._observe_failure(endpoint, settled)

    async def _observe_failure(self, endpoint: Endpoint, settled: Settled) -> None:
        self.gates.observe(endpoint.id, settled)
        since = settled.failing_since
        if failing_too_long(since, self.config.disable_after, time.time()):
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
            await self._disable(endpoint, f"failing continuously since {started}", "failing")

    async def _disable(self, endpoint: Endpoint, reason: str, cause: str) -> None:
        if self.cache.disabled_reason(endpoint.id) is None:
            await self.store.registry.disable(endpoint.id, reason)
            self.metrics.disabled.labels(cause).inc()
            log.warning("endpoint %s disabled: %s", endpoint.id, reason)

    async def _dead(
        self,
        msg_id: bytes,
        webhook: Webhook,
        reason: str,
        failure: dict[str, Any] | None = None,
        endpoint: Endpoint | None = None,
    ) -> None:
        spans.dead_lettered(self.tracing, reason)
        try:
            settled = await self.queue.dead(self.pool, msg_id, webhook, reason, failure)
        except StoreUnavailable as exc:
            log.warning("could not dead-letter %s: %s", webhook.id, exc)
            return
        if settled.acked:
            self.metrics.dead_letters.inc()
            log.info("dead letter %s (%s): %s", webhook.id, webhook.endpoint, reason)
        if endpoint is not None and failure is not None:
            await self._observe_failure(endpoint, settled)
