"""The connection to Redis every part of the store shares, and its one script runner.

:func:`redis_client` is the factory every process uses (the entry points build it);
:class:`Connection` holds that client for reads, the pipelined :class:`Wire` for
writes and scripts, the :class:`~hookline.store.keys.Keys` of the configured prefix,
and :meth:`Connection.errors`, the one place where Redis's and the socket's exceptions
become :class:`~hookline.errors.StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hookline.config import Config
from hookline.errors import StoreNotReached, StoreUnavailable, map_exceptions
from hookline.store.keys import Keys
from hookline.store.scripts import Script
from hookline.store.wire import NotSent, Wire, WireError, pack

# First match wins: a command that never left says so.
_UNAVAILABLE: dict[type[Exception], type[StoreUnavailable]] = {NotSent: StoreNotReached}
_UNAVAILABLE.update(dict.fromkeys((RedisError, OSError, WireError), StoreUnavailable))


def redis_client(config: Config) -> aioredis.Redis:
    return aioredis.from_url(
        config.redis_url,
        socket_connect_timeout=config.redis_timeout,
        # Above the 1 s XREADGROUP block, so a blocking read is not taken for a dead link.
        socket_timeout=config.redis_timeout + 1.0,
        health_check_interval=15,
    )


def text(value: bytes | str) -> str:
    """A reply as text (redis-py answers bytes)."""
    return value.decode() if isinstance(value, bytes) else value


class Connection:
    """Reads through redis-py, writes and scripts through one pipelined connection of its
    own (opened on first use; :meth:`aclose` closes it, the redis-py client stays the
    caller's)."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.wire = Wire(redis)

    @staticmethod
    def errors(what: str) -> contextlib.AbstractContextManager[None]:
        """Redis, socket and wire errors inside become ``StoreUnavailable("<what>: …")``."""
        return map_exceptions(_UNAVAILABLE, what)

    async def call(self, what: str, *command: bytes | str | int) -> Any:
        """One command on the pipelined connection."""
        with self.errors(what):
            return await self.wire.call(pack(*command))

    async def run(self, what: str, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a script by its SHA; Redis that lost its script cache gets the source (the
        EVAL, source and all, is packed only then)."""
        command = pack("EVALSHA", script.sha, len(keys), *keys, *args)
        fallback = functools.partial(pack, "EVAL", script.source, len(keys), *keys, *args)
        with self.errors(what):
            return await self.wire.call(command, fallback)

    async def ping(self) -> None:
        """A round trip on the connection every write takes (opening it if needed)."""
        await self.call("redis", "PING")

    async def aclose(self) -> None:
        await self.wire.aclose()
