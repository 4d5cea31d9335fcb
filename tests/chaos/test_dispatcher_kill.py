"""Crash a dispatcher process with kill -9 at random moments; every accepted webhook arrives.

Dispatchers run as real ``hookline dispatcher`` processes; the receiver, Redis
and the endpoint are real too. A sender keeps posting while dispatchers are
started and killed; a history of accepted ids and deliveries is checked at
the end (see tests/history.py), and so are the duplicates Redis counted against
those the endpoint saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from hookline.config import Config
from tests.history import History
from tests.peers import Endpoint, eventually, free_port, wait_ready
from tests.stack import Stack, dispatcher_env, dispatcher_process

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

KILLS = int(os.environ.get("HOOKLINE_CHAOS_KILLS", "20"))


# Every fifth webhook has a body over the inline limit: it lives in the body store.
LARGE = 5
GRACE = 2.0  # the dispatchers' HOOKLINE_BODY_GRACE
REAP_EVERY = 1.0  # their HOOKLINE_BODY_REAP_INTERVAL


async def sender(stack: Stack, key: str, history: History, stop: asyncio.Event) -> None:
    n = 0
    pad = "x" * (stack.config.inline_limit + 1)
    while not stop.is_set():
        n += 1
        data = f'{{"n":{n},"pad":"{pad}"}}' if n % LARGE == 0 else f'{{"n":{n}}}'
        status, body = await stack.send(key, data.encode())
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


@dataclass
class Campaign:
    history: History
    duplicates_counted: int  # the endpoint's `duplicates` in Redis
    records_left: int  # attempt records still in Redis once everything was delivered
    bodies_gone_after: float  # seconds from the drained stream to the last stored body gone

    @property
    def duplicates_seen(self) -> int:
        """Deliveries the endpoint received of an id it already had."""
        return sum(n - 1 for n in self.history.deliveries.values())


async def run_kill_campaign(
    stack: Stack, endpoint: Endpoint, env: dict[str, str], kills: int
) -> Campaign:
    ep, key = await stack.add_endpoint(endpoint.url("/hook"))
    env = {
        **env,
        "HOOKLINE_BODY_DIR": stack.config.body_dir,
        "HOOKLINE_BODY_GRACE": str(GRACE),
        "HOOKLINE_BODY_REAP_INTERVAL": str(REAP_EVERY),
        "HOOKLINE_REQUEST_TIMEOUT": "1",  # the grace must outlast it; dispatchers read none
    }
    history = History()
    stop_sending = asyncio.Event()
    sending = asyncio.create_task(sender(stack, key, history, stop_sending))
    rng = random.Random(int(os.environ.get("HOOKLINE_CHAOS_SEED", time.time())))
    for _ in range(kills):
        before = len(endpoint.received)
        proc = dispatcher_process(env)
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
    final = dispatcher_process({**env, "HOOKLINE_DISPATCHER_PORT": str(probe_port)})
    try:
        await wait_ready(probe_port, "dispatcher")
        # Bounded; if anything is missing, the history check below names it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                endpoint.until(lambda: history.accepted <= set(endpoint.ids())), 60
            )
        # Also what the killed ones had already sent: reclaimed and delivered again.
        await eventually(lambda: drained(stack), 60, "the stream to be drained")
        drained_at = time.monotonic()
        # Bodies whose delete a kill cut short are reaped: within the grace, an interval
        # and the killed reaper's lease (three intervals), whatever the killing left.
        await eventually(
            lambda: no_bodies(stack), GRACE + 4 * REAP_EVERY + 5, "every stored body gone"
        )
        bodies_gone_after = time.monotonic() - drained_at
        final.send_signal(signal.SIGTERM)
        assert final.wait(30) == 0, "the dispatcher did not exit cleanly on SIGTERM"
    finally:
        if final.poll() is None:
            final.kill()
    history.deliveries = endpoint.ids()
    stats = await stack.store.figures.stats(ep.id)
    records = await stack.redis.hlen(stack.store.keys.sending("default"))  # type: ignore[misc]
    return Campaign(history, int(stats.get("duplicates", 0)), records, bodies_gone_after)


async def no_bodies(stack: Stack) -> bool:
    return not any(files for _, _, files in os.walk(stack.config.body_dir))


async def drained(stack: Stack) -> bool:
    backlog = await stack.store.figures.backlog("default")
    return backlog["stream"] == backlog["retry_scheduled"] == 0


def check_duplicates(campaign: Campaign) -> None:
    """Every repeat the endpoint saw was counted; a count above what it saw comes only from
    a dispatcher killed between recording an attempt and sending it (docs/delivery.md)."""
    assert campaign.duplicates_counted >= campaign.duplicates_seen, (
        f"Redis counted {campaign.duplicates_counted} duplicates, "
        f"the endpoint saw {campaign.duplicates_seen}"
    )
    assert campaign.records_left == 0, "attempt records outlived their webhooks"


async def test_accepted_webhooks_survive_repeated_dispatcher_kill_9(
    config: Config, slowish_endpoint: Endpoint
) -> None:
    stack = await Stack(config).start(dispatchers=0)
    try:
        campaign = await run_kill_campaign(stack, slowish_endpoint, dispatcher_env(config), KILLS)
    finally:
        await stack.stop()
    report = campaign.history.check()
    print(
        f"\nkill -9 x{KILLS}: {report} duplicates counted={campaign.duplicates_counted} "
        f"seen={campaign.duplicates_seen} stored bodies gone "
        f"{campaign.bodies_gone_after:.1f} s after the stream drained"
    )
    assert report.accepted > 100
    assert report.valid, str(report)
    check_duplicates(campaign)


async def test_fault_window_between_post_and_ack_yields_duplicates_with_the_same_id(
    config: Config, slowish_endpoint: Endpoint
) -> None:
    """With the window between the endpoint's 2xx and the acknowledgement widened, kills
    land in it: those webhooks are delivered again, with the same webhook-id and body."""
    env = dispatcher_env(config, HOOKLINE_FAULT_ACK_DELAY="0.3")
    stack = await Stack(config).start(dispatchers=0)
    try:
        campaign = await run_kill_campaign(stack, slowish_endpoint, env, 5)
    finally:
        await stack.stop()
    report = campaign.history.check()
    print(
        f"\nkill -9 x5 with a 0.3 s ack window: {report} "
        f"duplicates counted={campaign.duplicates_counted} seen={campaign.duplicates_seen}"
    )
    assert report.valid, str(report)
    assert report.duplicated, "no duplicates: the fault window did not widen anything"
    check_duplicates(campaign)
    for wid in report.duplicated:
        copies = [r for r in slowish_endpoint.received if r.headers["webhook-id"] == wid]
        assert len({r.body for r in copies}) == 1, "a duplicate carried a different body"
