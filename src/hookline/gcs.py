"""Bodies in Google Cloud Storage, for receivers and dispatchers that run on several machines.

Built by the entry point (:func:`hookline.runtime.body_store` when
``HOOKLINE_BODY_STORE=gcs``) and used by the receiver (``put``) and the
dispatcher (``open``, ``delete``; its body reaper ``older``) through the
:class:`~hookline.bodies.BodyStore` protocol. It uses the official
``google-cloud-storage`` client, whose calls block, on a bounded pool of threads:
the event loop only hands chunks over and awaits, a slow sender or endpoint holds
no thread between two chunks, and the pool size bounds the GCS requests in flight
per process (``docs/bodies.md`` has the measurements behind this choice).

* ``put`` reads up to one chunk (and one piece past it); a body of at most one
  chunk is one single-request upload. A longer one becomes a resumable upload,
  sent a chunk at a time as the sender's bytes arrive, so at most about two chunks
  of a body are in memory. The object exists only once the last chunk is sent: a
  crash mid-upload leaves an unfinished upload session, never a partial object,
  and the receiver enqueues only after ``put`` returned. A body whose bytes do not
  add up to its declared length is refused before that last request. A failed or
  cancelled upload is abandoned in the background (session cancelled, object
  deleted if it got finished anyway).
* ``open`` streams the object back as ranged reads of one chunk each.
* ``older`` lists the bucket a page at a time with each object's creation time, for
  the dispatchers' body reaper.
* Objects are named ``YYYY/MM/DD/<webhook id>`` and created only if absent
  (``ifGenerationMatch=0``), which also makes retrying an upload safe.

Credentials are Application Default Credentials (Workload Identity on GKE); the
client's own ``STORAGE_EMULATOR_HOST`` points it at an emulator, and so does
``endpoint`` (anonymous credentials). Errors are wrapped here: a missing object
is :class:`~hookline.errors.BodyMissing`, anything else that fails to reach or
satisfy GCS is :class:`~hookline.errors.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import requests
import requests.adapters
import requests.utils
from google.api_core.exceptions import GoogleAPIError, NotFound, RequestRangeNotSatisfiable
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.fileio import BlobWriter
from google.cloud.storage.retry import DEFAULT_RETRY

from hookline.bodies import BodyLength, is_body_name, object_name
from hookline.errors import BodyMissing, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_MULTIPLE = 256 * 1024  # what resumable uploads require of every chunk but the last

# What the client raises when GCS cannot be reached or refuses a request; OSError
# covers requests' own exceptions and a refused or reset connection.
_UNAVAILABLE = (GoogleAPIError, GoogleAuthError, InvalidResponse, DataCorruption, OSError)


class GcsBodyStore:
    """Bodies as objects in one bucket; see the module docstring."""

    def __init__(
        self,
        bucket: str,
        *,
        chunk_size: int = 4 * 1024 * 1024,
        threads: int = 16,
        timeout: float = 10.0,
        endpoint: str | None = None,
        list_page_size: int = 1000,
    ) -> None:
        if not bucket:
            raise ValueError("a bucket name is required")
        if chunk_size <= 0 or chunk_size % CHUNK_MULTIPLE:
            raise ValueError(f"chunk_size must be a positive multiple of {CHUNK_MULTIPLE}")
        self.bucket_name = bucket
        self.chunk_size = chunk_size
        self.threads = threads
        self.timeout = timeout
        self.endpoint = endpoint
        self.list_page_size = list_page_size
        # Every call (and its retries) gives up after ``timeout`` seconds, so a GCS outage
        # becomes a 503 or a deferred delivery in bounded time.
        self.retry: Retry = DEFAULT_RETRY.with_timeout(timeout)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="gcs")
        self._client: storage.Client | None = None
        self._bucket: storage.Bucket | None = None
        self._client_lock = asyncio.Lock()
        self._cleanups: set[asyncio.Task[None]] = set()

    # -- plumbing

    def _submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        return self._pool.submit(functools.partial(fn, *args, **kwargs))

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` on the pool; client errors become StoreUnavailable, but for 404 and 416."""
        return await _result(self._submit(fn, *args, **kwargs))

    def _make_client(self) -> storage.Client:
        if self.endpoint:
            client = storage.Client(
                project="hookline",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": self.endpoint},
            )
        else:  # Application Default Credentials, or the client's STORAGE_EMULATOR_HOST
            client = storage.Client()
        # requests keeps 10 connections per host by default; one per thread avoids
        # reconnecting (and urllib3's "pool is full" warnings) under load.
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=self.threads, max_retries=0
        )
        session = client._http
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        _read_environment_once(session, client._connection.API_BASE_URL)
        return client

    async def _bucket_handle(self) -> storage.Bucket:
        if self._bucket is None:
            async with self._client_lock:
                if self._bucket is None:
                    client = await self._run(self._make_client)
                    self._client, self._bucket = client, client.bucket(self.bucket_name)
        return self._bucket

    # -- the protocol

    async def put(
        self,
        webhook_id: str,
        chunks: AsyncIterator[bytes],
        limit: int,
        size: int | None = None,
    ) -> tuple[str, int]:
        bucket = await self._bucket_handle()
        ref = object_name(webhook_id)
        blob = bucket.blob(ref)
        upload = _Upload(self, blob)
        try:
            stored = await upload.send(chunks, limit, size)
        except BaseException as exc:
            task = asyncio.create_task(upload.abandon())
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)
            if isinstance(exc, NotFound):
                raise StoreUnavailable(f"gcs: bucket {self.bucket_name!r}: {exc}") from exc
            raise
        return ref, stored

    async def open(self, ref: str) -> AsyncIterator[bytes]:
        bucket = await self._bucket_handle()
        blob = bucket.blob(ref)  # learns the generation from the first range, pins the rest
        size = self.chunk_size
        pos = 0
        while True:
            try:
                chunk = await self._run(
                    blob.download_as_bytes,
                    start=pos,
                    end=pos + size - 1,
                    raw_download=True,  # the bytes as stored, whatever their encoding
                    checksum=None,  # a range has no checksum to compare with
                    # One read of the whole range, not 8 KiB at a time: several times less CPU.
                    single_shot_download=True,
                    timeout=self.timeout,
                    retry=self.retry,
                )
            except RequestRangeNotSatisfiable:  # the previous chunk ended the object exactly
                return
            except NotFound as exc:
                raise BodyMissing(f"gcs: {ref} is gone") from exc
            if chunk:
                yield chunk
            if len(chunk) < size:
                return
            pos += len(chunk)

    async def delete(self, ref: str) -> None:
        bucket = await self._bucket_handle()
        with contextlib.suppress(NotFound):
            await self._run(bucket.blob(ref).delete, timeout=self.timeout, retry=self.retry)

    async def older(self, cutoff: float) -> AsyncIterator[str]:
        """Objects created before ``cutoff``, listed a page at a time (an unfinished
        resumable upload is no object: GCS drops its session by itself)."""
        bucket = await self._bucket_handle()
        pages = bucket.list_blobs(
            page_size=self.list_page_size,
            fields="items(name,timeCreated),nextPageToken",
            timeout=self.timeout,
            retry=self.retry,
        ).pages  # lazy: each page is one request, made on the pool by _next_page
        try:
            while (page := await self._run(_next_page, pages)) is not None:
                for name, created in page:
                    if created < cutoff and is_body_name(name):
                        yield name
        except NotFound as exc:
            raise StoreUnavailable(f"gcs: bucket {self.bucket_name!r}: {exc}") from exc

    async def check(self) -> None:
        # Credentials and client only, no request: a GCS outage must cost the large
        # bodies (503), not take every receiver out of its Service.
        await self._bucket_handle()

    async def close(self) -> None:
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=self.timeout)
        client, self._client, self._bucket = self._client, None, None
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _read_environment_once(session: requests.Session, url: str) -> None:
    """What requests reads from the environment on every request, read once for ``url``.

    Per request, requests walks the whole environment twice for proxy settings
    (``HTTPS_PROXY``, ``NO_PROXY``...) and looks for a CA bundle variable and
    ``~/.netrc``: about 0.3 ms of a 256 KiB upload's 2 ms of client CPU here (35
    variables; a pod has several more per Service in its namespace). The environment
    does not change while the process runs and the client talks to one host, so the
    proxies for that host and the CA bundle go on the session once. ``~/.netrc`` is no
    longer read: GCS requests carry their own Authorization. Credential refreshes use
    google-auth's own session, which is left as it is.
    """
    session.proxies.update(requests.utils.get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and session.verify is True:
        session.verify = bundle
    session.trust_env = False


def _next_page(pages: Iterator[Any]) -> list[tuple[str, float]] | None:
    """The next page of a listing as (name, creation time), None after the last one."""
    page = next(pages, None)
    if page is None:
        return None
    # An object without its creation time (not seen from GCS) is taken for a new one.
    return [
        (blob.name, blob.time_created.timestamp() if blob.time_created else math.inf)
        for blob in page
    ]


async def _result(future: Future[T]) -> T:
    try:
        return await asyncio.wrap_future(future)
    except (NotFound, RequestRangeNotSatisfiable):  # answers, which the caller interprets
        raise
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"gcs: {exc or type(exc).__name__}") from exc


