"""The operator's tools, run as a user runs them: ``hookline dlq`` and ``hookline endpoints``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime

from hookline.config import Config
from hookline.models import Webhook
from tests.peers import Endpoint, eventually, status
from tests.stack import Stack, hookline


async def test_dead_letters_are_listed_shown_and_replayed_with_the_same_id(
    stack: Stack, endpoint: Endpoint
) -> None:
    healthy = False

    async def answer(request: object, nth: int) -> object:
        return await (status(204) if healthy else status(500))(request, nth)  # type: ignore[arg-type]

    ep, key = await stack.add_endpoint(endpoint.on("/d", answer), retry={"attempts": 2})  # type: ignore[arg-type]
    ids = [(await stack.send(key, f'{{"n":{i}}}'.encode()))[1]["id"] for i in range(3)]

    async def three_dead() -> bool:
        return len(await stack.store.dead_letters.find()) == 3

    await eventually(three_dead, 10, "three dead letters")

    listed = await asyncio.to_thread(hookline, stack.config, "dlq", "list", "--since", "1h")
    assert listed.returncode == 0, listed.stderr
    assert all(i in listed.stdout for i in ids)
    assert "gave up after 2 attempts" in listed.stdout
    other = await asyncio.to_thread(hookline, stack.config, "dlq", "list", "--endpoint", "x/y")
    assert other.stdout.strip() == ""

    shown = await asyncio.to_thread(hookline, stack.config, "dlq", "show", ids[0])
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["id"] == ids[0] and detail["attempts"] == 2 and detail["body"] == '{"n":0}'
    missing = await asyncio.to_thread(hookline, stack.config, "dlq", "show", "msg_NOPE")
    assert missing.returncode == 1 and "no dead letter" in missing.stderr
    # Neither kind of id: one line saying so, status 2 — not a traceback from Redis.
    malformed = await asyncio.to_thread(hookline, stack.config, "dlq", "show", "not-an-id")
    assert malformed.returncode == 2, malformed.stderr
    assert malformed.stderr.strip().splitlines() == [
        "hookline: 'not-an-id' is neither a dead-letter id (like 1764650000000-0) "
        "nor a webhook id (msg_…)"
    ]

    healthy = True
    replayed = await asyncio.to_thread(hookline, stack.config, "dlq", "replay", "--endpoint", ep.id)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 3" in replayed.stdout
    await endpoint.wait_for(
        lambda: all(
            any(r.headers["webhook-id"] == i and r.body for r in endpoint.received[6:]) for i in ids
        ),
        10,
        "the replayed webhooks, with their original ids",
    )
    assert await stack.store.dead_letters.find() == []


async def test_dead_letters_past_retention_go_with_their_bodies(config: Config) -> None:
    stack = await Stack(replace(config, body_retention=0.2)).start(dispatchers=0)
    try:
        assert stack.bodies is not None
        ref, _ = await stack.bodies.put("msg_old", _chunks(b"x" * 10), 100)
        old = Webhook("msg_old", "test/x", {}, body_ref=ref, size=10, created_ms=0)
        await stack.queue.dead("default", None, old, "test")
        await asyncio.sleep(0.3)
        await stack.start_dispatcher()  # its housekeeping expires dead letters at start

        async def gone() -> bool:
            files = [f for _, _, fs in os.walk(config.body_dir) for f in fs]
            return not files and await stack.store.dead_letters.find() == []

        await eventually(gone, 10, "the expired dead letter and its body to go")
    finally:
        await stack.stop()


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    yield data


async def test_endpoints_table_shows_figures_and_attempts(stack: Stack, endpoint: Endpoint) -> None:
    ep, key = await stack.add_endpoint(endpoint.on("/t", status(200)), name="figures")
    for _ in range(3):
        await stack.send(key)

    async def delivered() -> bool:
        return (await stack.store.figures.stats(ep.id)).get("delivered") == "3"

    await eventually(delivered, 5, "three deliveries counted")
    table = await asyncio.to_thread(hookline, stack.config, "endpoints")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:5] == ["ENDPOINT", "POOL", "DELIVERED", "FAILED", "DEAD"]
    assert row.split()[:7] == [ep.id, "default", "3", "0", "0", "0", "active"]
    log = await asyncio.to_thread(hookline, stack.config, "endpoints", "--attempts", ep.id)
    assert log.stdout.count("status=200") == 3


async def test_send_with_a_source_key_and_a_type_fans_out_and_prints_the_width(
    stack: Stack, endpoint: Endpoint
) -> None:
    """``hookline send --key SOURCE_KEY --type T``: the event goes to every subscriber whose
    filter takes T, and the command prints the 202 with how many endpoints that was."""
    source, key = await stack.add_source("cli")
    await stack.add_endpoint(endpoint.url("/every"), "every", source="cli")
    await stack.add_endpoint(
        endpoint.url("/invoices"), "invoices", source="cli", eventTypes=["invoice.*"]
    )
    await stack.add_endpoint(
        endpoint.url("/customers"), "customers", source="cli", eventTypes=["customer.*"]
    )
    await stack.propagated(lambda c: len(c.subscribed(source.id)) == 3, "three subscribers")

    sent = await asyncio.to_thread(
        hookline, stack.config, "send", "--url", stack.url, "--key", key, "--type", "invoice.paid"
    )
    assert sent.returncode == 0, sent.stderr
    status_, _, answer = sent.stdout.strip().partition(" ")
    assert status_ == "202" and json.loads(answer)["endpoints"] == 2, sent.stdout
    event = json.loads(answer)["id"]
    await endpoint.wait_for(lambda: len(endpoint.received) == 2, 10, "two deliveries")
    assert sorted(r.path for r in endpoint.received) == ["/every", "/invoices"]
    for got in endpoint.received:
        assert got.headers["webhook-id"] == event
        assert got.headers["x-wh-event-type"] == "invoice.paid"
        assert json.loads(got.body) == {"type": "invoice.paid", "hello": "world"}

    # A source's key without a type: the receiver's refusal, printed, and status 1.
    untyped = await asyncio.to_thread(
        hookline, stack.config, "send", "--url", stack.url, "--key", key
    )
    assert untyped.returncode == 1
    assert untyped.stdout.startswith("400 ") and "missing_event_type" in untyped.stdout


def test_hookline_sink_prints_each_webhook_with_its_signature_checked() -> None:
    """``hookline sink``, the demo endpoint docs/kubernetes.md deploys: a delivery signed
    with its secret prints ``signature=valid``, one signed with another ``BAD``."""
    from standardwebhooks.webhooks import Webhook as Verifier

    from hookline.signing import new_secret
    from tests.peers import free_port

    secret, port = new_secret(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLINE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookline", "sink", "--port", str(port)],
        env={**env, "HOOKLINE_SINK_SECRET": secret},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "signatures checked" in proc.stdout.readline()
        for _ in range(100):  # the line comes just before it listens
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        for n, key in enumerate((secret, new_secret())):
            body = f'{{"n":{n}}}'.encode()
            headers = {"webhook-id": f"msg_{n}", "webhook-timestamp": "1700000000"}
            headers["webhook-signature"] = Verifier(key).sign(
                f"msg_{n}", datetime.fromtimestamp(1700000000, tz=UTC), body.decode()
            )
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/hooks", data=body, headers=headers, method="POST"
            )
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert resp.status == 200
            line = proc.stdout.readline()
            assert f"id=msg_{n}" in line and f"body='{body.decode()}'" in line, line
            assert ("signature=valid" if key == secret else "signature=BAD") in line, line
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
