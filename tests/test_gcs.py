"""Bodies through Google Cloud Storage, against a real fake-gcs-server.

The receiver streams bodies above the inline limit into the emulator, the
dispatcher streams them back into the POST, and the endpoint must get the
sender's bytes exactly; outages of the emulator and a kill -9 of a receiver
process must never produce a 2xx for a body that is not stored whole.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import hmac
import io
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hookline.config import Config, KiB, MiB
from hookline.errors import BodyLengthMismatch, BodyMissing, BodyTooLarge, StoreUnavailable
from hookline.gcs import GcsBodyStore
from hookline.models import Webhook
from tests.peers import Endpoint, GcsServer, eventually, free_port, ok
from tests.stack import Stack

INLINE = 64 * KiB
CHUNK = 1 * MiB  # small chunks, so that 5 MiB and 50 MiB bodies take many of them


@pytest.fixture
def own_gcs(tmp_path: Path) -> Iterator[GcsServer]:
    """An emulator of the test's own, for tests that stop and restart it."""
    server = GcsServer(tmp_path / "gcs")
    server.start()
    yield server
    server.stop(kill=True)


def new_bucket(server: GcsServer) -> str:
    name = f"hookline-{uuid.uuid4().hex[:12]}"
    server.create_bucket(name)
    return name


def gcs_config(config: Config) -> Config:
    return replace(config, inline_limit=INLINE, max_body_bytes=64 * MiB, request_timeout=60.0)


async def gcs_stack(
    config: Config, server: GcsServer, bucket: str, dispatchers: int = 1
) -> tuple[Stack, GcsBodyStore]:
    store = GcsBodyStore(bucket, chunk_size=CHUNK, threads=4, timeout=2.0, endpoint=server.url)
    stack = await Stack(gcs_config(config), bodies=store).start(dispatchers)
    return stack, store


async def stream_entries(stack: Stack, pool: str = "default") -> list[Webhook]:
    raw = await stack.redis.xrange(stack.queue.stream(pool))
    return [Webhook.unpack(fields[b"d"]) for _, fields in raw]


def signature_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks: base64 HMAC-SHA256 of ``id.timestamp.body`` under the secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return f"v1,{expected}" in headers["webhook-signature"].split()


async def send(
    stack: Stack, key: str, body: bytes, content_type: str = "application/octet-stream"
) -> tuple[int, dict[str, Any]]:
    """POST a body of any size as a sender would (streamed from a file-like object)."""
    assert stack.client is not None
    headers = {"X-WH-Endpoint-Key": key, "Content-Type": content_type}
    async with stack.client.post(
        stack.url + "/webhooks/send", data=io.BytesIO(body), headers=headers
    ) as resp:
        if resp.status == 503:
            assert resp.headers["Retry-After"] == "1"
        return resp.status, await resp.json()


def body_of(size: int) -> bytes:
    return os.urandom(size)


@pytest.mark.parametrize(
    "size",
    [0, 1, INLINE - 1, INLINE, INLINE + 1, 5 * MiB, 5 * MiB + 1, 50 * MiB],
    ids=["0", "1", "inline-1", "inline", "inline+1", "5MiB", "5MiB+1", "50MiB"],
)
async def test_body_arrives_byte_identical_and_its_object_is_deleted(
    config: Config, gcs_server: GcsServer, endpoint: Endpoint, size: int
) -> None:
    bucket = new_bucket(gcs_server)
    stack, store = await gcs_stack(config, gcs_server, bucket)
    try:
        ep, key = await stack.add_endpoint(endpoint.on("/big", ok))
        sent = body_of(size)
        status, answer = await send(stack, key, sent, "application/x-test")
        assert status == 202, answer
        wid = answer["id"]
        await endpoint.wait_for(lambda: wid in endpoint.ids(), 60, f"the {size}-byte body")
        got = endpoint.received[0]
        assert len(got.body) == size
        assert hashlib.sha256(got.body).hexdigest() == hashlib.sha256(sent).hexdigest()
        assert got.headers["content-type"] == "application/x-test"
        # Signed over the very bytes that were sent (the body is read twice from GCS).
        assert signature_valid(stack.secrets[ep.id], got.headers, got.body)

        async def counted() -> bool:
            return (await stack.store.figures.stats(ep.id)).get("delivered") == "1"

        await eventually(counted, 10, "the delivery to be recorded")

        async def bucket_empty() -> bool:
            return await asyncio.to_thread(gcs_server.objects, bucket) == {}

        await eventually(bucket_empty, 10, "the body's object to be deleted after delivery")
        storage = "ref" if size > INLINE else "inline"  # only bodies past the limit use GCS
        sample = {"storage": storage}
        assert stack.metrics.registry.get_sample_value("hookline_ingested_total", sample) == 1
    finally:
        await stack.stop()
        await store.close()


