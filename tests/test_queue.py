"""The queue's write path: batched settling, duplicates counted, script cache loss, Redis down,
credentials."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hookline.config import Config
from hookline.errors import StoreUnavailable
from hookline.models import Webhook, new_id
from hookline.store import GROUP, Entry, Store
from tests.peers import RedisServer, eventually, free_port, require_binary


def webhook(endpoint: str = "test/a") -> Webhook:
    return Webhook(id=new_id(), endpoint=endpoint, headers={}, body=b"{}", size=2)


@pytest.fixture
async def store(config: Config) -> AsyncIterator[Store]:
    store = Store.connect(config)
    await store.queue.ensure_group("default")
    yield store
    await store.aclose()


async def test_deliveries_settled_together_are_each_acknowledged_and_reclaimed_ones_counted(
    store: Store,
) -> None:
    queue = store.queue
    sent = [webhook("test/a") for _ in range(30)] + [webhook("test/b") for _ in range(20)]
    await asyncio.gather(*(queue.enqueue("default", wh) for wh in sent))
    read = await queue.read("default", "c1", 100, block_ms=100)
    assert sorted(wh.id for _, wh in read) == sorted(wh.id for wh in sent)
    assert (
        await asyncio.gather(*(queue.sending("default", "c1", *e) for e in ids(read)))
        == [True] * 50
    )
    # c2 takes ten of them over, as from a consumer gone quiet, and sends them too.
    taken = await queue.claim("default", "c2", 0.0, 10)
    assert (
        await asyncio.gather(*(queue.sending("default", "c2", *e) for e in ids(taken)))
        == [True] * 10
    )
    # Those are no longer c1's: it would not send them again.
    assert not any(await asyncio.gather(*(queue.sending("default", "c1", *e) for e in ids(taken))))
    # Both settle in the same batch: each entry is recorded once; a delivery that followed
    # another consumer's unsettled attempt counts one duplicate.
    settle = [queue.delivered("default", mid, wh) for mid, wh in read]
    settle += [queue.delivered("default", mid, wh) for mid, wh in taken]
    results = await asyncio.gather(*settle)
    assert [r.acked for r in results] == [True] * 50 + [False] * 10
    assert sum(r.duplicates for r in results) == 10
    a, b = await store.figures.stats("test/a"), await store.figures.stats("test/b")
    dup_a = sum(1 for _, wh in taken if wh.endpoint == "test/a")
    assert (a["delivered"], b["delivered"]) == ("30", "20")
    assert int(a.get("duplicates", 0)) + int(b.get("duplicates", 0)) == 10
    assert int(a.get("duplicates", 0)) == dup_a
    assert (await store.figures.backlog("default"))["stream"] == 0
    assert await store.redis.hlen(store.keys.sending("default")) == 0  # type: ignore[misc]


def ids(entries: list[Entry]) -> list[tuple[bytes, str]]:
    return [(mid, wh.id) for mid, wh in entries]


async def test_an_attempt_left_unsettled_counts_when_its_webhook_is_finally_delivered(
    store: Store,
) -> None:
    queue, wh = store.queue, webhook()
    await queue.enqueue("default", wh)
    ((mid, _),) = await queue.read("default", "c1", 10, block_ms=100)
    assert await queue.sending("default", "c1", mid, wh.id)  # c1 sends it, then dies
    ((mid, _),) = await queue.claim("default", "c2", 0.0, 10)
    assert await queue.sending("default", "c2", mid, wh.id)
    failure = {"at": 0, "reason": "HTTP 500"}
    assert (await queue.reschedule("default", mid, wh, 0.0, failure, sent=True)).acked
    assert await queue.move_due("default") == 1
    ((mid, _),) = await queue.read("default", "c2", 10, block_ms=100)
    assert await queue.sending("default", "c2", mid, wh.id)
    settled = await queue.delivered("default", mid, wh)
    assert (settled.acked, settled.duplicates) == (True, 1)
    assert (await store.figures.stats("test/a"))["duplicates"] == "1"
    assert await store.redis.hlen(store.keys.sending("default")) == 0  # type: ignore[misc]


async def test_retries_after_recorded_failures_are_no_duplicates_and_dead_letters_keep_no_record(
    store: Store,
) -> None:
    queue, retried, doomed = store.queue, webhook(), webhook()
    await queue.enqueue("default", retried)
    await queue.enqueue("default", doomed)
    (mid, _), (mid2, _) = await queue.read("default", "c1", 10, block_ms=100)
    assert await queue.sending("default", "c1", mid, retried.id)
    assert (await queue.reschedule("default", mid, retried, 0.0, {"at": 0}, sent=True)).acked
    assert await queue.sending("default", "c1", mid2, doomed.id)  # c1 sends it, then dies
    ((mid2, _),) = await queue.claim("default", "c2", 0.0, 10)
    assert await queue.sending("default", "c2", mid2, doomed.id)
    assert (await queue.dead("default", mid2, doomed, "HTTP 400", {"at": 0})).acked
    await queue.move_due("default")
    ((mid, _),) = await queue.read("default", "c2", 10, block_ms=100)
    assert await queue.sending("default", "c2", mid, retried.id)
    assert (await queue.delivered("default", mid, retried)).duplicates == 0
    assert (await store.figures.stats("test/a")).get("duplicates") is None
    assert await store.redis.hlen(store.keys.sending("default")) == 0  # type: ignore[misc]


async def test_deferred_entries_come_back_unchanged_and_settled_ones_do_not(
    store: Store,
) -> None:
    sent = [replace(webhook(), body=bytes([i, 0xFF]), attempt=i) for i in range(3)]
    await asyncio.gather(*(store.queue.enqueue("default", wh) for wh in sent))
    read = await store.queue.read("default", "c1", 10, block_ms=100)
    assert (await store.queue.delivered("default", *read[0])).acked
    # The first was settled meanwhile (say by a dispatcher that reclaimed it): not moved.
    assert await store.queue.defer("default", [(mid, 0.2) for mid, _ in read]) == 2
    assert await store.figures.backlog("default") == {
        "stream": 0,
        "retry_due": 0,
        "retry_scheduled": 2,
    }
    assert await store.queue.move_due("default") == 0  # not due yet
    await asyncio.sleep(0.3)
    assert await store.queue.move_due("default") == 2
    again = await store.queue.read("default", "c1", 10, block_ms=100)
    assert [wh for _, wh in again] == sent[1:]
    assert (await store.figures.stats("test/a")).get("failed") is None  # a deferral is no attempt


async def test_a_read_without_waiting_takes_what_is_there_and_remakes_a_lost_group(
    store: Store,
) -> None:
    """``block_ms=None``: a busy dispatcher's read, on the pipelined connection."""
    sent = [replace(webhook(), body=bytes([i, 0xFF])) for i in range(3)]
    for wh in sent:
        await store.queue.enqueue("default", wh)
    read = await store.queue.read("default", "c1", 2, block_ms=None)
    assert [wh for _, wh in read] == sent[:2]
    assert [wh for _, wh in await store.queue.read("default", "c1", 5, None)] == sent[2:]
    assert await store.queue.read("default", "c1", 5, block_ms=None) == []
    # Redis lost the group (as after a flush): made again, that read empty; the next one
    # takes every entry still in the stream again, the three unsettled ones included.
    assert await store.redis.xgroup_destroy(store.queue.stream("default"), GROUP) == 1
    assert await store.queue.read("default", "c1", 5, block_ms=None) == []
    later = replace(webhook(), body=b"{}")
    await store.queue.enqueue("default", later)
    assert [wh for _, wh in await store.queue.read("default", "c1", 5, None)] == [*sent, later]


