"""The ingest port under hostile and careless clients (hookline.receiver.frontdoor), over
raw sockets so that any byte can be sent: one deadline from the first byte, idle
connections closed, a cap on connections, absurd chunks refused at once, and every
refusal — the HTTP parser's included — a JSON 4xx with nothing left behind and no
traceback in the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from hookline.config import Config
from tests.peers import Endpoint, eventually
from tests.stack import Stack


@pytest.fixture
async def door(config: Config) -> AsyncIterator[Stack]:
    """A receiver with short limits, no dispatcher: the stream holds what was accepted."""
    limits = replace(
        config, request_timeout=1.5, idle_timeout=2.5, max_connections=8, inline_limit=1024
    )
    stack = await Stack(limits).start(dispatchers=0)
    yield stack
    await stack.stop()


async def exchange(
    stack: Stack, *parts: bytes, pause: float = 0.0, wait: float = 10.0
) -> tuple[int, dict[str, str], bytes, float]:
    """Send ``parts`` on a new connection (``pause`` seconds apart) and read one answer:
    (status, headers, body, seconds from the first byte); status 0 when the receiver
    closed the connection without an answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.config.receiver_port)
    start = time.monotonic()
    try:

        async def send() -> None:
            for i, part in enumerate(parts):
                if i and pause:
                    await asyncio.sleep(pause)
                writer.write(part)
                await writer.drain()

        sending = asyncio.create_task(send())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
        except asyncio.IncompleteReadError:
            return 0, {}, b"", time.monotonic() - start
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        took = time.monotonic() - start
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body, took
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def post(key: bytes, body: bytes, *extra: bytes, content_type: bytes = b"text/json") -> bytes:
    head = [
        b"POST /webhooks/send HTTP/1.1",
        b"Host: hookline",
        b"X-WH-Endpoint-Key: " + key,
        b"Content-Type: " + content_type,
        b"Content-Length: %d" % len(body),
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def stream_length(stack: Stack) -> int:
    return int(await stack.redis.xlen(stack.queue.stream("default")))


def stored_bodies(stack: Stack) -> list[str]:
    return [f for _, _, files in os.walk(stack.config.body_dir) for f in files]


def assert_json_error(status: int, headers: dict[str, str], body: bytes, code: str) -> None:
    assert headers.get("content-type", "").startswith("application/json"), (status, body)
    answer = json.loads(body)
    assert answer["error"] == code, answer
    assert answer["reason"]


async def test_a_header_that_is_not_ascii_gets_a_json_400_and_leaves_nothing(
    door: Stack, endpoint: Endpoint
) -> None:
    _, key = await door.add_endpoint(endpoint.url("/a"))
    big = b'{"pad":"' + b"x" * 4096 + b'"}'  # over the inline limit: it would be stored
    cases = [
        post(b"cl\xe9", b"{}"),
        post(key.encode(), big, b"Idempotency-Key: caf\xe9"),
        post(key.encode(), b"{}", content_type=b"text/plain; charset=\xff\xfe"),
        post(key.encode(), b"{}", b"X-WH-Endpoint-Key: " + key.encode()),  # the key twice
    ]
    for request in cases:
        status, headers, body, _ = await exchange(door, request)
        assert status == 400, (request[:120], body)
        assert_json_error(status, headers, body, "invalid_header")
    assert await stream_length(door) == 0
    assert stored_bodies(door) == []
    status, _, body, _ = await exchange(door, post(key.encode(), big))
    assert status == 202, body


async def test_what_the_http_parser_refuses_is_json_and_logs_no_traceback(
    door: Stack, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    _, key = await door.add_endpoint(endpoint.url("/a"))
    k = key.encode()
    cases = [
        b"POST /webhooks/send HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
        post(k, b"{}", b"Content-Length: 3"),  # two different lengths
        post(k, b"{}", b"Transfer-Encoding: chunked"),  # beside Content-Length
        b"POST /webhooks/send HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        post(k, b"{}", *(b"X-Pad-%d: 1" % i for i in range(1000))),
        post(k, b"{}", b"X-Long: " + b"a" * 100_000),
        b"GARBAGE\r\n\r\n",
    ]
    with caplog.at_level(logging.WARNING):
        for request in cases:
            status, headers, body, _ = await exchange(door, request)
            assert 400 <= status < 500, (request[:80], status, body)
            assert_json_error(status, headers, body, json.loads(body)["error"])
    assert [r for r in caplog.records if r.exc_info] == [], "a refusal logged a traceback"
    assert await stream_length(door) == 0


async def test_the_deadline_counts_from_the_first_byte_of_the_head(
    door: Stack, endpoint: Endpoint
) -> None:
    _, key = await door.add_endpoint(endpoint.url("/a"))
    request = post(key.encode(), b"{}")
    # The head trickled a byte every 0.25 s never completes within the 1.5 s deadline.
    status, headers, body, took = await exchange(
        door, *(request[i : i + 1] for i in range(len(request))), pause=0.25
    )
    assert status == 408, body
    assert_json_error(status, headers, body, "request_timeout")
    assert 1.4 <= took < 4.0, took
    # A slow head then a slow body: 408 at 1.5 s from the first byte, not 1.5 s after the head.
    head, _, _ = request.partition(b"\r\n\r\n")
    slow = [head[:10], head[10:] + b"\r\n\r\n", b"{", b"}"]
    status, headers, body, took = await exchange(door, *slow, pause=0.6)
    assert status == 408, body
    assert took < 2.5, f"answered {took:.2f} s after the first byte"
    assert await stream_length(door) == 0


async def test_an_idle_connection_is_closed_and_past_the_cap_a_new_one_gets_503(
    door: Stack, endpoint: Endpoint
) -> None:
    _, key = await door.add_endpoint(endpoint.url("/a"))
    status, _, _, took = await exchange(door, wait=10.0)
    assert status == 0 and took < 4.0, "an idle connection stayed open past the idle timeout"
    port = door.config.receiver_port
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
    try:
        await asyncio.sleep(0.1)
        status, headers, body, _ = await exchange(door, post(key.encode(), b"{}"))
        assert status == 503, body
        assert_json_error(status, headers, body, "too_many_connections")
        assert headers["retry-after"] == "1"
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.2)
    status, _, body, _ = await exchange(door, post(key.encode(), b"{}"))
    assert status == 202, body
    assert await stream_length(door) == 1


async def test_an_absurd_chunk_size_is_refused_at_once(
    door: Stack, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    _, key = await door.add_endpoint(endpoint.url("/a"))
    head = (
        b"POST /webhooks/send HTTP/1.1\r\nHost: h\r\nX-WH-Endpoint-Key: "
        + key.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    status, headers, body, took = await exchange(door, head + b"ffffffffffffffff\r\nabc")
    assert status == 413, body
    assert_json_error(status, headers, body, "body_too_large")
    assert took < 1.0, f"answered after {took:.2f} s"
    # The same while the handler already reads the body: the refusal cuts its read short,
    # which is no fault to log.
    with caplog.at_level(logging.DEBUG):
        status, headers, body, _ = await exchange(
            door, head + b"10\r\n" + b"a" * 16 + b"\r\n", b"fffffffff\r\n", pause=0.3
        )
    assert status == 413, body
    assert [r for r in caplog.records if r.exc_info] == [], "the cut-short read was logged"
    # A chunked body within the limit, in several chunks, is taken.
    good = head + b'3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n'
    status, _, body, _ = await exchange(door, good)
    assert status == 202, body
    assert await stream_length(door) == 1


async def test_a_sender_that_hangs_up_after_its_body_still_has_its_webhook_queued(
    door: Stack, endpoint: Endpoint
) -> None:
    """The documented decision: once the whole body has arrived the webhook is taken, the
    202 may be lost on the way back, and a retry without an Idempotency-Key is a second
    webhook — with one, the retry finds the first."""
    _, key = await door.add_endpoint(endpoint.url("/a"))
    request = post(key.encode(), b'{"n":1}', b"Idempotency-Key: order-7")
    _, writer = await asyncio.open_connection("127.0.0.1", door.config.receiver_port)
    writer.write(request)
    await writer.drain()
    writer.close()  # hangs up without reading the answer

    async def queued() -> bool:
        return await stream_length(door) == 1

    await eventually(queued, 5, "the webhook of the sender that hung up")
    status, _, body, _ = await exchange(door, request)  # the sender's retry
    assert status == 202, body
    assert await stream_length(door) == 1, "the retry with its Idempotency-Key queued again"