async def test_gcs_down_while_receiving_answers_503_and_enqueues_nothing(
    config: Config, own_gcs: GcsServer, endpoint: Endpoint
) -> None:
    bucket = new_bucket(own_gcs)
    stack, store = await gcs_stack(config, own_gcs, bucket, dispatchers=0)
    try:
        _, key = await stack.add_endpoint(endpoint.on("/x", ok))
        own_gcs.stop(kill=True)
        assert stack.client is not None
        for size in (INLINE + 1, 3 * MiB):
            status, answer = await send(stack, key, body_of(size))
            assert status == 503, answer
            assert answer["error"] == "store_unavailable"
        assert await stream_entries(stack) == []
        # Bodies that travel inline do not need GCS and are still accepted.
        status, _ = await stack.send(key, b'{"small":true}')
        assert status == 202
        assert [w.body_ref for w in await stream_entries(stack)] == [None]
        own_gcs.start()
        # Nothing of the refused bodies became an object.
        assert own_gcs.objects(bucket) == {}
    finally:
        await stack.stop()
        await store.close()


async def test_gcs_down_while_dispatching_is_retried_and_delivered_after_it_returns(
    config: Config, own_gcs: GcsServer, endpoint: Endpoint
) -> None:
    bucket = new_bucket(own_gcs)
    stack, store = await gcs_stack(config, own_gcs, bucket, dispatchers=0)
    try:
        ep, key = await stack.add_endpoint(endpoint.on("/x", ok))
        sent = body_of(3 * MiB + 5)
        status, answer = await send(stack, key, sent)
        assert status == 202
        own_gcs.stop(kill=True)
        await stack.start_dispatcher()

        async def deferred() -> bool:
            return (await stack.store.figures.backlog("default"))["retry_scheduled"] == 1

        await eventually(deferred, 15, "the delivery to be put off while GCS is down")
        assert endpoint.received == []
        own_gcs.start()
        wid = answer["id"]
        await endpoint.wait_for(lambda: wid in endpoint.ids(), 30, "the delivery after GCS is back")
        assert hashlib.sha256(endpoint.received[0].body).digest() == hashlib.sha256(sent).digest()

        async def cleaned() -> bool:
            return (await stack.store.figures.stats(ep.id)).get("delivered") == "1" and (
                await asyncio.to_thread(own_gcs.objects, bucket) == {}
            )

        await eventually(cleaned, 10, "the delivery to be recorded and its object deleted")
    finally:
        await stack.stop()
        await store.close()


async def test_store_reports_missing_and_oversize_bodies(gcs_server: GcsServer) -> None:
    store = GcsBodyStore(new_bucket(gcs_server), chunk_size=256 * KiB, endpoint=gcs_server.url)
    try:
        with pytest.raises(BodyMissing):
            async for _ in store.open("2020/01/01/msg_gone"):
                pass
        await store.delete("2020/01/01/msg_gone")  # a missing body counts as deleted

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b"x" * (128 * KiB)

        with pytest.raises(BodyTooLarge):
            await store.put("msg_big", chunks(), 600 * KiB)

        async def nothing_left() -> bool:
            return await asyncio.to_thread(gcs_server.objects, store.bucket_name) == {}

        await eventually(nothing_left, 5, "the oversize upload to leave nothing")
    finally:
        await store.close()


class Requests:
    """The upload requests a store's GCS client makes, as (method, upload type) in order
    (the client's own once-per-bucket metadata read, in the background, is left out)."""

    def __init__(self, store: GcsBodyStore) -> None:
        assert store._client is not None, "the store has not made its client yet"
        self.made: list[tuple[str, str]] = []
        store._client._http.hooks["response"].append(self._hook)

    def _hook(self, response: Any, *args: Any, **kwargs: Any) -> None:
        url = response.request.url
        if "upload_id=" in url:
            self.made.append((response.request.method, "resumable"))
        elif "uploadType=" in url:
            kind = url.split("uploadType=", 1)[1].split("&", 1)[0]
            self.made.append((response.request.method, kind))

    def take(self) -> list[tuple[str, str]]:
        made, self.made = self.made, []
        return made


async def pieces(body: bytes, piece: int = 100_000) -> AsyncIterator[bytes]:
    """The body as a receiver hands it over: pieces that do not line up with chunks."""
    for at in range(0, len(body), piece):
        yield body[at : at + piece]


async def stored_bytes(store: GcsBodyStore, ref: str) -> bytes:
    return b"".join([chunk async for chunk in store.open(ref)])


SINGLE = [("POST", "multipart")]


