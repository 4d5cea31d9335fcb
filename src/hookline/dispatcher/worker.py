"""The dispatcher: reads its pool's stream and delivers each webhook to its endpoint.

Called by ``hookline dispatcher`` (and the local stack) with its dependencies:
``Dispatcher(config, cache, registry, queue, bodies, metrics, session)``.

Per entry: look up the endpoint, pass its gates (paused, disabled), load and
sign the body, POST it with the endpoint's deadline without following
redirects, and settle the entry with the outcome — acknowledged, rescheduled
or dead-lettered in one atomic step (see :mod:`hookline.queue`). An entry is
acknowledged only after its outcome is recorded, so a crash at any moment
leaves it pending, and another dispatcher reclaims it after ``claim_idle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from hookline.bodies import BodyStore
from hookline.config import Config
from hookline.dispatcher.policy import RETRY_AFTER_STATUSES, GiveUp, decide, parse_retry_after
from hookline.errors import BodyMissing, StoreUnavailable
from hookline.metrics import Metrics
from hookline.models import Deferred, Delivered, Endpoint, Failed, Outcome, Rejected, Webhook
from hookline.queue import Queue
from hookline.registry import Registry, RegistryCache
from hookline.signing import Signer

log = logging.getLogger(__name__)

USER_AGENT = "hookline/0.1 (+https://hookline.dev)"


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def classify(status: int, retry_after: str | None, latency: float) -> Outcome:
    """The outcome of an answered request, as the Standard Webhooks guidance has it."""
    if 200 <= status < 300:
        return Delivered(status, latency)
    if status == 410:
        return Rejected("endpoint answered 410 Gone", status, latency, disable=True)
    if 300 <= status < 400:
        return Failed(f"redirect ({status}) not followed", status, latency)
    wait = parse_retry_after(retry_after) if status in RETRY_AFTER_STATUSES else None
    return Failed(f"endpoint answered {status}", status, latency, retry_after=wait)


class Dispatcher:
    def __init__(
        self,
        config: Config,
        cache: RegistryCache,
        registry: Registry,
        queue: Queue,
        bodies: BodyStore,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        consumer: str | None = None,
    ) -> None:
        self.config = config
        self.pool = config.pool
        self.cache = cache
        self.registry = registry
        self.queue = queue
        self.bodies = bodies
        self.metrics = metrics
        self.session = session
        self.consumer = consumer or consumer_name()
        self._inflight: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._read_min = max(1, min(config.read_batch, config.concurrency) // 4)
        self._stopping = asyncio.Event()

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
        ]
        log.info("dispatcher %s serving pool %r", self.consumer, self.pool)
        await stop.wait()
        self._stopping.set()
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

    def _start(self, entries: list[tuple[bytes, Webhook]]) -> None:
        for msg_id, webhook in entries:
            task = asyncio.create_task(self._handle(msg_id, webhook))
            self._inflight.add(task)
            task.add_done_callback(self._done)
        self.metrics.in_flight.set(len(self._inflight))

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
        while not self._stopping.is_set():
            free = await self._free_slots()
            try:
                entries = await self.queue.read(
                    self.pool, self.consumer, min(free, self.config.read_batch), block_ms=1000
                )
            except StoreUnavailable as exc:
                log.warning("read: %s", exc)
                await self._pause(1.0)
                continue
            self._start(entries)

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
        last_gauge = 0.0
        while not self._stopping.is_set():
            try:
                moved = await self.queue.move_due(self.pool)
                now = time.monotonic()
                if now - last_gauge > 5.0:
                    last_gauge = now
                    backlog = await self.queue.backlog(self.pool)
                    self.metrics.queue_backlog.labels(self.pool).set(backlog["stream"])
                    self.metrics.retry_backlog.labels(self.pool).set(backlog["retry_scheduled"])
                if moved:
                    continue
            except StoreUnavailable as exc:
                log.warning("moving due retries: %s", exc)
            await self._pause(0.1)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- one delivery

    async def _handle(self, msg_id: bytes, webhook: Webhook) -> None:
        endpoint = self.cache.get(webhook.endpoint)
        if endpoint is None:
            await self._dead(msg_id, webhook, f"endpoint {webhook.endpoint!r} does not exist")
            return
        disabled = self.cache.disabled_reason(endpoint.id)
        if disabled:
            await self._dead(msg_id, webhook, f"endpoint disabled: {disabled}")
            return
        if endpoint.paused:
            outcome: Outcome = Deferred("endpoint paused", self.config.defer_delay)
        else:
            outcome = await self.attempt(endpoint, webhook)
        await self._settle(msg_id, webhook, endpoint, outcome)

    async def attempt(self, endpoint: Endpoint, webhook: Webhook) -> Outcome:
        """POST the webhook once; never raises for anything the endpoint or network does."""
        now = time.time()
        timestamp = int(now)
        signer = Signer(endpoint.signing_secrets, webhook.id, timestamp, now)
        body: bytes | AsyncIterator[bytes]
        try:
            if webhook.body_ref is None:
                signer.update(webhook.body)
                body = webhook.body
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
        timeout = aiohttp.ClientTimeout(total=endpoint.timeout_seconds)
        start = time.monotonic()
        try:
            async with self.session.post(
                endpoint.url, data=body, headers=headers, allow_redirects=False, timeout=timeout
            ) as resp:
                await resp.content.read(self.config.response_cap)
                latency = time.monotonic() - start
                self.metrics.delivery_latency.observe(latency)
                return classify(resp.status, resp.headers.get("Retry-After"), latency)
        except TimeoutError:
            return Failed(
                f"timed out after {endpoint.timeout_seconds:g} s", None, time.monotonic() - start
            )
        except (aiohttp.ClientError, OSError) as exc:
            return Failed(
                f"connection failed: {exc or type(exc).__name__}", None, time.monotonic() - start
            )
        except StoreUnavailable as exc:  # the body store failed while streaming
            return Deferred(f"body store unavailable: {exc}", 5.0)

    async def _settle(
        self, msg_id: bytes, webhook: Webhook, endpoint: Endpoint, outcome: Outcome
    ) -> None:
        try:
            await self._settle_outcome(msg_id, webhook, endpoint, outcome)
        except StoreUnavailable as exc:
            # Left pending: another dispatcher (or this one) takes it again later.
            log.warning("could not record the outcome of %s: %s", webhook.id, exc)

    async def _settle_outcome(
        self, msg_id: bytes, webhook: Webhook, endpoint: Endpoint, outcome: Outcome
    ) -> None:
        now = time.time()
        kind = type(outcome).__name__.lower()
        self.metrics.deliveries.labels(kind).inc()
        if isinstance(outcome, Delivered):
            if self.config.fault_ack_delay:
                await asyncio.sleep(self.config.fault_ack_delay)
            if not await self.queue.delivered(self.pool, msg_id, endpoint.id):
                self.metrics.duplicates.inc()
            self.metrics.end_to_end.observe(max(0.0, now - webhook.created_ms / 1000))
            if webhook.body_ref is not None:
                with contextlib.suppress(StoreUnavailable):
                    await self.bodies.delete(webhook.body_ref)
            return
        if isinstance(outcome, Deferred):
            await self.queue.reschedule(self.pool, msg_id, webhook, outcome.delay)
            return
        failure = {"at": now, "status": outcome.status, "reason": outcome.reason}
        webhook.attempt += 1
        if isinstance(outcome, Rejected):
            if outcome.disable:
                await self.registry.disable(endpoint.id, outcome.reason)
            await self._dead(msg_id, webhook, outcome.reason, failure)
            return
        decision = decide(outcome, webhook, endpoint.retry, self.config.retry_after_max, now)
        if isinstance(decision, GiveUp):
            await self._dead(msg_id, webhook, decision.reason, failure)
            return
        if await self.queue.reschedule(self.pool, msg_id, webhook, decision.delay, failure):
            self.metrics.retries.inc()

    async def _dead(
        self, msg_id: bytes, webhook: Webhook, reason: str, failure: dict[str, Any] | None = None
    ) -> None:
        try:
            if await self.queue.dead(self.pool, msg_id, webhook, reason, failure):
                self.metrics.dead_letters.inc()
                log.info("dead letter %s (%s): %s", webhook.id, webhook.endpoint, reason)
        except StoreUnavailable as exc:
            log.warning("could not dead-letter %s: %s", webhook.id, exc)
