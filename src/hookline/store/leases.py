"""Leases and locks in Redis: what several processes must agree on.

* the dispatchers' shared admission of one attempt to an endpoint — a lease among
  ``spec.maxInFlight`` that expires after the endpoint's timeout (so a crashed
  dispatcher's slots free themselves) and a token of ``spec.rateLimit``'s bucket,
  refilled from Redis's own clock;
* the half-open circuit's single probe;
* :class:`Lease`, one holder at a time: :class:`ScalerLease` (which operator replica
  scales the dispatchers), :class:`ReaperLease` (which dispatcher reaps unreferenced
  bodies), and a reaper pass's own (:mod:`hookline.store.references`).

The decisions around them (when to ask, how long to wait) are the callers':
:mod:`hookline.dispatcher.gates`, :mod:`hookline.dispatcher.reaper` and
:mod:`hookline.operator.scaler`.
"""

from __future__ import annotations

import contextlib
import os
import socket

from hookline.errors import StoreUnavailable
from hookline.models import Endpoint
from hookline.store import scripts
from hookline.store.connection import Connection


class Leases:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.keys = conn.keys

    async def admit(self, endpoint: Endpoint, lease: str) -> int:
        """Take an in-flight lease and a rate token for one attempt: 0 when admitted, -1 at
        ``maxInFlight``, else the milliseconds until the bucket has a token."""
        rate = endpoint.rate_limit
        keys = [self.keys.in_flight(endpoint.id), self.keys.rate(endpoint.id)]
        args: list[str | int | float] = [
            lease,
            endpoint.max_in_flight or 0,
            int((endpoint.timeout_seconds + 5) * 1000),
            rate.per_second if rate else 0,
            rate.burst if rate else 0,
        ]
        return int(await self.conn.run("gates", scripts.ACQUIRE, keys, args))

    async def claim_probe(self, endpoint: Endpoint) -> bool:
        """Whether this process sends the half-open circuit's one probe."""
        ttl = int((endpoint.timeout_seconds + 5) * 1000)
        key = self.keys.probe(endpoint.id)
        return bool(await self.conn.call("gates", "SET", key, "1", "NX", "PX", ttl))

    async def release(self, endpoint_id: str, lease: str | None, probe: bool) -> None:
        """Give back an attempt's lease and probe; both expire on their own if this fails."""
        with contextlib.suppress(StoreUnavailable):
            if lease is not None:
                await self.conn.call("gates", "ZREM", self.keys.in_flight(endpoint_id), lease)
            if probe:
                await self.conn.call("gates", "DEL", self.keys.probe(endpoint_id))


class Lease:
    """One holder at a time among the processes sharing a Redis prefix; it lapses ``ttl``
    seconds after its holder last held it, so a crashed holder hands over by itself."""

    def __init__(
        self, conn: Connection, key: str, ttl: float, holder: str | None = None, what: str = ""
    ) -> None:
        self.conn = conn
        self.key = key
        self.ttl_ms = int(ttl * 1000)
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.what = what or key

    async def hold(self) -> bool:
        """Take the lease when it is free, extend it when it is ours."""
        args = [self.holder, self.ttl_ms]
        return bool(await self.conn.run(self.what, scripts.HOLD_LEASE, [self.key], args))

    async def extend(self) -> bool:
        """Extend the lease only if it is still ours; False once it lapsed (even if free)."""
        args = [self.holder, self.ttl_ms]
        return bool(await self.conn.run(self.what, scripts.EXTEND_LEASE, [self.key], args))

    async def release(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.conn.run(self.what, scripts.RELEASE_LEASE, [self.key], [self.holder])


class ScalerLease(Lease):
    """One scaler at a time among the operator replicas sharing a Redis prefix."""

    def __init__(self, conn: Connection, ttl: float, holder: str | None = None) -> None:
        super().__init__(conn, conn.keys.scaler_lease, ttl, holder, "scaler lease")


class ReaperLease(Lease):
    """One body reaper at a time among the dispatchers sharing a Redis prefix."""

    def __init__(self, conn: Connection, ttl: float, holder: str | None = None) -> None:
        super().__init__(conn, conn.keys.reaper_lease, ttl, holder, "reaper lease")
