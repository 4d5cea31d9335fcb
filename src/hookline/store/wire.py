"""A pipelined Redis connection for the store's writes and scripts: packed RESP out, hiredis in.

:class:`~hookline.store.queue.Queue` sends every enqueue and every settled outcome
through one :class:`Wire`. The commands issued during one turn of the event
loop leave in a single write, and replies are handed back in order as they
arrive, so several batches can be in flight at once and the only Python work
per command is packing it and resolving its future. redis-py's client keeps
everything else (blocking reads, figures, registry reads): a blocking command
must never go through a wire, since every command behind it would wait.

The connection is opened on first use with the redis-py client's own settings
(host and port or Unix socket, TLS, user and password, database) and again
after it is lost. Every failure is a :class:`WireError` for the commands it
concerns: the connection refused or lost (everything in flight fails; what was
not yet written waits for the next connection), no reply for the client's
socket timeout (the connection is dropped), or an error reply (that command
only). A command sent with a ``fallback`` (what makes the ``EVAL`` for an
``EVALSHA``, packed only if needed) is sent again as the fallback when Redis does
not know the script, as after a restart: a script that failed with NOSCRIPT did
nothing.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection


class WireError(Exception):
    """A command got no reply (connection refused, lost, silent) or an error reply."""


class NotSent(WireError):
    """The command never left this process: Redis cannot have run it."""


Fallback = Callable[[], bytes]  # makes the command to send instead after a NOSCRIPT


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP, packed by hiredis."""
    return hiredis.pack_command(args)  # type: ignore[arg-type,no-any-return]


class _Protocol(asyncio.Protocol):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.wire._open_protocols.add(self)

    def data_received(self, data: bytes) -> None:
        self.wire._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.wire._open_protocols.discard(self)
        self.wire._lost(self, exc)


class Wire:
    """One pipelined connection; :meth:`call` is safe to use from any number of tasks."""

    def __init__(self, client: aioredis.Redis) -> None:
        pool = client.connection_pool
        self._cls = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        self.timeout = float(self._kwargs.get("socket_timeout") or 5.0)
        self.connect_timeout = float(self._kwargs.get("socket_connect_timeout") or self.timeout)
        self._transport: asyncio.Transport | None = None
        self._ready = False  # connected and past AUTH/SELECT
        self._protocol: _Protocol | None = None
        self._open_protocols: set[_Protocol] = set()  # until their socket is closed
        self._reader = hiredis.Reader()
        # Written, awaiting their reply, in order: (future, fallback).
        self._waiting: collections.deque[tuple[asyncio.Future[Any], Fallback | None]] = (
            collections.deque()
        )
        # Not written yet (no connection, or later in this turn of the loop).
        self._queued: list[tuple[bytes, asyncio.Future[Any], Fallback | None]] = []
        self._scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._replies = 0
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        # The event loop of its first call, kept: asyncio.get_running_loop() makes a
        # getpid() system call each time on Python 3.11 (its check for a fork; ~0.14 µs
        # here — a sampling profile once made it look far dearer, see docs/benchmarks.md).
        # A wire's socket is that loop's anyway.
        self._loop: asyncio.AbstractEventLoop | None = None

    def call(self, command: bytes, fallback: Fallback | None = None) -> asyncio.Future[Any]:
        """Send a packed command; the future gets its reply or a :class:`WireError`."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            fut.set_exception(NotSent("the connection is closed"))
            return fut
        self._queued.append((command, fut, fallback))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        self._abort(WireError("the connection is closed"))
        self._fail_queued(NotSent("the connection is closed"))
        if self._open_protocols:  # the aborted socket closes on the loop's next turn
            await asyncio.wait([p.closed for p in self._open_protocols], timeout=1.0)

    # -- writing

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queued:
            return
        if not self._ready:
            if self._connecting is None and not self._closed:
                self._connecting = asyncio.create_task(self._connect())
            return  # written once connected
        assert self._transport is not None
        queued, self._queued = self._queued, []
        self._transport.write(b"".join([c for c, _, _ in queued]))
        self._waiting.extend((f, fb) for _, f, fb in queued)
        if self._watchdog is None:
            self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self.timeout, self._watch, self._replies)

    def _watch(self, seen: int) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        if self._replies == seen:
            self._abort(WireError(f"Redis did not answer in {self.timeout:g} s"))
        else:
            self._arm()

    # -- reading

    def _received(self, protocol: _Protocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._abort(WireError(f"unreadable reply from Redis: {exc}"))
                return
            if reply is False:
                break
            self._replies += 1
            try:
                fut, fallback = waiting.popleft()
            except IndexError:
                self._abort(WireError(f"unexpected reply from Redis: {reply!r:.100}"))
                return
            if isinstance(reply, hiredis.ReplyError):
                if fallback is not None and str(reply).startswith("NOSCRIPT"):
                    self._queued.append((fallback(), fut, None))
                    if not self._scheduled:
                        self._scheduled = True
                        asyncio.get_running_loop().call_soon(self._flush)
                elif not fut.done():
                    fut.set_exception(WireError(str(reply)))
            elif not fut.done():
                fut.set_result(reply)

    # -- the connection

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            self._abort(WireError(f"connection to Redis lost: {exc or 'closed'}"))

    def _abort(self, error: WireError) -> None:
        """Drop the connection; everything awaiting a reply fails, the queue stays."""
        transport, self._transport, self._protocol = self._transport, None, None
        self._ready = False
        if transport is not None:
            transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._reader = hiredis.Reader()
        waiting, self._waiting = self._waiting, collections.deque()
        for fut, _ in waiting:
            if not fut.done():
                fut.set_exception(error)

    def _fail_queued(self, error: NotSent) -> None:
        queued, self._queued = self._queued, []
        for _, fut, _ in queued:
            if not fut.done():
                fut.set_exception(error)

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(self._open(), self.connect_timeout)
        except asyncio.CancelledError:
            self._abort(WireError("the connection is closed"))
            raise
        except Exception as exc:  # refused, timed out, TLS, AUTH: whatever it is, say so
            self._abort(WireError(f"Redis: {exc}"))
            self._fail_queued(NotSent(f"cannot connect to Redis: {exc or type(exc).__name__}"))
        finally:
            self._connecting = None
        self._flush()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        kw = self._kwargs
        protocol = _Protocol(self)
        if issubclass(self._cls, UnixDomainSocketConnection):
            transport, _ = await loop.create_unix_connection(lambda: protocol, kw["path"])
        else:
            ssl = None
            if issubclass(self._cls, SSLConnection):
                ssl = self._cls(**kw).ssl_context.get()
            host, port = kw.get("host", "localhost"), kw.get("port", 6379)
            transport, _ = await loop.create_connection(lambda: protocol, host, port, ssl=ssl)
        # Connected but not ready: commands wait in the queue until the handshake is done.
        self._transport, self._protocol = transport, protocol
        username, password = kw.get("username"), kw.get("password")
        provider = kw.get("credential_provider")
        if provider is not None:
            creds = await provider.get_credentials_async()
            username, password = (None, creds[0]) if len(creds) == 1 else creds[:2]
        hello = []
        if password:
            hello.append(pack("AUTH", *([username] if username else []), password))
        if kw.get("db"):
            hello.append(pack("SELECT", int(kw["db"])))
        if hello:
            futures = [loop.create_future() for _ in hello]
            self._waiting.extend((f, None) for f in futures)
            transport.write(b"".join(hello))
            await asyncio.gather(*futures)
        self._ready = True
