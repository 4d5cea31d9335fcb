"""The body reaper: stored bodies that nothing references go, referenced ones stay.

For the filesystem store and for GCS (a real fake-gcs-server), over real Redis: bodies
left with no entry are removed once older than the grace period while bodies of queued,
scheduled and dead-lettered webhooks stay; and the leftovers of real processes killed
with kill -9 between two steps — a ``hookline dispatcher`` between the endpoint's answer
and the body's delete, a ``hookline receiver`` between storing a body and enqueueing it —
are gone within the grace period and a few reaper intervals.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from hookline.bodies import BodyStore, FilesystemBodyStore
from hookline.config import Config, KiB
from hookline.gcs import GcsBodyStore
from hookline.models import Webhook
from hookline.store import Lease
from tests.peers import Endpoint, GcsServer, RedisServer, eventually, free_port, ok, wait_ready
from tests.stack import Stack, queued, stack_config

GRACE = 0.5
INTERVAL = 0.2
BODY = 200 * KiB  # above the inline limit (64 KiB): stored apart
ELSEWHERE = "elsewhere"  # a pool no dispatcher serves: its entries stay where they are put


@dataclass
class Stored:
    """A body store under test: the object, what is in it, and how a process reaches it."""

    kind: str
    store: BodyStore
    names: Callable[[], set[str]]
    env: dict[str, str]


@pytest.fixture(params=["fs", "gcs"])
async def stored(request: pytest.FixtureRequest, config: Config) -> AsyncIterator[Stored]:
    if request.param == "fs":
        root = Path(config.body_dir)

        def files() -> set[str]:
            return {
                os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
            }

        env = {"HOOKLINE_BODY_STORE": "fs", "HOOKLINE_BODY_DIR": str(root)}
        yield Stored("fs", FilesystemBodyStore(root), files, env)
        return
    server: GcsServer = request.getfixturevalue("gcs_server")
    bucket = f"hookline-{uuid.uuid4().hex[:12]}"
    server.create_bucket(bucket)
    # Pages of 2, so that a listing of a few bodies takes several pages.
    store = GcsBodyStore(
        bucket, chunk_size=256 * KiB, threads=4, timeout=2.0, endpoint=server.url, list_page_size=2
    )
    env = {
        "HOOKLINE_BODY_STORE": "gcs",
        "HOOKLINE_GCS_BUCKET": bucket,
        "STORAGE_EMULATOR_HOST": server.url,
    }
    try:
        yield Stored("gcs", store, lambda: set(server.objects(bucket)), env)
    finally:
        await store.close()


def put_foreign(stored: Stored, name: str) -> None:
    """An object or file that hookline did not write (not named like a body)."""
    if isinstance(stored.store, FilesystemBodyStore):
        path = stored.store.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not a body")
        os.utime(path, (0, 0))
        return
    url = stored.env["STORAGE_EMULATOR_HOST"]
    bucket = stored.env["HOOKLINE_GCS_BUCKET"]
    req = urllib.request.Request(
        f"{url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(name, safe='')}",
        data=b"not a body",
        method="POST",
    )
    urllib.request.urlopen(req, timeout=5).close()


async def put(stored: Stored, webhook_id: str) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield os.urandom(BODY)

    ref, _ = await stored.store.put(webhook_id, chunks(), 10 * BODY)
    return ref


def reaped(stack: Stack) -> float:
    return stack.metrics.registry.get_sample_value("hookline_bodies_reaped_total") or 0.0


async def test_bodies_nothing_references_are_reaped_and_referenced_ones_stay(
    config: Config, stored: Stored
) -> None:
    stack = await Stack(config, bodies=stored.store).start(dispatchers=0)
    try:
        queue = stack.queue
        await queue.ensure_group(ELSEWHERE)
        kept: dict[str, str] = {}
        # A body each place a webhook can be: scheduled for a retry, being delivered (read,
        # not settled), queued, dead-lettered.
        for where in ("retry", "in delivery", "queued", "dead letter"):
            wh = queued("test/x")
            wh.body, wh.body_ref, wh.size = b"", await put(stored, wh.id), BODY
            kept[where] = wh.body_ref
            if where == "dead letter":
                await queue.dead(ELSEWHERE, None, wh, "test")
                continue
            await queue.enqueue(ELSEWHERE, wh)
            if where != "queued":
                [(msg_id, _)] = await queue.read(ELSEWHERE, "test", 1, 100)
                if where == "retry":
                    await queue.reschedule(ELSEWHERE, msg_id, wh, 3600)
        # Then the leftovers: stored last, so that a pass which finds them old enough
        # finds every body above old enough too.
        orphan = await put(stored, "msg_orphan")
        gone = {orphan}
        if stored.kind == "fs":  # a receiver killed while writing leaves a .part file
            part = Path(config.body_dir) / (orphan + "x.part")
            part.write_bytes(b"half a body")
            gone.add(orphan + "x.part")
        put_foreign(stored, "notes/readme.txt")
        assert gone | set(kept.values()) <= stored.names()
        backlog = await stack.store.figures.backlog(ELSEWHERE)
        assert (backlog["stream"], backlog["retry_scheduled"]) == (2, 1)

        started = time.monotonic()
        await stack.start_dispatcher(body_grace=GRACE, body_reap_interval=INTERVAL)

        async def reaped_all() -> bool:
            return not (gone & await asyncio.to_thread(stored.names))

        await eventually(reaped_all, GRACE + 10 * INTERVAL + 5, "the leftovers to be reaped")
        print(f"\nleftovers reaped {time.monotonic() - started:.2f} s after the start")
        left = stored.names()
        for where, ref in kept.items():
            assert ref in left, f"the body of the webhook {where} was removed"
        assert "notes/readme.txt" in left, "an object not named like a body was removed"
        assert reaped(stack) == len(gone)
        assert (await stack.store.figures.backlog(ELSEWHERE))["retry_scheduled"] == 1
        assert len(await stack.store.dead_letters.find()) == 1
    finally:
        await stack.stop()


async def test_due_retries_and_replays_wait_while_a_pass_reads_the_references(
    config: Config,
) -> None:
    """The two moves that could carry a body past a pass's reads wait for the pass."""
    stack = await Stack(config).start(dispatchers=0)
    try:
        queue = stack.queue
        await queue.ensure_group(ELSEWHERE)
        wh = queued("test/x")
        await queue.enqueue(ELSEWHERE, wh)
        [(msg_id, _)] = await queue.read(ELSEWHERE, "test", 1, 100)
        await queue.reschedule(ELSEWHERE, msg_id, wh, 0)  # due at once
        await queue.dead(ELSEWHERE, None, queued("test/x"), "test")
        [letter] = await stack.store.dead_letters.find()

        reading = Lease(stack.store.conn, stack.store.keys.reaper_pass, 10.0, "a test pass")
        assert await reading.hold()
        assert await queue.move_due(ELSEWHERE) == 0
        replay = asyncio.create_task(stack.store.dead_letters.replay(letter, ELSEWHERE))
        await asyncio.sleep(0.3)  # no event to await: the replay must simply not happen
        assert not replay.done()
        assert (await stack.store.figures.backlog(ELSEWHERE))["stream"] == 0

        await reading.release()
        assert await asyncio.wait_for(replay, 5) is True
        assert await queue.move_due(ELSEWHERE) == 1
        assert (await stack.store.figures.backlog(ELSEWHERE))["stream"] == 2
    finally:
        await stack.stop()


