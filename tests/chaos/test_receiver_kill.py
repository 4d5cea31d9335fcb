"""Crash the receiver with kill -9 while a source's events fan out: every accepted event
reaches every subscriber whose filter matches its type, and no event reaches only some.

A real ``hookline receiver`` process takes a stream of POSTs with a source's key from
several senders at once, and is killed at a random moment and started again, ``KILLS``
times. Three endpoints subscribe to the source with different filters, in two pools,
each pool served by a real ``hookline dispatcher`` process all along; every fifth body is
over the inline limit (kept once in the body store for all its deliveries). Some posts
carry an Idempotency-Key and are retried with it while their answer is lost, as
docs/delivery.md tells senders to; the others are not retried, so for some events
nobody knows whether they were queued — the check (tests/history.py,
:class:`FanoutHistory`) then asks that each went to all of its subscribers or to none.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field

import aiohttp
import pytest

from hookline.config import Config
from tests.history import FanoutHistory, Post, Receipt
from tests.peers import Endpoint, eventually, free_port, wait_ready
from tests.stack import Stack, dispatcher_env, dispatcher_process, receiver_process
from tests.test_fanout import bodies_kept, source_figures
from tests.test_reaper import scrape

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

KILLS = int(os.environ.get("HOOKLINE_CHAOS_KILLS", "20"))
TYPE = "X-WH-Event-Type"
# path → (pool, eventTypes): three filters, two pools
SUBSCRIBERS = {
    "/all": ("default", ["invoice.*", "customer.*"]),
    "/invoices": ("default", ["invoice.*"]),
    "/picky": ("side", ["invoice.paid", "customer.created"]),
}
# widths 3, 2, 2, 1 and 0: an event no subscriber takes is accepted and counted too
TYPES = ("invoice.paid", "invoice.line.added", "customer.created", "customer.deleted", "noise")
SENDERS = 4
LARGE = 5  # every fifth body is over the inline limit: it lives in the body store
GRACE = 2.0  # the dispatchers' HOOKLINE_BODY_GRACE
REAP_EVERY = 1.0  # their HOOKLINE_BODY_REAP_INTERVAL


@dataclass
class Senders:
    """``SENDERS`` loops posting events until ``stop``; what each was answered goes into
    the history. A post whose connection could not even be opened (the receiver is down)
    was not sent: it waits and tries again, whether idempotent or not."""

    url: str
    key: str
    history: FanoutHistory
    inline_limit: int
    rng: random.Random
    accepted: int = 0  # 202s so far
    in_flight: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _markers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._loop(session) for _ in range(SENDERS)))

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            n = next(self._markers)
            event_type = self.rng.choice(TYPES)
            pad = "x" * (self.inline_limit if n % LARGE == 0 else self.rng.randrange(200))
            body = f'{{"n":{n},"type":"{event_type}","pad":"{pad}"}}'.encode()
            post = Post(n, event_type, body, idempotent=n % 2 == 0)
            self.history.posts[n] = post
            await self._post(session, post)
            await asyncio.sleep(0.005)

    async def _post(self, session: aiohttp.ClientSession, post: Post) -> None:
        headers = {"X-WH-Endpoint-Key": self.key, TYPE: post.event_type}
        headers["Content-Type"] = "application/json"
        if post.idempotent:
            headers["Idempotency-Key"] = f"event-{post.marker}"
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            status: int | None = None
            self.in_flight += 1
            try:
                async with session.post(self.url, data=post.body, headers=headers) as resp:
                    status, answer = resp.status, await resp.json()
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.02)  # nothing was sent: not a try
                continue
            except (aiohttp.ClientError, TimeoutError):
                pass  # sent, and the answer lost
            finally:
                self.in_flight -= 1
            post.answers.append(status)
            if status == 202:
                post.id, post.width = answer["id"], answer["endpoints"]
                self.accepted += 1
                return
            if not post.idempotent or status not in (None, 503):
                return  # 503 and a lost answer are what a sender retries
            await asyncio.sleep(0.05)


def receipts(endpoint: Endpoint) -> list[Receipt]:
    out = []
    for r in endpoint.received:
        marker = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            marker = int(json.loads(r.body)["n"])
        out.append(
            Receipt(r.path, r.headers["webhook-id"], r.headers[TYPE.lower()], marker, r.body)
        )
    return out


def stop_process(proc: subprocess.Popen[bytes], what: str) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(30) == 0, f"the {what} did not exit cleanly on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_receiver_kill_9_never_leaves_a_partial_fan_out(
    config: Config, endpoint: Endpoint
) -> None:
    started = time.monotonic()
    stack = await Stack(config).start(dispatchers=0)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        source, key = await stack.add_source("billing")
        for path, (pool, types) in SUBSCRIBERS.items():
            await stack.add_endpoint(
                endpoint.url(path), path.strip("/"), source="billing", eventTypes=types, pool=pool
            )
        await stack.propagated(lambda c: len(c.subscribed(source.id)) == 3, "three subscribers")
        env = dispatcher_env(
            config,
            HOOKLINE_BODY_DIR=config.body_dir,
            HOOKLINE_BODY_GRACE=str(GRACE),
            HOOKLINE_BODY_REAP_INTERVAL=str(REAP_EVERY),
            # the grace must outlast it: a receiver stores a body and queues it within it
            HOOKLINE_REQUEST_TIMEOUT="1",
        )
        probes = {pool: free_port() for pool in ("default", "side")}
        for pool, probe in probes.items():
            proc = dispatcher_process(
                {**env, "HOOKLINE_POOL": pool, "HOOKLINE_DISPATCHER_PORT": str(probe)}
            )
            processes.append(proc)
            await wait_ready(probe, "dispatcher", proc)
        history = FanoutHistory({path: types for path, (_, types) in SUBSCRIBERS.items()})
        port = free_port()
        rng = random.Random(int(os.environ.get("HOOKLINE_CHAOS_SEED", time.time())))
        senders = Senders(
            f"http://127.0.0.1:{port}/webhooks/send", key, history, config.inline_limit, rng
        )
        sending = asyncio.create_task(senders.run())
        cut = 0  # posts in flight at the kills
        for _ in range(KILLS):
            receiver = receiver_process(env, port)
            processes.append(receiver)
            await wait_ready(port, "receiver", receiver)
            before = senders.accepted

            async def accepting(b: int = before) -> bool:
                return senders.accepted > b

            await eventually(accepting, 30, "the restarted receiver to accept events")
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            cut += senders.in_flight
            receiver.send_signal(signal.SIGKILL)
            receiver.wait(10)
        # A last receiver takes what the senders retry, then stops cleanly.
        receiver = receiver_process(env, port)
        processes.append(receiver)
        await wait_ready(port, "receiver", receiver)
        await asyncio.sleep(0.5)
        senders.stop.set()
        await asyncio.wait_for(sending, 90)

        queued = [p for p in history.posts.values() if p.width]

        async def all_delivered() -> bool:
            got = {(r.headers["webhook-id"], r.path) for r in endpoint.received}
            return all(
                (p.id, path) in got for p in queued for path in history.matching(p.event_type)
            )

        # Bounded; if anything is missing, the history check below names it.
        with contextlib.suppress(pytest.fail.Exception):
            await eventually(all_delivered, 60, "every accepted event at its subscribers", 0.5)

        async def drained() -> bool:
            for pool in ("default", "side"):
                backlog = await stack.store.figures.backlog(pool)
                if backlog["stream"] or backlog["retry_scheduled"]:
                    return False
            return True

        await eventually(drained, 60, "both pools drained")

        async def no_bodies() -> bool:
            on_disk = any(files for _, _, files in os.walk(config.body_dir))
            return not on_disk and not await bodies_kept(stack)

        # Bodies stored by a receiver killed before it queued their event are reaped:
        # within the grace, an interval and a pass.
        await eventually(no_bodies, GRACE + 4 * REAP_EVERY + 5, "every stored body gone")
        reaped = [await scrape(probe, "hookline_bodies_reaped_total") for probe in probes.values()]
        for proc in processes[:2]:
            stop_process(proc, "dispatcher")
        stop_process(receiver, "receiver")
        figures = await source_figures(stack, source.id)
        records = [
            await stack.redis.hlen(stack.store.keys.sending(pool))  # type: ignore[misc]
            for pool in ("default", "side")
        ]
        dead = await stack.store.dead_letters.find()
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await stack.stop()

    history.receipts = receipts(endpoint)
    report = history.check()
    got = {(r.id, r.path) for r in history.receipts}
    print(
        f"\nreceiver kill -9 x{KILLS} in {time.monotonic() - started:.0f} s, "
        f"{cut} posts in flight at the kills, {sum(reaped):.0f} stored bodies reaped "
        f"(their receiver killed before it queued them):\n{report}\nsource figures: {figures}"
    )
    assert report.accepted > 100
    assert report.valid, str(report)
    assert dead == [], [d.reason for d in dead[:5]]
    assert records == [0, 0], "attempt records outlived their deliveries"
    # The source's figures: one event per queued post (the 202s, and lost answers whose
    # event went out), each delivery counted once however often it arrived.
    assert figures["events"] >= len({p.id for p in history.posts.values() if p.id})
    assert figures["events"] == figures.get("unmatched", 0) + len({i for i, _ in got})
    assert figures["deliveries"] == figures["delivered"] == len(got), figures
    assert "dead" not in figures and "failed" not in figures, figures
