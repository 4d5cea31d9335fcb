"""Fan-out: a source's key sends one event to every subscribed endpoint whose filter
matches its type — each delivered, signed, retried and dead-lettered on its own, the body
kept once. Real Redis, real receiver and dispatchers, real HTTP endpoints (and the GCS
emulator for large bodies)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

from hookline.config import Config
from hookline.models import Webhook
from tests.peers import Endpoint, GcsServer, eventually, ok, slow, status
from tests.stack import Stack, hookline
from tests.test_gcs import INLINE, gcs_stack, new_bucket

TYPE = "X-WH-Event-Type"


async def send_event(
    stack: Stack, key: str, event_type: str | None, body: bytes = b'{"n":1}', **headers: str
) -> tuple[int, dict[str, Any]]:
    if event_type is not None:
        headers[TYPE] = event_type
    return await stack.send(key, body, **headers)


async def queued(stack: Stack, pool: str = "default") -> list[Webhook]:
    raw = await stack.redis.xrange(stack.queue.stream(pool))
    return [Webhook.unpack(fields[b"d"]) for _, fields in raw]


async def bodies_kept(stack: Stack) -> list[bytes]:
    return [k async for k in stack.redis.scan_iter(match=f"{stack.config.prefix}:body:*")]


def kept_on_disk(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.exists() else []


async def source_figures(stack: Stack, source_id: str) -> dict[str, int]:
    raw = await stack.redis.hgetall(stack.store.keys.source_stats(source_id))
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_each_endpoint_gets_exactly_its_types_signed_with_its_own_secret(
    stack: Stack, endpoint: Endpoint
) -> None:
    source, key = await stack.add_source(
        "billing", eventTypes=["invoice.paid", "invoice.line.added", "customer.created"]
    )
    every, _ = await stack.add_endpoint(endpoint.on("/every", ok), "every", source="billing")
    invoices, _ = await stack.add_endpoint(
        endpoint.on("/invoices", ok), "invoices", source="billing", eventTypes=["invoice.*"]
    )
    picky, _ = await stack.add_endpoint(
        endpoint.on("/picky", ok),
        "picky",
        source="billing",
        eventTypes=["invoice.paid", "customer.created"],
    )
    await stack.propagated(lambda c: len(c.subscribed(source.id)) == 3, "three subscribers")
    sent: dict[str, str] = {}  # event id → type
    for event_type, width in [
        ("invoice.paid", 3),
        ("invoice.line.added", 2),
        ("customer.created", 2),
    ]:
        status_, answer = await send_event(
            stack, key, event_type, b'{"type":"%s"}' % event_type.encode()
        )
        assert (status_, answer["endpoints"]) == (202, width), answer
        sent[answer["id"]] = event_type
    await endpoint.wait_for(lambda: len(endpoint.received) == 7, 10, "seven deliveries")

    def types(path: str) -> list[str]:
        return sorted(r.headers[TYPE.lower()] for r in endpoint.received if r.path == path)

    assert types("/every") == ["customer.created", "invoice.line.added", "invoice.paid"]
    assert types("/invoices") == ["invoice.line.added", "invoice.paid"]
    assert types("/picky") == ["customer.created", "invoice.paid"]
    paths = {"/every": every, "/invoices": invoices, "/picky": picky}
    for got in endpoint.received:
        # webhook-id is the event's id at every endpoint; each verifies with its own secret
        assert sent[got.headers["webhook-id"]] == got.headers[TYPE.lower()]
        verifier = standardwebhooks.Webhook(stack.secrets[paths[got.path].id])
        assert verifier.verify(got.body, got.headers)["type"] == got.headers[TYPE.lower()]
        for other, ep in paths.items():
            if other != got.path:
                with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
                    standardwebhooks.Webhook(stack.secrets[ep.id]).verify(got.body, got.headers)

    async def settled() -> bool:
        return (await source_figures(stack, source.id)).get("delivered") == 7

    await eventually(settled, 10, "seven deliveries counted for the source")
    figures = await source_figures(stack, source.id)
    assert figures["events"] == 3 and figures["deliveries"] == 7, figures
    assert await bodies_kept(stack) == [], "every shared body goes with its last delivery"


async def test_refusals_are_json_and_queue_nothing(stack: Stack, endpoint: Endpoint) -> None:
    source, key = await stack.add_source("shop", eventTypes=["order.created"])
    await stack.add_endpoint(endpoint.on("/a", ok), "a", source="shop")
    await stack.propagated(lambda c: len(c.subscribed(source.id)) == 1, "the subscriber")
    for event_type, code in [
        (None, "missing_event_type"),
        ("order created", "invalid_event_type"),
        (".order", "invalid_event_type"),
        ("order.deleted", "unknown_event_type"),
    ]:
        status_, answer = await send_event(stack, key, event_type)
        assert (status_, answer["error"]) == (400, code), answer
        assert answer["reason"]
    assert await queued(stack) == []
    assert await source_figures(stack, source.id) == {}


async def test_an_event_no_endpoint_takes_is_accepted_and_counted(
    stack: Stack, endpoint: Endpoint
) -> None:
    source, key = await stack.add_source("quiet")
    await stack.add_endpoint(endpoint.on("/a", ok), "a", source="quiet", eventTypes=["invoice.*"])
    await stack.propagated(lambda c: len(c.subscribed(source.id)) == 1, "the subscriber")
    status_, answer = await send_event(stack, key, "customer.created", os.urandom(200_000))
    assert status_ == 202 and answer["endpoints"] == 0, answer
    assert answer["id"].startswith("msg_")
    assert await source_figures(stack, source.id) == {"events": 1, "unmatched": 1}
    assert await queued(stack) == [] and await bodies_kept(stack) == []
    assert not kept_on_disk(Path(stack.config.body_dir)), "a body no one takes is not kept"


async def test_idempotency_key_applies_to_the_event(stack: Stack, endpoint: Endpoint) -> None:
    source, key = await stack.add_source("idem")
    for name in ("a", "b"):
        await stack.add_endpoint(endpoint.on(f"/{name}", ok), name, source="idem")
    await stack.propagated(lambda c: len(c.subscribed(source.id)) == 2, "two subscribers")
    first = await send_event(stack, key, "thing.happened", **{"Idempotency-Key": "k-1"})
    again = await send_event(stack, key, "thing.happened", **{"Idempotency-Key": "k-1"})
    assert first == again == (202, {"id": first[1]["id"], "endpoints": 2})
    await endpoint.wait_for(lambda: len(endpoint.received) == 2, 10, "two deliveries")
    await asyncio.sleep(0.5)
    assert sorted(r.path for r in endpoint.received) == ["/a", "/b"], "nothing fanned out twice"
    assert (await source_figures(stack, source.id))["events"] == 1


async def test_the_body_is_kept_once_and_removed_after_the_last_delivery(
    config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(config).start(dispatchers=0)
    try:
        source, key = await stack.add_source("wide")
        for i in range(5):
            await stack.add_endpoint(endpoint.on(f"/{i}", ok), f"s{i}", source="wide")
        await stack.propagated(lambda c: len(c.subscribed(source.id)) == 5, "five subscribers")
        body = os.urandom(8000)
        status_, answer = await send_event(stack, key, "x.y", body)
        assert (status_, answer["endpoints"]) == (202, 5)
        entries = await queued(stack)
        assert len(entries) == 5 and {e.id for e in entries} == {answer["id"]}
        assert all(e.shared and e.body == b"" for e in entries), "no entry carries the body"
        kept = await stack.redis.hgetall(stack.store.keys.body(answer["id"]))
        assert kept == {b"b": body, b"n": b"5"}
        await stack.start_dispatcher()
        await endpoint.wait_for(lambda: len(endpoint.received) == 5, 10, "five deliveries")
        assert all(r.body == body for r in endpoint.received)

        async def gone() -> bool:
            return await bodies_kept(stack) == []

        await eventually(gone, 10, "the shared body to go with the last delivery")
    finally:
        await stack.stop()


async def test_one_failing_hanging_or_gone_subscriber_does_not_hold_up_the_others(
    config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(config).start()
    try:
        source, key = await stack.add_source("mixed")
        await stack.add_endpoint(endpoint.on("/fast", ok), "fast", source="mixed")
        await stack.add_endpoint(endpoint.on("/broken", status(500)), "broken", source="mixed")
        await stack.add_endpoint(
            endpoint.on("/hangs", slow(30)), "hangs", source="mixed", timeoutSeconds=20
        )
        gone, _ = await stack.add_endpoint(
            endpoint.on("/gone", status(410)), "gone", source="mixed"
        )
        await stack.propagated(lambda c: len(c.subscribed(source.id)) == 4, "four subscribers")
        ids = []
        for _ in range(20):
            status_, answer = await send_event(stack, key, "tick")
            assert status_ == 202
            ids.append(answer["id"])

        def fast_has_all() -> bool:
            return set(ids) <= set(endpoint.ids("/fast"))

        await endpoint.wait_for(fast_has_all, 5, "every event at the healthy subscriber")
        assert max(endpoint.ids("/fast").values()) == 1

        async def disabled() -> bool:
            return stack.caches[0].disabled_reason(gone.id) is not None

        await eventually(disabled, 5, "the 410 subscriber disabled")
        status_, answer = await send_event(stack, key, "tick")
        assert (status_, answer["endpoints"]) == (202, 3), "a disabled subscriber gets nothing"
    finally:
        await stack.stop()


async def test_dead_letters_keep_the_shared_body_until_replayed_and_delivered(
    stack: Stack, endpoint: Endpoint
) -> None:
    source, key = await stack.add_source("dlq")
    await stack.add_endpoint(endpoint.on("/ok", ok), "ok", source="dlq")
    rejecting, _ = await stack.add_endpoint(
        endpoint.on("/rejects", status(500)), "rejects", source="dlq", retry={"attempts": 1}
    )
    await stack.propagated(lambda c: len(c.subscribed(source.id)) == 2, "two subscribers")
    body = b'{"keep":"me"}'
    status_, answer = await send_event(stack, key, "a.b", body)
    assert (status_, answer["endpoints"]) == (202, 2)

    async def dead() -> bool:
        return len(await stack.store.dead_letters.find(endpoint=rejecting.id)) == 1

    await eventually(dead, 10, "the rejected delivery dead-lettered")
    # the other delivery is done, the dead letter still holds the body
    assert await bodies_kept(stack) == [stack.store.keys.body(answer["id"]).encode()]
    shown = hookline(stack.config, "dlq", "show", answer["id"])
    assert shown.returncode == 0, shown.stderr
    letter = json.loads(shown.stdout)
    assert (letter["body"], letter["source"], letter["endpoint"]) == (
        body.decode(),
        source.id,
        rejecting.id,
    )
    endpoint.on("/rejects", ok)
    replayed = hookline(stack.config, "dlq", "replay", "--endpoint", rejecting.id)
    assert replayed.returncode == 0, replayed.stderr
    await endpoint.wait_for(
        lambda: endpoint.ids("/rejects")[answer["id"]] == 2, 10, "the replay delivered"
    )
    assert endpoint.received[-1].body == body

    async def gone() -> bool:
        return await bodies_kept(stack) == []

    await eventually(gone, 10, "the body to go once the replay is delivered")


async def test_dead_letters_past_retention_let_go_of_the_shared_body(
    stack: Stack, endpoint: Endpoint
) -> None:
    source, key = await stack.add_source("expiry")
    for name in ("x", "y"):
        await stack.add_endpoint(
            endpoint.on(f"/{name}", status(500)), name, source="expiry", retry={"attempts": 1}
        )
    await stack.propagated(lambda c: len(c.subscribed(source.id)) == 2, "two subscribers")
    status_, _ = await send_event(stack, key, "a.b")
    assert status_ == 202

    async def both_dead() -> bool:
        return len(await stack.store.dead_letters.find()) == 2

    await eventually(both_dead, 10, "both deliveries dead-lettered")
    assert len(await bodies_kept(stack)) == 1
    assert await stack.store.dead_letters.expire(before=1e12) == []
    assert await bodies_kept(stack) == [] and await stack.store.dead_letters.find() == []


async def test_a_large_body_is_stored_once_in_gcs_and_deleted_after_the_last_delivery(
    config: Config, gcs_server: GcsServer, endpoint: Endpoint
) -> None:
    bucket = new_bucket(gcs_server)
    stack, _ = await gcs_stack(config, gcs_server, bucket, dispatchers=0)
    try:
        source, key = await stack.add_source("big")
        for i in range(3):
            await stack.add_endpoint(endpoint.on(f"/{i}", ok), f"b{i}", source="big")
        await stack.propagated(lambda c: len(c.subscribed(source.id)) == 3, "three subscribers")
        body = os.urandom(INLINE * 4)
        assert stack.client is not None
        async with stack.client.post(
            stack.url + "/webhooks/send",
            data=io.BytesIO(body),
            headers={"X-WH-Endpoint-Key": key, TYPE: "file.uploaded"},
        ) as resp:
            assert resp.status == 202, await resp.text()
            answer = await resp.json()
        assert answer["endpoints"] == 3
        objects = await asyncio.to_thread(gcs_server.objects, bucket)
        assert len(objects) == 1, "the body is uploaded once for three deliveries"
        kept = await stack.redis.hgetall(stack.store.keys.body(answer["id"]))
        assert kept == {b"n": b"3"}, "a stored body is counted in Redis, not copied there"
        await stack.start_dispatcher()
        await endpoint.wait_for(lambda: len(endpoint.received) == 3, 30, "three deliveries")
        digest = hashlib.sha256(body).hexdigest()
        assert all(hashlib.sha256(r.body).hexdigest() == digest for r in endpoint.received)

        async def bucket_empty() -> bool:
            return await asyncio.to_thread(gcs_server.objects, bucket) == {}

        await eventually(bucket_empty, 10, "the object deleted after the last delivery")
        assert await bodies_kept(stack) == []
    finally:
        await stack.stop()


async def test_a_removed_source_refuses_its_key_and_its_queued_deliveries_go_on(
    config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(config).start(dispatchers=0)
    try:
        source, key = await stack.add_source("leaving")
        for name in ("a", "b"):
            await stack.add_endpoint(endpoint.on(f"/{name}", ok), name, source="leaving")
        await stack.propagated(lambda c: len(c.subscribed(source.id)) == 2, "two subscribers")
        status_, answer = await send_event(stack, key, "last.event")
        assert (status_, answer["endpoints"]) == (202, 2)
        assert await stack.registry.remove_source(source.id)
        await stack.propagated(lambda c: c.source(source.id) is None, "the source removed")
        status_, refused = await send_event(stack, key, "after.removal")
        assert (status_, refused["error"]) == (401, "unknown_key")
        await stack.start_dispatcher()
        await endpoint.wait_for(lambda: len(endpoint.received) == 2, 10, "the queued event")
        assert {r.headers["webhook-id"] for r in endpoint.received} == {answer["id"]}
    finally:
        await stack.stop()
