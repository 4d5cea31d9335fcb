"""Crash a dispatcher process with kill -9 at random moments; every accepted webhook arrives.

Dispatchers run as real ``hookline dispatcher`` processes; the receiver, Redis
and the endpoint are real too. A sender keeps posting while dispatchers are
started and killed; a history of accepted ids and deliveries is checked at
the end (see tests/history.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from hookline.config import Config
from tests.history import History
from tests.peers import Endpoint, free_port, wait_ready
from tests.stack import Stack

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

KILLS = int(os.environ.get("HOOKLINE_CHAOS_KILLS", "20"))


def dispatcher_env(config: Config, **extra: str) -> dict[str, str]:
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


def start_dispatcher(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hookline", "--log-level", "WARNING", "dispatcher"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def sender(stack: Stack, key: str, history: History, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        status, body = await stack.send(key, f'{{"n":{n}}}'.encode())
        if status == 202:
            history.accepted.add(body["id"])
        else:
            history.refused += 1
        await asyncio.sleep(0.004)


@pytest.fixture
async def slowish_endpoint() -> AsyncIterator[Endpoint]:
    """Answers after 0-30 ms, so that deliveries are in flight when a kill lands."""
    server = Endpoint()

    async def answer(_: web.Request, __: int) -> web.StreamResponse:
        await asyncio.sleep(random.uniform(0, 0.03))
        return web.Response(status=204)

    server.on("/hook", answer)
    await server.start()
    yield server
    await server.stop()


async def run_kill_campaign(
    stack: Stack, endpoint: Endpoint, env: dict[str, str], kills: int
) -> History:
    _, key = await stack.add_endpoint(endpoint.url("/hook"))
    history = History()
    stop_sending = asyncio.Event()
    sending = asyncio.create_task(sender(stack, key, history, stop_sending))
    rng = random.Random(int(os.environ.get("HOOKLINE_CHAOS_SEED", time.time())))
    for _ in range(kills):
        before = len(endpoint.received)
        proc = start_dispatcher(env)
        # Kill at a random moment once it is delivering.
        await endpoint.wait_for(
            lambda b=before: len(endpoint.received) > b, 30, "a new dispatcher to deliver"
        )
        await asyncio.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    stop_sending.set()
    await sending
    # A fresh dispatcher finishes the job, then stops cleanly on SIGTERM.
    probe_port = free_port()
    final = start_dispatcher({**env, "HOOKLINE_DISPATCHER_PORT": str(probe_port)})
    try:
        await wait_ready(probe_port, "dispatcher")
        # Bounded; if anything is missing, the history check below names it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                endpoint.until(lambda: history.accepted <= set(endpoint.ids())), 60
            )
        final.send_signal(signal.SIGTERM)
        assert final.wait(30) == 0, "the dispatcher did not exit cleanly on SIGTERM"
    finally:
        if final.poll() is None:
            final.kill()
    history.deliveries = endpoint.ids()
    return history


async def test_accepted_webhooks_survive_repeated_dispatcher_kill_9(
    config: Config, slowish_endpoint: Endpoint
) -> None:
    stack = await Stack(config).start(dispatchers=0)
    try:
        history = await run_kill_campaign(stack, slowish_endpoint, dispatcher_env(config), KILLS)
    finally:
        await stack.stop()
    report = history.check()
    print(f"\nkill -9 x{KILLS}: {report}")
    assert report.accepted > 100
    assert report.valid, str(report)


async def test_fault_window_between_post_and_ack_yields_duplicates_with_the_same_id(
    config: Config, slowish_endpoint: Endpoint
) -> None:
    """With the window between the endpoint's 2xx and the acknowledgement widened, kills
    land in it: those webhooks are delivered again, with the same webhook-id and body."""
    env = dispatcher_env(config, HOOKLINE_FAULT_ACK_DELAY="0.3")
    stack = await Stack(config).start(dispatchers=0)
    try:
        history = await run_kill_campaign(stack, slowish_endpoint, env, 5)
    finally:
        await stack.stop()
    report = history.check()
    print(f"\nkill -9 x5 with a 0.3 s ack window: {report}")
    assert report.valid, str(report)
    assert report.duplicated, "no duplicates: the fault window did not widen anything"
    for wid in report.duplicated:
        copies = [r for r in slowish_endpoint.received if r.headers["webhook-id"] == wid]
        assert len({r.body for r in copies}) == 1, "a duplicate carried a different body"
