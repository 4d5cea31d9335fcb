"""Slow clients against the request deadline: one deadline, from a request's first byte.

The receiver here has ``HOOKLINE_REQUEST_TIMEOUT`` = 2 s and ``HOOKLINE_IDLE_TIMEOUT`` =
2.5 s. A client that trickles its header or its body must be answered ``408`` (JSON) or
disconnected within the deadline and a margin, counted from its first byte; one that
sends nothing is idle and closed at the idle timeout. One that stays open past that
holds a file descriptor for as long as it likes (finding 3). Idle connections must not
keep a good request from being served.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.fuzz.door import MARGIN, FrontDoor, report
from tests.fuzz.hostile import HOST, JSON, good_request, key_header
from tests.fuzz.raw import Connection, Exchange, Piece

pytestmark = pytest.mark.fuzz


def assert_cut_off(door: FrontDoor, ex: Exchange, what: str) -> None:
    """Answered 408 as JSON, or closed, within the deadline and the margin."""
    limit = door.config.request_timeout + MARGIN
    assert ex.response is not None or ex.closed, (
        f"{what}: {ex}; the request deadline is {door.config.request_timeout} s"
    )
    assert ex.elapsed <= limit, f"{what}: {ex}, past the deadline and margin ({limit} s)"
    if ex.response is not None:
        body = ex.response.json()
        assert ex.response.status == 408, f"{what}: {ex}"
        assert ex.response.media_type == "application/json", f"{what}: {ex}"
        assert isinstance(body, dict) and body.get("error") == "request_timeout", f"{what}: {ex}"


async def trickle(door: FrontDoor, pieces: list[Piece], what: str) -> None:
    conn = await Connection.open(door.port)
    sending = asyncio.create_task(conn.send(pieces))
    try:
        ex = await conn.answer(door.config.request_timeout + MARGIN)
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        conn.close()
    assert_cut_off(door, ex, what)


async def still_serving(door: FrontDoor) -> None:
    good = await door.send(good_request(door.keys.good))
    assert good.response is not None and good.response.status == 202, f"a good request: {good}"
    assert not (tracebacks := door.tracebacks()), report(tracebacks)


def head(door: FrontDoor, length: int) -> bytes:
    lines = [
        b"POST /webhooks/send HTTP/1.1",
        HOST,
        key_header(door.keys.good),
        JSON,
        b"Content-Length: %d" % length,
    ]
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


async def test_a_connection_that_sends_nothing_is_closed_at_the_idle_timeout(
    front_door: FrontDoor,
) -> None:
    await trickle(front_door, [], "a connection that sends nothing")
    await still_serving(front_door)


async def test_a_header_trickled_one_byte_a_second_is_cut_off_at_the_deadline(
    front_door: FrontDoor,
) -> None:
    data = head(front_door, 2) + b"{}"
    pieces = [(0.0 if i == 0 else 1.0, data[i : i + 1]) for i in range(len(data))]
    await trickle(front_door, pieces, "a header trickled at one byte a second")
    await still_serving(front_door)


async def test_a_body_trickled_is_answered_408_at_the_deadline(front_door: FrontDoor) -> None:
    body = b"x" * 100
    pieces = [(0.0, head(front_door, len(body)))]
    pieces += [(0.25, body[i : i + 1]) for i in range(len(body))]
    await trickle(front_door, pieces, "a body trickled at four bytes a second")
    assert await front_door.stack.redis.xlen(front_door.stack.queue.stream("default")) == 0
    await still_serving(front_door)


async def test_one_deadline_covers_the_header_and_the_body_together(
    front_door: FrontDoor,
) -> None:
    """The header arrives just inside the deadline, then the body trickles: a deadline
    that starts again with the body would answer only about twice as late."""
    data = head(front_door, 100)
    steps = 19  # 1.9 s of header: under the 2 s deadline, were it the header's alone
    size = len(data) // steps + 1
    pieces = [(0.0 if i == 0 else 0.1, data[i * size : (i + 1) * size]) for i in range(steps)]
    pieces += [(0.25, b"x") for _ in range(100)]
    await trickle(front_door, pieces, "a header over 1.9 s, then a trickled body")
    await still_serving(front_door)


async def test_fifty_idle_connections_neither_block_a_good_request_nor_stay_open(
    front_door: FrontDoor,
) -> None:
    idle = [await Connection.open(front_door.port) for _ in range(50)]
    try:
        await still_serving(front_door)
        waited = await asyncio.gather(
            *(c.answer(front_door.config.request_timeout + MARGIN) for c in idle)
        )
        still_open = [ex for ex in waited if not ex.closed and ex.response is None]
        assert not still_open, (
            f"{len(still_open)} of 50 connections that sent nothing are still open "
            f"{front_door.config.request_timeout + MARGIN} s after they were opened"
        )
        for ex in waited:
            assert_cut_off(front_door, ex, "one of 50 idle connections")
    finally:
        for c in idle:
            c.close()
    await still_serving(front_door)
