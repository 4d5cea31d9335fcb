"""Delivery: retries, dead letters, reclaiming, restarts and shutdown, against real endpoints."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace

from aiohttp import web

from hookline.config import Config
from tests.peers import (
    Endpoint,
    RedisServer,
    close_connection,
    eventually,
    fail_then_ok,
    redirect,
    slow,
    status,
)
from tests.stack import Stack, dispatcher_env, dispatcher_process, hookline


async def test_5xx_then_2xx_is_delivered_after_a_retry(stack: Stack, endpoint: Endpoint) -> None:
    ep, key = await stack.add_endpoint(endpoint.on("/flaky", fail_then_ok(2, 503)))
    _, body = await stack.send(key)
    wid = body["id"]
    await endpoint.wait_for(lambda: endpoint.ids()[wid] == 3, 10, "three attempts")

    async def settled() -> bool:
        s = await stack.store.figures.stats(ep.id)
        return s.get("delivered") == "1" and s.get("failed") == "2"

    await eventually(settled, 5, "1 delivered and 2 failed attempts in the figures")
    assert [r.headers["webhook-id"] for r in endpoint.received] == [wid] * 3
    assert await stack.store.dead_letters.find() == []


async def test_always_failing_endpoint_ends_in_the_dead_letter_with_its_reason(
    stack: Stack, endpoint: Endpoint
) -> None:
    ep, key = await stack.add_endpoint(endpoint.on("/down", status(500)), retry={"attempts": 3})
    _, body = await stack.send(key, b"payload")

    async def dead() -> bool:
        return len(await stack.store.dead_letters.find()) == 1

    await eventually(dead, 10, "the dead letter")
    (letter,) = await stack.store.dead_letters.find()
    assert letter.webhook.id == body["id"]
    assert letter.webhook.attempt == 3
    assert letter.webhook.body == b"payload"
    assert "gave up after 3 attempts" in letter.reason and "500" in letter.reason
    assert endpoint.ids()[body["id"]] == 3
    assert (await stack.store.figures.stats(ep.id))["dead"] == "1"
    assert (await stack.store.figures.backlog("default"))["retry_scheduled"] == 0


async def test_redirects_timeouts_and_dropped_connections_are_retryable_failures(
    config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(config).start()
    try:
        target = endpoint.on("/target", status(200))
        cases = {
            "/redirect": (redirect(target), "redirect (302) not followed"),
            "/slow": (slow(5), "timed out after 0.3 s"),
            "/drop": (close_connection, "connection failed"),
        }
        for path, (behaviour, _) in cases.items():
            _, key = await stack.add_endpoint(
                endpoint.on(path, behaviour),
                name=path[1:],
                retry={"attempts": 2},
                timeoutSeconds=0.3,
            )
            await stack.send(key)

        async def three_dead() -> bool:
            return len(await stack.store.dead_letters.find()) == 3

        await eventually(three_dead, 15, "three dead letters")
        reasons = {d.webhook.endpoint: d.reason for d in await stack.store.dead_letters.find()}
        for path, (_, reason) in cases.items():
            assert reason in reasons[f"test/{path[1:]}"]
        assert "/target" not in {r.path for r in endpoint.received}, "a redirect was followed"
    finally:
        await stack.stop()


async def test_retry_after_from_a_429_is_honoured(stack: Stack, endpoint: Endpoint) -> None:
    calls: list[float] = []

    async def throttled(request: object, nth: int) -> object:
        calls.append(asyncio.get_running_loop().time())
        if nth == 1:
            return await status(429, {"Retry-After": "1"})(request, nth)  # type: ignore[arg-type]
        return await status(200)(request, nth)  # type: ignore[arg-type]

    _, key = await stack.add_endpoint(endpoint.on("/t", throttled))  # type: ignore[arg-type]
    await stack.send(key)
    await endpoint.wait_for(lambda: len(endpoint.received) == 2, 5, "the retry")
    # The backoff alone would be 0.05 s; the endpoint asked for a second.
    assert calls[1] - calls[0] >= 0.9


async def test_queued_webhooks_survive_a_redis_restart_with_aof(
    own_redis: RedisServer, config: Config, endpoint: Endpoint
) -> None:
    cfg = replace(config, redis_url=own_redis.url)
    stack = await Stack(cfg).start(dispatchers=0)
    try:
        _, key = await stack.add_endpoint(endpoint.url("/a"))
        ids = [(await stack.send(key, f"n{i}".encode()))[1]["id"] for i in range(20)]
        own_redis.stop(kill=True)  # kill -9: only the AOF keeps them
        own_redis.start()
        await stack.start_dispatcher()
        await endpoint.wait_for(lambda: set(ids) <= set(endpoint.ids()), 15, "all 20 deliveries")
    finally:
        await stack.stop()


async def test_a_lost_consumer_group_is_recreated_from_the_start_of_the_stream(
    stack: Stack, endpoint: Endpoint
) -> None:
    _, key = await stack.add_endpoint(endpoint.url("/a"))
    first = (await stack.send(key))[1]["id"]
    await endpoint.wait_for(lambda: first in endpoint.ids(), 5, "the first delivery")
    running = stack.dispatchers[0]
    await stack.stop_dispatcher(running)
    second = (await stack.send(key))[1]["id"]
    await stack.redis.xgroup_destroy(stack.queue.stream("default"), "dispatchers")
    third = (await stack.send(key))[1]["id"]
    await stack.start_dispatcher()
    await endpoint.wait_for(
        lambda: {second, third} <= set(endpoint.ids()), 10, "webhooks enqueued before the group"
    )


async def test_entries_of_a_dispatcher_that_vanished_are_reclaimed(
    stack: Stack, endpoint: Endpoint
) -> None:
    _, key = await stack.add_endpoint(endpoint.url("/a"))
    await stack.stop_dispatcher(stack.dispatchers[0])
    ids = [(await stack.send(key))[1]["id"] for _ in range(5)]
    # A consumer reads the entries and is never heard of again (as after kill -9).
    taken = await stack.queue.read("default", "ghost", 10, block_ms=100)
    assert len(taken) == 5
    await stack.start_dispatcher()
    await endpoint.wait_for(lambda: set(ids) <= set(endpoint.ids()), 10, "reclaimed deliveries")


async def test_a_delivery_cut_short_by_kill_9_is_sent_again_and_counted_as_a_duplicate(
    config: Config, endpoint: Endpoint
) -> None:
    """The endpoint holds the first POST open; its dispatcher process is killed meanwhile.
    Another reclaims the entry and delivers it: the endpoint has the id twice, and the
    figures say so."""
    release = asyncio.Event()

    async def hold_the_first(_: web.Request, nth: int) -> web.StreamResponse:
        if nth == 1:
            await release.wait()
        return web.Response(status=204)

    stack = await Stack(config).start(dispatchers=0)
    doomed = dispatcher_process(dispatcher_env(config))
    try:
        ep, key = await stack.add_endpoint(endpoint.on("/held", hold_the_first))
        wid = (await stack.send(key))[1]["id"]
        await endpoint.wait_for(lambda: endpoint.ids()[wid] == 1, 30, "the first POST")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        await stack.start_dispatcher(claim_idle=1.0)
        await endpoint.wait_for(lambda: endpoint.ids()[wid] == 2, 10, "the POST after reclaim")

        async def settled() -> bool:
            return (await stack.store.figures.stats(ep.id)).get("delivered") == "1"

        await eventually(settled, 5, "the delivery recorded")
        table = await asyncio.to_thread(hookline, stack.config, "endpoints")
        assert table.returncode == 0, table.stderr
        header, row = (line.split() for line in table.stdout.splitlines()[:2])
        assert dict(zip(header[:6], row[:6], strict=True))["DUPLICATES"] == "1", table.stdout
        duplicates = stack.metrics.registry.get_sample_value("hookline_duplicate_deliveries_total")
        assert duplicates == 1
    finally:
        release.set()
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(10)
        await stack.stop()


async def test_sigterm_during_deliveries_loses_nothing(config: Config, endpoint: Endpoint) -> None:
    stack = await Stack(replace(config, shutdown_grace=0.2)).start(dispatchers=0)
    try:
        _, key = await stack.add_endpoint(endpoint.on("/slow", slow(1.0)))
        ids = {(await stack.send(key, f"{i}".encode()))[1]["id"] for i in range(30)}
        first = await stack.start_dispatcher()
        await endpoint.wait_for(lambda: len(endpoint.received) >= 10, 5, "deliveries in flight")
        # What SIGTERM does: stop reading, wait the grace, release the rest.
        await stack.stop_dispatcher(first)
        await stack.start_dispatcher()
        await endpoint.wait_for(lambda: ids <= set(endpoint.ids()), 20, "every webhook delivered")
    finally:
        await stack.stop()


async def test_410_gone_disables_the_endpoint_and_dead_letters_what_is_queued(
    stack: Stack, endpoint: Endpoint
) -> None:
    ep, key = await stack.add_endpoint(endpoint.on("/gone", status(410)))
    await stack.send(key)

    async def disabled() -> bool:
        return ep.id in await stack.registry.disabled()

    await eventually(disabled, 5, "the endpoint to be disabled")
    await stack.propagated(lambda c: c.disabled_reason(ep.id) is not None, "disabled state")
    status_, body = await stack.send(key)
    assert (status_, body["error"]) == (409, "endpoint_disabled")
    assert "410" in body["reason"]
    (letter,) = await stack.store.dead_letters.find()
    assert "410" in letter.reason


async def test_the_endpoint_gets_exactly_the_documented_headers(
    stack: Stack, endpoint: Endpoint
) -> None:
    """docs/delivery.md names every header a delivery carries: the body's own two, the
    endpoint's allow list, the three Standard Webhooks headers, User-Agent, Host and
    Content-Length — nothing aiohttp would add by itself (Accept, Accept-Encoding, a
    made-up Content-Type)."""
    _, key = await stack.add_endpoint(endpoint.url("/h"), forwardHeaders=["X-Event-Type"])
    sent = {"X-Event-Type": "invoice.paid", "X-Other": "not forwarded", "Accept": "text/x"}
    assert (await stack.send(key, b'{"n":1}', **sent))[0] == 202
    await endpoint.wait_for(lambda: len(endpoint.received) == 1, 10, "the delivery")
    got = {name.lower() for name in endpoint.received[0].headers}
    assert got == {
        "host",
        "content-length",
        "content-type",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-event-type",
    }
