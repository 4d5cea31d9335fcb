"""The body reaper: removes stored bodies that nothing in Redis references any more.

Started by the dispatcher (:class:`~hookline.dispatcher.worker.Dispatcher`) next to its
housekeeping unless ``HOOKLINE_BODY_REAP_INTERVAL`` is 0. Every dispatcher runs one; the
one holding the reaper lease (``P:reaper:lease``) makes a pass every interval.

What it finds: the body of a delivered webhook whose delete was lost (a dispatcher killed
between the acknowledgement and the delete, the store or Redis failing while it settled),
a body stored by a receiver that died or refused the request before enqueueing it, and the
``.part`` file of a receiver killed mid-upload (filesystem store).

A pass, in this order:

1. list the stored bodies older than ``HOOKLINE_BODY_GRACE`` (:meth:`BodyStore.older`);
2. read every body reference in Redis: queue entries, retries and dead letters of every
   pool (:meth:`~hookline.store.references.References.body_refs`);
3. delete what was listed and is not referenced, and count it
   (``hookline_bodies_reaped_total``).

Listing first is what keeps a new webhook's body safe: a receiver enqueues within
``HOOKLINE_REQUEST_TIMEOUT`` of storing the body, which is less than the grace period, so a
body whose entry appears after the listing was too young to be listed. Entries that move
between the stream, the retry data and the dead letter while step 2 reads are covered
there (:mod:`hookline.store.references`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from hookline.bodies import BodyStore
from hookline.config import Config
from hookline.errors import StoreUnavailable
from hookline.metrics import Metrics
from hookline.store import ReaperLease, Store

log = logging.getLogger(__name__)

_DELETES = 16  # deletes in flight at once


class Reaper:
    def __init__(
        self,
        config: Config,
        store: Store,
        bodies: BodyStore,
        metrics: Metrics,
        holder: str | None = None,
    ) -> None:
        self.grace = config.body_grace
        self.interval = config.body_reap_interval
        self.store = store
        self.bodies = bodies
        self.metrics = metrics
        # Held from one pass to the next, as the operator holds its scaler lease; a holder
        # that dies hands over after three intervals.
        self.lease = ReaperLease(store.conn, ttl=3 * self.interval, holder=holder)
        self.leading = False

    async def run(self, stopping: asyncio.Event) -> None:
        """A pass every interval while this process holds the lease, until ``stopping``."""
        try:
            while not stopping.is_set():
                try:
                    self.leading = await self.lease.hold()
                    if self.leading:
                        await self.reap()
                except StoreUnavailable as exc:
                    log.warning("body reaper: %s", exc)
                except Exception:  # a bug must not stop the reaper for good
                    log.exception("body reaper: the pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.interval)
        finally:
            if self.leading:
                await self.lease.release()

    async def reap(self) -> int | None:
        """One pass; how many bodies it removed, or None when it could not learn which are
        referenced (another pass was reading, or this one stalled past its key's expiry)."""
        started = time.monotonic()
        listed = [ref async for ref in self.bodies.older(time.time() - self.grace)]
        if not listed:
            return 0
        referenced = await self.store.references.body_refs()
        if referenced is None:
            log.info("body reaper: the references could not be read in one pass; next time")
            return None
        orphans = [ref for ref in listed if ref not in referenced]
        removed = 0
        for i in range(0, len(orphans), _DELETES):
            batch = orphans[i : i + _DELETES]
            results = await asyncio.gather(
                *(self.bodies.delete(ref) for ref in batch), return_exceptions=True
            )
            done = sum(r is None for r in results)
            removed += done
            self.metrics.bodies_reaped.inc(done)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        log.log(
            logging.INFO if removed else logging.DEBUG,
            "body reaper: %d bodies older than %g s, %d referenced, %d removed in %.2f s",
            len(listed),
            self.grace,
            len(listed) - len(orphans),
            removed,
            time.monotonic() - started,
        )
        return removed