# -- real processes killed between two steps


def hookline(role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hookline", "--log-level", "INFO", role],
            env=env,
            stdout=out,
            stderr=out,
        )


def process_env(config: Config, stored: Stored, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HOOKLINE_REDIS_URL": config.redis_url,
        "HOOKLINE_PREFIX": config.prefix,
        "HOOKLINE_ALLOW_CIDRS": "127.0.0.0/8",
        "HOOKLINE_DISPATCHER_PORT": "0",
        "HOOKLINE_CLAIM_IDLE": "1",
        **stored.env,
        **extra,
    }


async def scrape(port: int, name: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


@pytest.mark.chaos
@pytest.mark.parametrize("window", ["before-ack", "before-delete"])
async def test_body_of_a_delivery_cut_by_kill_9_is_gone_within_grace_and_interval(
    config: Config, stored: Stored, endpoint: Endpoint, tmp_path: Path, window: str
) -> None:
    """kill -9 of a ``hookline dispatcher`` once the endpoint has the webhook: before the
    acknowledgement (another dispatcher reclaims it, delivers it again and deletes the
    body: the reaper must leave the pending entry's body alone), or between the
    acknowledgement and the body's delete (nothing references the body: the reaper)."""
    stack = await Stack(config, bodies=stored.store).start(dispatchers=0)
    first = second = None
    try:
        ep, key = await stack.add_endpoint(endpoint.on("/hook", ok))
        body = os.urandom(BODY)
        status, answer = await stack.send(key, body)
        assert status == 202, answer
        wid = answer["id"]
        [(_, fields)] = await stack.redis.xrange(stack.queue.stream("default"))
        ref = Webhook.unpack(fields[b"d"]).body_ref
        assert ref is not None and ref in stored.names()

        # The first dispatcher reaps too (it takes the reaper lease), with the default grace
        # under which this body is too young: the lease must pass on after the kill.
        fault = {"before-ack": "HOOKLINE_FAULT_ACK_DELAY"}.get(
            window, "HOOKLINE_FAULT_DELETE_DELAY"
        )
        env = process_env(
            config, stored, HOOKLINE_BODY_REAP_INTERVAL=str(INTERVAL), **{fault: "60"}
        )
        first = hookline("dispatcher", env, tmp_path / "first.log")
        await endpoint.wait_for(lambda: wid in endpoint.ids(), 30, "the first delivery")
        if window == "before-delete":

            async def acknowledged() -> bool:
                return (await stack.store.figures.stats(ep.id)).get("delivered") == "1"

            await eventually(acknowledged, 10, "the delivery to be acknowledged")
        kill_9(first)
        assert ref in stored.names(), "the body went with the kill: no window was hit"
        pending = await stack.redis.xlen(stack.queue.stream("default"))
        assert pending == (1 if window == "before-ack" else 0)

        port = free_port()
        env = process_env(
            config,
            stored,
            HOOKLINE_DISPATCHER_PORT=str(port),
            HOOKLINE_BODY_GRACE=str(GRACE),
            HOOKLINE_REQUEST_TIMEOUT=str(GRACE / 2),  # the grace must exceed it
            HOOKLINE_BODY_REAP_INTERVAL=str(INTERVAL),
        )
        second = hookline("dispatcher", env, tmp_path / "second.log")
        await wait_ready(port, "second dispatcher", second)
        ready = time.monotonic()
        # The killed dispatcher's lease lapses after 3 intervals; then a pass each interval.
        bound = GRACE + 4 * INTERVAL + 5

        async def body_gone() -> bool:
            return ref not in await asyncio.to_thread(stored.names)

        await eventually(body_gone, bound, "the body to be removed")
        print(f"\nbody gone {time.monotonic() - ready:.2f} s after the dispatcher was ready")
        copies = [r.body for r in endpoint.received if r.headers["webhook-id"] == wid]
        if window == "before-ack":
            # Reclaimed and delivered again, with its body: the reaper did not take it.
            await endpoint.wait_for(lambda: endpoint.ids()[wid] == 2, 10, "the redelivery")
            copies = [r.body for r in endpoint.received if r.headers["webhook-id"] == wid]
            assert copies == [body, body]
            # (Its body then went by the dispatcher's delete or, between its acknowledgement
            # and that delete, by the reaper: either is right.)
        else:
            assert copies == [body]
            assert await scrape(port, "hookline_bodies_reaped_total") == 1
        assert await stack.store.dead_letters.find() == []
        assert await stack.redis.xlen(stack.queue.stream("default")) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                kill_9(proc)
        await stack.stop()


@pytest.mark.chaos
async def test_body_of_a_receiver_killed_before_enqueueing_is_reaped(
    own_redis: RedisServer, config: Config, stored: Stored, endpoint: Endpoint, tmp_path: Path
) -> None:
    """kill -9 of a ``hookline receiver`` after the body is stored, while its enqueue waits
    on Redis (writes paused): no entry, a body nothing references, which the reaper removes.
    The test has a Redis of its own, whose writes it pauses."""
    config = stack_config(own_redis.url, "reap", config.body_dir)
    stack = await Stack(config, bodies=stored.store).start(dispatchers=0)
    receiver = None
    try:
        _, key = await stack.add_endpoint(endpoint.on("/hook", ok))
        port = free_port()
        env = process_env(
            config,
            stored,
            HOOKLINE_RECEIVER_HOST="127.0.0.1",
            HOOKLINE_RECEIVER_PORT=str(port),
            HOOKLINE_REDIS_TIMEOUT="30",  # the enqueue waits for Redis rather than fails
        )
        receiver = hookline("receiver", env, tmp_path / "receiver.log")
        await wait_ready(port, "receiver", receiver)
        before = stored.names()

        await stack.redis.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
        try:
            client = stack.client
            assert client is not None

            async def post() -> int:
                url = f"http://127.0.0.1:{port}/webhooks/send"
                headers = {"X-WH-Endpoint-Key": key}
                async with client.post(url, data=os.urandom(BODY), headers=headers) as resp:
                    return resp.status

            posting = asyncio.create_task(post())

            async def stored_whole() -> bool:
                new = await asyncio.to_thread(stored.names) - before
                return any(not n.endswith(".part") for n in new)

            await eventually(stored_whole, 20, "the receiver to store the body")
            kill_9(receiver)
            with pytest.raises(aiohttp.ClientError):
                await posting
        finally:
            await stack.redis.execute_command("CLIENT", "UNPAUSE")
        [ref] = stored.names() - before
        assert await stack.redis.xlen(stack.queue.stream("default")) == 0

        await stack.start_dispatcher(
            body_grace=GRACE, request_timeout=GRACE / 2, body_reap_interval=INTERVAL
        )

        async def body_gone() -> bool:
            return ref not in await asyncio.to_thread(stored.names)

        await eventually(body_gone, GRACE + 2 * INTERVAL + 5, "the body to be reaped")
        assert reaped(stack) == 1
        assert endpoint.received == []
    finally:
        if receiver is not None and receiver.poll() is None:
            kill_9(receiver)
        await stack.stop()
