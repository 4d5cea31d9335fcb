"""A whole hookline in the test process: receiver on a real port, dispatchers, real Redis.

Tests drive it as a sender would (HTTP POSTs to the receiver) and observe what
endpoints receive; components are the real ones, built with real dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from hookline.bodies import BodyStore, FilesystemBodyStore
from hookline.config import Config
from hookline.dispatcher import Dispatcher
from hookline.metrics import Metrics
from hookline.models import (
    Endpoint,
    SigningSecret,
    Source,
    Webhook,
    endpoint_from_spec,
    new_id,
    source_from_spec,
)
from hookline.receiver import create_app, frontdoor
from hookline.runtime import client_session
from hookline.signing import new_key, new_secret
from hookline.store import Queue, Registry, RegistryCache, Store, redis_client
from hookline.tracing import OFF, Tracing
from tests.peers import eventually, free_port

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def stack_config(redis_url: str, prefix: str, body_dir: str, **overrides: Any) -> Config:
    """Settings for tests: fast retries and reclaim, loopback endpoints allowed."""
    base = Config(
        redis_url=redis_url,
        prefix=prefix,
        receiver_host="127.0.0.1",
        receiver_port=free_port(),
        dispatcher_port=0,
        body_dir=body_dir,
        retry_base=0.05,
        retry_max_backoff=0.2,
        claim_idle=2.0,
        defer_delay=0.1,
        allow_cidrs=LOOPBACK,
        registry_refresh=5.0,
    )
    return replace(base, **overrides)


def queued(endpoint_id: str, body: bytes = b"{}") -> Webhook:
    """A JSON webhook for ``endpoint_id`` as the receiver queues it, accepted just now;
    tests enqueue these directly for a backlog larger than sending one by one makes."""
    return Webhook(
        id=new_id(),
        endpoint=endpoint_id,
        headers={"content-type": "application/json"},
        body=body,
        size=len(body),
        created_ms=int(time.time() * 1000),
    )


def hookline(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    """``hookline ARGS…`` run as a user runs it, against the stack's Redis and prefix."""
    env = dict(os.environ, HOOKLINE_REDIS_URL=config.redis_url, HOOKLINE_PREFIX=config.prefix)
    return subprocess.run(
        [sys.executable, "-m", "hookline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dispatcher_env(config: Config, **extra: str) -> dict[str, str]:
    """The environment of a ``hookline dispatcher`` process for the stack: reclaim after 1 s,
    fast retries, loopback endpoints allowed."""
    env = dict(os.environ)
    env.update(
        HOOKLINE_REDIS_URL=config.redis_url,
        HOOKLINE_PREFIX=config.prefix,
        HOOKLINE_DISPATCHER_PORT="0",
        HOOKLINE_CLAIM_IDLE="1",
        HOOKLINE_RETRY_BASE="0.05",
        HOOKLINE_RETRY_MAX_BACKOFF="0.2",
        HOOKLINE_ALLOW_CIDRS="127.0.0.0/8",
        HOOKLINE_CONCURRENCY="32",
        **extra,
    )
    return env


def dispatcher_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A real ``hookline dispatcher`` process, for tests that kill one."""
    return subprocess.Popen(
        [sys.executable, "-m", "hookline", "--log-level", "WARNING", "dispatcher"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def receiver_process(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """A real ``hookline receiver`` process on ``port`` (loopback), for tests that kill one;
    ``env`` as :func:`dispatcher_env` makes it."""
    return subprocess.Popen(
        [sys.executable, "-m", "hookline", "--log-level", "WARNING", "receiver"],
        env={**env, "HOOKLINE_RECEIVER_HOST": "127.0.0.1", "HOOKLINE_RECEIVER_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@dataclass
class Running:
    dispatcher: Dispatcher
    stop: asyncio.Event
    task: asyncio.Task[None]
    session: aiohttp.ClientSession


@dataclass
class Stack:
    config: Config
    bodies: BodyStore | None = None
    redis: aioredis.Redis = field(init=False)
    store: Store = field(init=False)
    registry: Registry = field(init=False)
    queue: Queue = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)
    dispatchers: list[Running] = field(default_factory=list)
    _stop_receiver: asyncio.Event = field(default_factory=asyncio.Event)
    _receiver: asyncio.Task[None] | None = None
    client: aiohttp.ClientSession | None = None
    secrets: dict[str, str] = field(default_factory=dict)
    caches: list[RegistryCache] = field(default_factory=list)
    # each component's tracing, as the entry points would build it (tests/tracing)
    receiver_tracing: Tracing = OFF
    dispatcher_tracing: Tracing = OFF

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.receiver_port}"

    async def start(self, dispatchers: int = 1) -> Stack:
        self.redis = redis_client(self.config)
        self.store = Store(self.redis, self.config)
        self.registry = self.store.registry
        self.queue = self.store.queue
        if self.bodies is None:
            self.bodies = FilesystemBodyStore(self.config.body_dir)
        await self.start_receiver()
        for _ in range(dispatchers):
            await self.start_dispatcher()
        self.client = aiohttp.ClientSession()
        return self

    async def start_receiver(self) -> None:
        assert self.bodies is not None
        self._stop_receiver = asyncio.Event()
        cache = RegistryCache(self.registry, self.config.registry_refresh)
        app = create_app(
            self.config, cache, self.queue, self.bodies, self.metrics, self.receiver_tracing
        )
        self._receiver = asyncio.create_task(
            frontdoor.serve(app, self.config, self.metrics, self._stop_receiver)
        )
        self.caches.append(cache)
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", self.config.receiver_port)
                w.close()
                break
            await asyncio.sleep(0.02)

    async def start_dispatcher(self, **overrides: Any) -> Running:
        assert self.bodies is not None
        config = replace(self.config, **overrides)
        session = client_session(config)
        cache = RegistryCache(self.registry, config.registry_refresh)
        self.caches.append(cache)
        dispatcher = Dispatcher(
            config,
            cache,
            self.store,
            self.bodies,
            self.metrics,
            session,
            tracing=self.dispatcher_tracing,
        )
        stop = asyncio.Event()
        running = Running(dispatcher, stop, asyncio.create_task(dispatcher.run(stop)), session)
        self.dispatchers.append(running)
        return running

    async def stop_dispatcher(self, running: Running) -> None:
        running.stop.set()
        await running.task
        await running.session.close()
        self.dispatchers.remove(running)
        self.caches.remove(running.dispatcher.cache)  # a stopped cache follows nothing

    async def stop(self) -> None:
        for running in list(self.dispatchers):
            await self.stop_dispatcher(running)
        self._stop_receiver.set()
        if self._receiver is not None:
            await self._receiver
        if self.client is not None:
            await self.client.close()
        await self.store.aclose()
        await self.redis.aclose()

    async def add_endpoint(
        self, url: str, name: str | None = None, within: float = 2.0, **spec: Any
    ) -> tuple[Endpoint, str]:
        """Register an endpoint for ``url``; returns it and its ingest key once every running
        component knows it (failing after ``within`` seconds)."""
        key = new_key()
        secret = new_secret()
        name = name or f"ep-{len(self.secrets)}"
        endpoint = endpoint_from_spec(
            f"test/{name}", {"url": url, **spec}, [key], [SigningSecret(secret)], self.config
        )
        await self.registry.put(endpoint)
        self.secrets[endpoint.id] = secret
        await self.propagated(
            lambda c: c.get(endpoint.id) == endpoint, f"{endpoint.id} registered", within
        )
        return endpoint, key

    async def add_source(self, name: str, within: float = 2.0, **spec: Any) -> tuple[Source, str]:
        """Register a source; returns it and its ingest key once every running component
        knows it. Its subscribers are endpoints added with ``source=name``."""
        key = new_key()
        source = source_from_spec(f"test/{name}", spec, [key])
        await self.registry.put_source(source)
        await self.propagated(
            lambda c: c.source(source.id) == source, f"{source.id} registered", within
        )
        return source, key

    async def propagated(
        self, check: Callable[[RegistryCache], bool], what: str, within: float = 2.0
    ) -> None:
        """Wait until every running component's registry cache satisfies ``check``."""

        async def all_caches() -> bool:
            return all(check(c) for c in self.caches if c.loaded.is_set())

        await eventually(all_caches, within, what)

    async def send(
        self, key: str | None, body: bytes = b'{"hello":"world"}', **headers: str
    ) -> tuple[int, dict[str, Any]]:
        assert self.client is not None
        h = {"Content-Type": "application/json", **headers}
        if key is not None:
            h["X-WH-Endpoint-Key"] = key
        async with self.client.post(self.url + "/webhooks/send", data=body, headers=h) as resp:
            return resp.status, await resp.json()