async def test_the_mover_learns_when_the_next_retry_is_due(store: Store) -> None:
    """What lets an idle dispatcher's mover sleep until then instead of polling."""
    queue = store.queue
    assert await queue.move_due_next("default") == (0, None)  # nothing scheduled
    await asyncio.gather(*(queue.enqueue("default", webhook()) for _ in range(2)))
    read = await queue.read("default", "c1", 10, block_ms=100)
    now = time.time()
    assert await queue.defer("default", [(read[0].msg_id, 0.2), (read[1].msg_id, 30.0)]) == 2
    moved, next_at = await queue.move_due_next("default")
    assert moved == 0 and next_at is not None and now + 0.1 < next_at < now + 0.5
    await asyncio.sleep(0.3)
    moved, next_at = await queue.move_due_next("default")
    assert moved == 1 and next_at is not None and now + 29 < next_at < now + 31


async def test_settling_works_after_redis_lost_its_script_cache(store: Store) -> None:
    wh = webhook()
    await store.queue.enqueue("default", wh)
    await store.queue.enqueue("default", webhook(), idempotency_key="k1")
    (mid, _), (mid2, second) = await store.queue.read("default", "c1", 10, block_ms=100)
    await store.redis.script_flush()
    assert (await store.queue.delivered("default", mid, wh)).acked
    await store.redis.script_flush()
    assert await store.queue.reschedule("default", mid2, second, 0.0)
    await store.redis.script_flush()
    assert await store.queue.move_due("default") == 1
    again = await store.queue.enqueue("default", webhook(), idempotency_key="k1")
    assert again == second.id, "the Idempotency-Key still maps to its first id"