class _Upload:
    """One body on its way into an object; remembers what is in flight so that an
    abandoned upload is cleaned up only after the thread using the writer is done."""

    def __init__(self, store: GcsBodyStore, blob: storage.Blob) -> None:
        self.store = store
        self.blob = blob
        self.writer: BlobWriter | None = None
        # The call on a pool thread: cancelling its awaiter does not stop the thread.
        self.inflight: Future[Any] | None = None
        self.finishing = False

    async def _step(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        future = self.store._submit(fn, *args, **kwargs)
        self.inflight = future
        return await _result(future)

    async def send(self, chunks: AsyncIterator[bytes], limit: int, declared: int | None) -> int:
        store = self.store
        length = BodyLength(limit, declared)
        head: list[bytes] = []
        it = aiter(chunks)
        # A body of at most one chunk is one request, a longer one a resumable upload (a
        # request to open it, one per chunk). Reading up to one piece past a chunk tells
        # which, declared length or not; stopping at the chunk would make a body of exactly
        # one chunk three requests (the session, the chunk, an empty last one).
        async for chunk in it:
            length.add(chunk)
            head.append(chunk)
            if length.size > store.chunk_size:
                break
        else:
            length.end()
            self.finishing = True
            await self._step(
                self.blob.upload_from_string,
                b"".join(head),
                content_type="application/octet-stream",
                if_generation_match=0,
                timeout=store.timeout,
                retry=store.retry,
            )
            return length.size
        self.writer = BlobWriter(
            self.blob,
            chunk_size=store.chunk_size,
            retry=store.retry,
            content_type="application/octet-stream",
            if_generation_match=0,
            timeout=store.timeout,
        )
        # Hand the head over piece by piece, so it is not held twice.
        head.reverse()
        while head:
            await self._step(self.writer.write, head.pop())
        async for chunk in it:
            length.add(chunk)
            await self._step(self.writer.write, chunk)
        length.end()  # before the last request: only that one makes the object
        self.finishing = True
        await self._step(self.writer.close)
        return length.size

    async def abandon(self) -> None:
        """Undo whatever the upload got to: cancel its session, delete a finished object."""
        store = self.store
        if self.inflight is not None:
            done = asyncio.wrap_future(self.inflight)
            await asyncio.wait([done])
            if not done.cancelled():
                done.exception()  # the upload's own failure, raised already: not logged again
        with contextlib.suppress(StoreUnavailable, NotFound):
            if self.writer is not None and not self.writer.closed:
                await store._run(self.writer.terminate)
        if self.finishing:  # the last request may have created the object after all
            with contextlib.suppress(StoreUnavailable, NotFound):
                await store._run(self.blob.delete, timeout=store.timeout)
