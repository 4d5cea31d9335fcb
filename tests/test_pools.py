"""Dispatcher pools: each dispatcher serves one pool's stream and retry schedule, an endpoint's
``pool`` picks where its new webhooks go, and moving it loses nothing already queued."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from hookline.config import Config
from tests.peers import Behaviour, Endpoint, eventually
from tests.stack import Stack


def busy_first(retry_after: int) -> Behaviour:
    """503 with ``Retry-After`` for a webhook's first attempt, 200 afterwards."""

    async def answer(_: web.Request, nth: int) -> web.StreamResponse:
        if nth == 1:
            return web.Response(status=503, headers={"Retry-After": str(retry_after)})
        return web.json_response({"ok": True})

    return answer


async def test_moved_endpoint_sends_new_webhooks_to_its_new_pool_and_loses_no_queued_one(
    config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(config).start(dispatchers=0)
    try:
        old = await stack.start_dispatcher(pool="old")
        await stack.start_dispatcher(pool="new")
        url = endpoint.on("/moving", busy_first(3))
        ep, key = await stack.add_endpoint(url, name="moving", pool="old")

        async def send(n: int) -> list[str]:
            ids = []
            for i in range(n):
                code, body = await stack.send(key, f'{{"n":{i}}}'.encode())
                assert code == 202, body
                ids.append(body["id"])
            return ids

        # In the old pool's retry schedule: answered 503, due again in 3 s.
        retrying = await send(3)
        await endpoint.wait_for(
            lambda: all(endpoint.ids()[i] == 1 for i in retrying), 5, "the first attempts"
        )

        async def scheduled() -> bool:
            return (await stack.store.figures.backlog("old"))["retry_scheduled"] == 3

        await eventually(scheduled, 5, "three retries scheduled in the old pool")
        # In the old pool's stream, no dispatcher of the old pool running.
        await stack.stop_dispatcher(old)
        waiting = await send(3)

        moved = replace(ep, pool="new")
        await stack.registry.put(moved)
        await stack.propagated(lambda c: c.get(ep.id) == moved, "the move to the new pool")
        fresh = await send(3)
        await endpoint.wait_for(
            lambda: all(endpoint.ids()[i] == 1 for i in fresh), 5, "new webhooks via the new pool"
        )
        # The new pool's dispatcher takes nothing of the old pool, not even retries now due.

        async def due() -> bool:
            return (await stack.store.figures.backlog("old"))["retry_due"] == 3

        await eventually(due, 6, "the old pool's retries to come due")
        assert (await stack.store.figures.backlog("old"))["stream"] == 3
        assert (await stack.store.figures.backlog("new"))["stream"] == 0
        assert all(endpoint.ids()[i] == 1 for i in retrying)
        assert not any(i in endpoint.ids() for i in waiting)

        # The old pool's dispatchers come back and finish what was queued there.
        await stack.start_dispatcher(pool="old")
        await endpoint.wait_for(
            lambda: (
                all(endpoint.ids()[i] == 2 for i in retrying)
                and all(endpoint.ids()[i] == 1 for i in waiting)
            ),
            10,
            "the old pool's stream and retries delivered",
        )

        # Every webhook's first attempt was answered 503: the fresh ones wait on the new
        # pool's retry schedule too, until their second attempt is delivered.
        async def empty() -> bool:
            old_pool, new_pool = (
                await stack.store.figures.backlog("old"),
                await stack.store.figures.backlog("new"),
            )
            return sum(old_pool.values()) + sum(new_pool.values()) == 0

        await eventually(empty, 5, "both pools empty")
        assert set(endpoint.ids()) == {*retrying, *waiting, *fresh}
        assert (await stack.store.figures.stats(ep.id))["delivered"] == "9"
    finally:
        await stack.stop()
