"""Everything hookline keeps in Redis; the only package that talks to Redis.

* :mod:`~hookline.store.keys`         every key family, named in one place
* :mod:`~hookline.store.scripts`      every Lua script
* :mod:`~hookline.store.connection`   the client factory, the pipelined connection, the
  one script runner and the one error mapping (Redis errors → ``StoreUnavailable``)
* :mod:`~hookline.store.wire`         the pipelined connection itself
* :mod:`~hookline.store.queue`        streams, the retry schedule, settling
* :mod:`~hookline.store.deadletters`  the dead letter
* :mod:`~hookline.store.figures`      per-endpoint figures and health, backlogs
* :mod:`~hookline.store.registry`     endpoint records and the cache processes read
* :mod:`~hookline.store.leases`       in-flight leases, rate tokens, probes, the scaler and
  reaper leases
* :mod:`~hookline.store.references`   every body reference, read for the body reaper

:class:`Store` builds them all over one connection; entry points make one per process
and hand its parts to the components.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from hookline.config import Config
from hookline.store.connection import Connection, redis_client
from hookline.store.deadletters import DeadLetter, DeadLetters
from hookline.store.figures import Figures, Waiting
from hookline.store.keys import GROUP, Keys
from hookline.store.leases import Lease, Leases, ReaperLease, ScalerLease
from hookline.store.queue import Entry, Queue, Settled
from hookline.store.references import References
from hookline.store.registry import SOURCE, Registry, RegistryCache, Subscriptions

__all__ = [
    "GROUP",
    "SOURCE",
    "Connection",
    "DeadLetter",
    "DeadLetters",
    "Entry",
    "Figures",
    "Keys",
    "Lease",
    "Leases",
    "Queue",
    "ReaperLease",
    "References",
    "Registry",
    "RegistryCache",
    "ScalerLease",
    "Settled",
    "Store",
    "Subscriptions",
    "Waiting",
    "redis_client",
]


class Store:
    """The store of one Redis prefix. ``Store(redis, config)`` uses the caller's client
    (the caller closes it); :meth:`connect` makes one that :meth:`aclose` closes too."""

    def __init__(self, redis: aioredis.Redis, config: Config) -> None:
        self.conn = Connection(redis, config.prefix)
        self.redis = redis
        self.keys = self.conn.keys
        self.queue = Queue(
            self.conn,
            idempotency_ttl=config.idempotency_ttl,
            circuit_threshold=config.circuit_threshold,
            circuit_cooldown=config.circuit_cooldown,
            attempt_log=config.attempt_log,
        )
        self.dead_letters = DeadLetters(self.conn)
        self.figures = Figures(self.conn, config.attempt_log)
        self.registry = Registry(self.conn)
        self.leases = Leases(self.conn)
        self.references = References(self.conn)
        self._owns_redis = False

    @classmethod
    def connect(cls, config: Config) -> Store:
        store = cls(redis_client(config), config)
        store._owns_redis = True
        return store

    async def ping(self) -> None:
        await self.conn.ping()

    async def aclose(self) -> None:
        await self.conn.aclose()
        if self._owns_redis:
            await self.redis.aclose()