def resumable(chunks: int) -> list[tuple[str, str]]:
    """A session, then one PUT per chunk (the last one shorter, or empty)."""
    return [("POST", "resumable")] + [("PUT", "resumable")] * chunks


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
@pytest.mark.parametrize(
    ("size", "requests"),
    [
        (1, SINGLE),
        (CHUNK - 1, SINGLE),
        (CHUNK, SINGLE),
        (CHUNK + 1, resumable(2)),
        (2 * CHUNK, resumable(3)),  # the client cannot tell the last full chunk is the last
        (2 * CHUNK + 1, resumable(3)),
    ],
    ids=["1", "chunk-1", "chunk", "chunk+1", "2chunks", "2chunks+1"],
)
async def test_body_up_to_a_chunk_is_one_request_and_a_longer_one_resumable(
    gcs_server: GcsServer, size: int, requests: list[tuple[str, str]], declared: bool
) -> None:
    store = GcsBodyStore(new_bucket(gcs_server), chunk_size=CHUNK, endpoint=gcs_server.url)
    try:
        await store.check()
        made = Requests(store)
        sent = body_of(size)
        ref, stored = await store.put(
            "msg_path", pieces(sent), 64 * MiB, size if declared else None
        )
        assert made.take() == requests
        assert stored == size
        got = await stored_bytes(store, ref)
        assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
        assert gcs_server.objects(store.bucket_name) == {ref: size}
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("declared", "sent"),
    [
        (CHUNK // 2, CHUNK // 2 - 1),
        (CHUNK // 2, CHUNK // 2 + 1),
        (CHUNK, CHUNK + 1),
        (3 * CHUNK, 3 * CHUNK - 1),  # short after two chunks were sent: a session to cancel
        (2 * CHUNK + 5, 3 * CHUNK),
    ],
    ids=["single-short", "single-long", "chunk-long", "resumable-short", "resumable-long"],
)
async def test_body_not_matching_its_declared_length_is_refused_and_leaves_no_object(
    gcs_server: GcsServer, declared: int, sent: int
) -> None:
    store = GcsBodyStore(new_bucket(gcs_server), chunk_size=CHUNK, endpoint=gcs_server.url)
    try:
        await store.check()
        made = Requests(store)
        with pytest.raises(BodyLengthMismatch):
            await store.put("msg_liar", pieces(body_of(sent)), 64 * MiB, declared)

        await store.close()  # waits for the abandoned upload to be cleaned up
        assert gcs_server.objects(store.bucket_name) == {}
        if declared <= CHUNK:  # refused before anything was sent
            assert made.take() == []
        else:  # the session was opened, fed whole chunks, then cancelled
            assert made.take()[-1] == ("DELETE", "resumable")
    finally:
        await store.close()


async def test_receiver_uploads_a_body_of_one_chunk_with_content_length_in_one_request(
    config: Config, gcs_server: GcsServer, endpoint: Endpoint
) -> None:
    bucket = new_bucket(gcs_server)
    stack, store = await gcs_stack(config, gcs_server, bucket, dispatchers=0)
    try:
        _, key = await stack.add_endpoint(endpoint.on("/x", ok))
        await store.check()
        made = Requests(store)
        status, answer = await send(stack, key, body_of(CHUNK))  # a file: Content-Length set
        assert status == 202, answer
        assert made.take() == SINGLE
        [entry] = await stream_entries(stack)
        assert entry.body_ref is not None
        assert gcs_server.objects(bucket) == {entry.body_ref: CHUNK}
    finally:
        await stack.stop()
        await store.close()


@pytest.mark.parametrize("size", [CHUNK // 2, 3 * CHUNK], ids=["one-request", "resumable"])
async def test_sender_gone_before_its_declared_length_gets_no_entry_and_no_object(
    config: Config, gcs_server: GcsServer, endpoint: Endpoint, size: int
) -> None:
    bucket = new_bucket(gcs_server)
    stack, store = await gcs_stack(config, gcs_server, bucket, dispatchers=0)
    try:
        _, key = await stack.add_endpoint(endpoint.on("/x", ok))
        host, port = stack.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"POST /webhooks/send HTTP/1.1\r\nHost: {host}\r\nX-WH-Endpoint-Key: {key}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        )
        writer.write(head.encode() + body_of(size - 1000))
        await writer.drain()
        writer.write_eof()  # the sender stops 1,000 bytes short and goes away
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]

        async def nothing_left() -> bool:
            return await asyncio.to_thread(gcs_server.objects, bucket) == {}

        await eventually(nothing_left, 10, "the unfinished upload to leave nothing")
        assert await stream_entries(stack) == []
    finally:
        await stack.stop()
        await store.close()


async def test_proxy_settings_of_the_environment_are_honoured(
    gcs_server: GcsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client reads HTTP_PROXY and NO_PROXY once, when it is made, not per request."""
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.url}")
        return web.Response(status=502)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    bucket = new_bucket(gcs_server)
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        via_proxy = GcsBodyStore(bucket, chunk_size=CHUNK, timeout=1.0, endpoint=gcs_server.url)
        with pytest.raises(StoreUnavailable):
            await via_proxy.put("msg_proxied", pieces(b"x" * 100), 1000, 100)
        assert seen and all(gcs_server.url in line for line in seen), seen
        await via_proxy.close()

        seen.clear()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = GcsBodyStore(bucket, chunk_size=CHUNK, endpoint=gcs_server.url)
        await direct.check()  # makes the client
        monkeypatch.delenv("NO_PROXY")  # read when the client was made: no longer needed
        ref, _ = await direct.put("msg_direct", pieces(b"x" * 100), 1000, 100)
        assert gcs_server.objects(bucket) == {ref: 100}
        # The proxied client's clean-up of its failed upload may still reach its proxy now
        # (it runs in the background); none of the direct client's requests may.
        assert [line for line in seen if "msg_proxied" not in line] == [], seen
        await direct.close()
    finally:
        await runner.cleanup()


async def test_a_failed_upload_is_reported_once_not_again_by_asyncio(
    gcs_server: GcsServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = GcsBodyStore("hookline-no-such-bucket", timeout=1.0, endpoint=gcs_server.url)
    with pytest.raises(StoreUnavailable):
        await store.put("msg_nowhere", pieces(b"x" * 100), 1000, 100)
    await store.close()  # waits for the abandoned upload's cleanup
    gc.collect()  # asyncio reports an unretrieved exception when its future is collected
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def receiver_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``hookline receiver`` as its own process, configured by ``env``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hookline.cli", "receiver"], env=env, stdout=out, stderr=out
        )


@pytest.mark.chaos
async def test_receiver_killed_mid_upload_leaves_no_entry_pointing_at_a_partial_object(
    config: Config, gcs_server: GcsServer, endpoint: Endpoint, tmp_path: Path
) -> None:
    bucket = new_bucket(gcs_server)
    # The in-process stack only registers the endpoint and reads the queue; the
    # receiver under test is a `hookline receiver` process configured by environment.
    stack, store = await gcs_stack(config, gcs_server, bucket, dispatchers=0)
    proc = None
    try:
        _, key = await stack.add_endpoint(endpoint.on("/x", ok))
        port = free_port()
        env = {
            **os.environ,
            "HOOKLINE_REDIS_URL": config.redis_url,
            "HOOKLINE_PREFIX": config.prefix,
            "HOOKLINE_RECEIVER_HOST": "127.0.0.1",
            "HOOKLINE_RECEIVER_PORT": str(port),
            "HOOKLINE_BODY_STORE": "gcs",
            "HOOKLINE_GCS_BUCKET": bucket,
            "HOOKLINE_GCS_CHUNK_SIZE": str(CHUNK),
            "HOOKLINE_MAX_BODY_BYTES": str(100 * MiB),
            "STORAGE_EMULATOR_HOST": gcs_server.url,
        }
        proc = receiver_process(env, tmp_path / "receiver.log")
        url = f"http://127.0.0.1:{port}"
        assert stack.client is not None
        client = stack.client

        async def ready() -> bool:
            assert proc is not None and proc.poll() is None, "the receiver process exited"
            try:
                async with client.get(url + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, 20, "the receiver process to be ready")

        # A whole large body goes through: the process really stores bodies in GCS.
        whole = body_of(4 * MiB + 3)
        headers = {"X-WH-Endpoint-Key": key}
        data = io.BytesIO(whole)
        async with client.post(url + "/webhooks/send", data=data, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
        [entry] = await stream_entries(stack)
        assert entry.body_ref is not None
        assert gcs_server.objects(bucket) == {entry.body_ref: len(whole)}

        # Now a 60 MiB body, and kill -9 once a good part of it has gone in.
        total, piece = 60 * MiB, 256 * KiB
        sent = 0
        halfway = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            nonlocal sent
            while sent < total:
                yield os.urandom(piece)
                sent += piece
                if sent >= 24 * MiB:
                    halfway.set()
                    await asyncio.sleep(0.01)

        async def post() -> int:
            h = {**headers, "Content-Length": str(total)}
            async with client.post(url + "/webhooks/send", data=slow_body(), headers=h) as r:
                return r.status

        posting = asyncio.create_task(post())
        await asyncio.wait_for(halfway.wait(), 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with pytest.raises(aiohttp.ClientError):
            await posting
        assert sent < total

        # Only the whole body is referenced, and it is the only object.
        assert [w.body_ref for w in await stream_entries(stack)] == [entry.body_ref]
        assert gcs_server.objects(bucket) == {entry.body_ref: len(whole)}
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await stack.stop()
        await store.close()
