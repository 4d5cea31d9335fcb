"""Thread pool or async client for GCS: the measurement behind ``hookline.gcs``'s choice.

    pip install gcloud-aio-storage   # the async client; not a hookline dependency
    python bench/gcs_clients.py [--count N] [--concurrency N]

Against one ``fake-gcs-server`` (memory backend) on loopback, in one process,
each client in turn: N uploads and N downloads of 256 KiB objects with
``--concurrency`` in flight, then one 100 MiB object read back. For each
phase: objects/s (or MiB/s), the process's CPU time, and the event loop's worst
lag (a 5 ms ticker's largest delay), which is what a thread pool could cost the
receiver and dispatcher. Prints one JSON line per figure.

* ``threads``: :class:`hookline.gcs.GcsBodyStore` (official client, bounded pool)
* ``aio``: ``gcloud-aio-storage`` on aiohttp. It uploads only a whole in-memory
  or file object (its resumable upload is one PUT of the whole stream), so it
  could not stream a large body from the sender without holding it whole;
  only its 256 KiB uploads are measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp

from hookline.config import KiB, MiB
from hookline.gcs import GcsBodyStore

ROOT = Path(__file__).resolve().parent.parent


def emit(name: str, value: float, unit: str) -> None:
    print(json.dumps({"name": name, "value": round(value, 1), "unit": unit}), flush=True)


def start_emulator(port: int, folder: Path) -> subprocess.Popen[bytes]:
    exe = Path(os.environ.get("HOOKLINE_BIN_DIR", ROOT / ".cache" / "bin")) / "fake-gcs-server"
    args = ["-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"]
    with open(folder / "gcs.log", "wb") as out:
        proc = subprocess.Popen([str(exe), *args, "-log-level", "error"], stdout=out, stderr=out)
    for _ in range(200):
        try:
            new_bucket(f"http://127.0.0.1:{port}", "ready")
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("fake-gcs-server did not start")


def new_bucket(url: str, name: str) -> str:
    """A bucket per client and round: the emulator slows down as a bucket fills, which
    would favour whichever client runs first."""
    body = json.dumps({"name": name}).encode()
    req = urllib.request.Request(url + "/storage/v1/b?project=bench", data=body)
    urllib.request.urlopen(req, timeout=1).close()
    return name


class Phase:
    """Objects/s, CPU seconds and the worst event-loop lag of one phase."""

    def __init__(self) -> None:
        self.lag = 0.0
        self._stop = asyncio.Event()

    async def _tick(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            await asyncio.sleep(0.005)
            self.lag = max(self.lag, time.monotonic() - start - 0.005)

    async def run(
        self, name: str, count: int, concurrency: int, one: Callable[[int], Awaitable[None]]
    ) -> None:
        ticker = asyncio.create_task(self._tick())
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        todo = iter(range(count))

        async def worker() -> None:
            for i in todo:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        self._stop.set()
        await ticker
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        emit(f"{name}_per_s", count / elapsed, "objects/s")
        emit(f"{name}_cpu_ms_per_object", 1000 * cpu / count, "ms")
        emit(f"{name}_loop_lag_max_ms", 1000 * self.lag, "ms")


async def threads(url: str, count: int, concurrency: int, big: bytes, tag: str) -> None:
    bucket = new_bucket(url, f"threads-{tag}")
    store = GcsBodyStore(bucket, chunk_size=4 * MiB, endpoint=url)
    body = os.urandom(256 * KiB)
    refs: list[str] = []

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for at in range(0, len(data), 256 * KiB):
            yield data[at : at + 256 * KiB]

    async def put(i: int) -> None:
        ref, _ = await store.put(f"{tag}t{i}", chunks(body), 1 << 30)
        refs.append(ref)

    async def get(i: int) -> None:
        async for _ in store.open(refs[i]):
            pass

    try:
        await Phase().run("threads_put_256k", count, concurrency, put)
        await Phase().run("threads_get_256k", count, concurrency, get)
        ref, _ = await store.put(f"{tag}big", chunks(big), 1 << 30)
        start = time.monotonic()
        async for _ in store.open(ref):
            pass
        emit("threads_get_100mib", len(big) / MiB / (time.monotonic() - start), "MiB/s")
    finally:
        await store.close()


async def aio(url: str, count: int, concurrency: int, big: bytes, tag: str) -> None:
    from gcloud.aio.storage import Storage  # type: ignore[import-not-found,unused-ignore]

    body = os.urandom(256 * KiB)
    bucket = new_bucket(url, f"aio-{tag}")
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        storage = Storage(session=cast(Any, session), api_root=url)  # its own Session alias

        async def put(i: int) -> None:
            await storage.upload(bucket, f"{tag}a{i}", body, content_type="application/x-bench")

        async def get(i: int) -> None:
            await storage.download(bucket, f"{tag}a{i}")

        await Phase().run("aio_put_256k", count, concurrency, put)
        await Phase().run("aio_get_256k", count, concurrency, get)
        await storage.upload(bucket, f"{tag}abig", big, timeout=300)
        start = time.monotonic()
        stream: Any = await storage.download_stream(bucket, f"{tag}abig")
        async with stream as response:
            while await response.content.read(4 * MiB):
                pass
        emit("aio_get_100mib", len(big) / MiB / (time.monotonic() - start), "MiB/s")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hookline-gcs-clients-") as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        proc = start_emulator(port, Path(tmp))
        url = f"http://127.0.0.1:{port}"
        big = os.urandom(100 * MiB)
        try:
            for n in range(args.rounds):  # alternating which client goes first
                for client in (threads, aio) if n % 2 == 0 else (aio, threads):
                    await client(url, args.count, args.concurrency, big, f"r{n}")
        finally:
            proc.kill()
            proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        runner.run(main_async(p.parse_args()))
    sys.exit(0)


if __name__ == "__main__":
    main()
