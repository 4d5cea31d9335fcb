"""The core pipeline end to end: sender → receiver → Redis stream → dispatcher → endpoint."""

from __future__ import annotations

from tests.peers import Endpoint, eventually, fail_then_ok
from tests.stack import Stack


async def test_accepted_webhook_is_delivered_once(stack: Stack, endpoint: Endpoint) -> None:
    ep, key = await stack.add_endpoint(endpoint.on("/a", fail_then_ok(0)))
    status, body = await stack.send(key, b'{"n":1}')
    assert status == 202
    wid = body["id"]
    await endpoint.wait_for(lambda: wid in endpoint.ids(), 5, "the delivery")
    got = endpoint.received[0]
    assert got.body == b'{"n":1}'
    assert got.headers["webhook-id"] == wid
    assert got.headers["content-type"] == "application/json"
    assert endpoint.ids()[wid] == 1

    async def counted() -> bool:
        return (await stack.store.figures.stats(ep.id)).get("delivered") == "1"

    await eventually(counted, 5, "the delivery to be counted")