async def test_every_waiting_writer_gets_store_unavailable_while_redis_is_down(
    own_redis: RedisServer, config: Config
) -> None:
    store = Store.connect(replace(config, redis_url=own_redis.url))
    try:
        await store.queue.enqueue("default", webhook())
        own_redis.stop(kill=True)
        results = await asyncio.gather(
            *(store.queue.enqueue("default", webhook()) for _ in range(100)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results[:3]
        own_redis.start()
        await store.queue.enqueue("default", webhook())
        assert (await store.figures.backlog("default"))["stream"] == 2
    finally:
        await store.aclose()


async def test_a_silent_redis_is_a_store_failure_not_a_hang(config: Config) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    port = free_port()
    server = await asyncio.start_server(silent, "127.0.0.1", port)
    store = Store.connect(
        replace(config, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.2)
    )
    try:
        with pytest.raises(StoreUnavailable, match="did not answer"):
            await store.queue.enqueue("default", webhook())
    finally:
        await store.aclose()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


async def test_writes_use_the_urls_user_password_and_database(
    own_redis: RedisServer, config: Config
) -> None:
    admin = aioredis.from_url(own_redis.url)
    await admin.execute_command("ACL", "SETUSER", "hl", "on", ">s3cret", "~*", "+@all")
    await admin.config_set("requirepass", "rootpw")
    await admin.aclose()
    host = f"127.0.0.1:{own_redis.port}"
    for url, db in ((f"redis://hl:s3cret@{host}/3", 3), (f"redis://:rootpw@{host}/2", 2)):
        store = Store.connect(replace(config, redis_url=url))
        try:
            await store.queue.enqueue("default", webhook())
            check = aioredis.from_url(f"redis://:rootpw@{host}/{db}")
            assert await check.xlen(store.queue.stream("default")) == 1
            await check.aclose()
        finally:
            await store.aclose()
    store = Store.connect(replace(config, redis_url=f"redis://hl:wrong@{host}/0"))
    try:
        with pytest.raises(StoreUnavailable):
            await store.queue.enqueue("default", webhook())
    finally:
        await store.aclose()


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[Path]:
    """A redis-server listening on a Unix socket only."""
    sock = tmp_path / "redis.sock"
    exe = require_binary("redis-server", "run `make test` (it installs redis-server)")
    argv = [exe, "--port", "0", "--save", "", "--unixsocket", str(sock), "--dir", str(tmp_path)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        yield sock
    finally:
        server.kill()
        server.wait()


async def test_writes_over_a_unix_socket(unix_redis: Path, config: Config) -> None:
    check = aioredis.from_url(f"unix://{unix_redis}?db=1")

    async def answers() -> bool:
        try:
            return bool(await check.ping())  # type: ignore[misc]
        except (OSError, RedisError):
            return False

    store = Store.connect(replace(config, redis_url=f"unix://{unix_redis}?db=1"))
    try:
        await eventually(answers, 10, "redis-server on its unix socket")
        await store.queue.enqueue("default", webhook())
        assert await check.xlen(store.queue.stream("default")) == 1
    finally:
        await store.aclose()
        await check.aclose()
