"""Bodies through GCS: memory while relaying a 100 MiB body, and ingest rate of 256 KiB bodies.

    python bench/gcs.py [--rounds N] [--count N] [--chunk-size BYTES]

Everything runs on this machine, on loopback: a private ``redis-server``, a
``fake-gcs-server`` (memory backend, from ``make tools``), ``hookline receiver``
and ``hookline dispatcher`` as their own processes configured by environment,
and an HTTP sink in this process. Prints one JSON line per figure to stdout
(progress goes to stderr):

* ``gcs_rss_receiver_mib`` / ``gcs_rss_dispatcher_mib``: peak RSS growth of each
  process while one 100 MiB body is relayed (sender → receiver → GCS → dispatcher
  → sink, byte-identical by SHA-256). Growth is the kernel's high-water mark
  (``VmHWM``, reset through ``/proc/PID/clear_refs``) minus the resident size
  just before, in processes warmed by one 1 MiB relay. Target: < 32 MiB each.
* ``gcs_raw``: uploads/s of the same 256 KiB bodies to the same emulator by the
  same client library (``google-cloud-storage``, as ``hookline.gcs`` calls it) with
  the same concurrency (``HOOKLINE_GCS_THREADS``, 16, uploads in flight) and no
  hookline: ``bench/gcs_raw.py`` as its own process on the receiver's core. Also
  its CPU per upload and the HTTP requests per upload.
* ``gcs_ingest``: webhooks/s one receiver accepts with 256 KiB bodies going to
  GCS (32 senders' connections), as a ratio to ``gcs_raw`` (target >= 0.8), with
  the receiver's CPU per webhook. ``inline`` is the same receiver keeping the
  bodies in the queue entry instead (the baseline before ``gcs_raw``).
  The three run one after the other in each of ``--rounds`` rounds after a
  warm-up, their order turning from round to round; best of each. Before each
  run the stream and the bucket are emptied, as the dispatchers would in steady
  state (the emulator slows down as its bucket fills).

As in ``bench/run.py``, the processes under test run on CPU 0 and the load,
sink, Redis and the emulator on CPU 1 when there are two CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from common import (  # bench/ is the script's folder
    LOAD_CPU,
    PINNED,
    SUT_CPU,
    Backends,
    free_port,
    pinned,
    wait_until,
)
from hookline.config import Config, KiB, MiB
from hookline.models import SigningSecret, endpoint_from_spec
from hookline.signing import new_key, new_secret
from hookline.store import Store, redis_client

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "benchgcs"
BUCKET = "hookline-bench"
ENDPOINT = "bench/gcs-sink"
RELAY_BYTES = 100 * MiB
INGEST_BYTES = 256 * KiB
RSS_TARGET_MIB = 32


def log(msg: str) -> None:
    print(f"bench/gcs: {msg}", file=sys.stderr, flush=True)


def emit(name: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"name": name, "value": round(value, 1), "unit": unit, **extra}), flush=True)


# -- peers


class Peers(Backends):
    """redis-server, fake-gcs-server and the hookline processes; all stopped on exit."""

    script = "bench/gcs"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.gcs_port = free_port()

    @property
    def gcs_url(self) -> str:
        return f"http://127.0.0.1:{self.gcs_port}"

    def start_backends(self) -> None:
        bin_dir = Path(os.environ.get("HOOKLINE_BIN_DIR", ROOT / ".cache" / "bin"))
        gcs = bin_dir / "fake-gcs-server"
        if not os.access(gcs, os.X_OK):
            raise SystemExit(f"bench/gcs: {gcs} is missing: run `make tools`")
        self.start_redis()
        gcs_args = ["-scheme", "http", "-host", "127.0.0.1", "-port", str(self.gcs_port)]
        gcs_args += ["-backend", "memory", "-log-level", "error"]
        self.emulator = self.spawn(pinned(LOAD_CPU, [str(gcs), *gcs_args]), "fake-gcs-server")
        wait_until(lambda: self._gcs("GET", "/storage/v1/b") is not None, 10, "fake-gcs-server")
        self._gcs("POST", "/storage/v1/b?project=bench", {"name": BUCKET})

    def _gcs(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.gcs_url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"{}")

    def hookline(self, role: str, name: str, **settings: Any) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "HOOKLINE_REDIS_URL": self.redis_url,
            "HOOKLINE_PREFIX": PREFIX,
            "HOOKLINE_RECEIVER_HOST": "127.0.0.1",
            "HOOKLINE_DISPATCHER_PORT": "0",
            "HOOKLINE_MAX_BODY_BYTES": str(RELAY_BYTES),
            "HOOKLINE_GCS_BUCKET": BUCKET,
            "HOOKLINE_ALLOW_CIDRS": "127.0.0.0/8",
            "STORAGE_EMULATOR_HOST": self.gcs_url,
        }
        env.update({f"HOOKLINE_{k.upper()}": str(v) for k, v in settings.items()})
        return self.start_hookline(role, name, env)


def receiver_ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
        return bool(resp.status == 200)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"bench/gcs: no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS; returns that RSS in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_kib(pid, "VmRSS")


# -- the sink


class Sink:
    """Reads every delivery as a stream and keeps its size and SHA-256 by webhook id."""

    def __init__(self) -> None:
        self.got: dict[str, tuple[int, str]] = {}
        self.arrived = asyncio.Condition()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(1 * MiB):
            digest.update(chunk)
            size += len(chunk)
        async with self.arrived:
            self.got[request.headers.get("webhook-id", "")] = (size, digest.hexdigest())
            self.arrived.notify_all()
        return web.Response(status=204)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/sink", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}/sink"

    async def wait_for(self, wid: str, seconds: float) -> tuple[int, str]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: wid in self.got), seconds)
        return self.got[wid]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


# -- the figures


async def register(peers: Peers, url: str) -> str:
    store = Store.connect(Config(redis_url=peers.redis_url, prefix=PREFIX))
    try:
        key = new_key()
        endpoint = endpoint_from_spec(
            ENDPOINT,
            {"url": url, "timeoutSeconds": 300},
            [key],
            [SigningSecret(new_secret())],
            Config(),
        )
        await store.registry.put(endpoint)
        return key
    finally:
        await store.aclose()


async def post_stream(
    session: aiohttp.ClientSession, port: int, key: str, size: int
) -> tuple[str, str]:
    """POST ``size`` bytes generated as they are sent; returns (webhook id, SHA-256)."""
    digest = hashlib.sha256()
    block = os.urandom(1 * MiB)

    async def body() -> AsyncIterator[bytes]:
        left, n = size, 0
        while left > 0:
            piece = (n.to_bytes(8, "big") + block)[: min(left, len(block))]
            digest.update(piece)
            left -= len(piece)
            n += 1
            yield piece

    headers = {
        "X-WH-Endpoint-Key": key,
        "Content-Type": "application/octet-stream",
        "Content-Length": str(size),
    }
    url = f"http://127.0.0.1:{port}/webhooks/send"
    async with session.post(url, data=body(), headers=headers) as resp:
        answer = await resp.text()
        if resp.status != 202:
            raise SystemExit(f"bench/gcs: the receiver answered {resp.status}: {answer}")
    return json.loads(answer)["id"], digest.hexdigest()


async def relay(session: aiohttp.ClientSession, sink: Sink, port: int, key: str, size: int) -> None:
    wid, sha = await post_stream(session, port, key, size)
    got = await sink.wait_for(wid, 300)
    if got != (size, sha):
        raise SystemExit(f"bench/gcs: the sink got {got}, expected {(size, sha)}")


async def rss_figures(
    peers: Peers, session: aiohttp.ClientSession, sink: Sink, key: str, chunk: int
) -> tuple[subprocess.Popen[bytes], int]:
    """Relay one 100 MiB body; emit both RSS figures; returns the receiver and its port."""
    port = free_port()
    receiver = peers.hookline(
        "receiver", "receiver-gcs", body_store="gcs", receiver_port=port, gcs_chunk_size=chunk
    )
    dispatcher = peers.hookline("dispatcher", "dispatcher", body_store="gcs", gcs_chunk_size=chunk)
    await asyncio.to_thread(wait_until, lambda: receiver_ready(port), 30, "the receiver")
    await relay(session, sink, port, key, 1 * MiB)  # warm-up: client, connections, buffers
    base = {p.pid: reset_peak(p.pid) for p in (receiver, dispatcher)}
    start = time.monotonic()
    await relay(session, sink, port, key, RELAY_BYTES)
    seconds = time.monotonic() - start
    for name, proc in (("receiver", receiver), ("dispatcher", dispatcher)):
        growth = (status_kib(proc.pid, "VmHWM") - base[proc.pid]) / 1024
        log(f"{name}: RSS {base[proc.pid] / 1024:.1f} MiB before, peak +{growth:.1f} MiB")
        emit(f"gcs_rss_{name}_mib", growth, "MiB", target=RSS_TARGET_MIB)
    emit("gcs_relay_100mib_seconds", seconds, "s")
    peers.stop(dispatcher)
    return receiver, port


async def ingest_round(port: int, key: str, count: int) -> float:
    """Webhooks/s accepted for ``count`` 256 KiB POSTs over 32 keep-alive connections.

    Each connection writes one prepared request and reads the answer's head and body:
    the sender shares its core with the emulator, which limits both the receiver and
    gcs_raw here, so it takes as little of that core as it can (0.2 ms per webhook, where
    an aiohttp client took 0.45-0.55 ms)."""
    body = os.urandom(INGEST_BYTES)
    request = (
        f"POST /webhooks/send HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"X-WH-Endpoint-Key: {key}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    left, refused = count, 0

    async def worker() -> None:
        nonlocal left, refused
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left > 0:
                left -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                refused += head[9:12] != b"202"
        finally:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(32)))
    elapsed = time.monotonic() - start
    if refused:
        raise SystemExit(f"bench/gcs: {refused} of {count} webhooks were refused")
    return count / elapsed


async def empty_bucket(session: aiohttp.ClientSession, peers: Peers) -> None:
    base = f"{peers.gcs_url}/storage/v1/b/{BUCKET}/o"
    while True:
        async with session.get(base, params={"maxResults": "1000"}) as resp:
            names = [o["name"] for o in (await resp.json()).get("items", [])]
        if not names:
            return
        await asyncio.gather(*(_delete_all(session, base, names[i::16]) for i in range(16)))


async def _delete_all(session: aiohttp.ClientSession, base: str, names: list[str]) -> None:
    for name in names:
        async with session.delete(f"{base}/{urllib.parse.quote(name, safe='')}") as resp:
            await resp.read()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def raw_round(peers: Peers, count: int) -> dict[str, Any]:
    """``bench/gcs_raw.py`` on the receiver's core: the client library alone."""
    argv = [sys.executable, str(ROOT / "bench" / "gcs_raw.py"), "--url", peers.gcs_url]
    argv += ["--bucket", BUCKET, "--count", str(count), "--size", str(INGEST_BYTES)]
    argv += ["--threads", str(Config().gcs_threads)]
    proc = await asyncio.create_subprocess_exec(
        *pinned(SUT_CPU, argv), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise SystemExit(f"bench/gcs: bench/gcs_raw.py exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


async def ingest_figures(
    args: argparse.Namespace,
    peers: Peers,
    session: aiohttp.ClientSession,
    key: str,
    gcs: tuple[subprocess.Popen[bytes], int],
) -> None:
    """gcs_raw and gcs_ingest (with the inline receiver beside them), measured in turn."""
    inline_port = free_port()
    inline = peers.hookline(
        "receiver",
        "receiver-inline",
        receiver_port=inline_port,
        inline_limit=INGEST_BYTES,
        body_store="fs",
        body_dir=str(peers.folder / "bodies"),
    )
    await asyncio.to_thread(wait_until, lambda: receiver_ready(inline_port), 30, "receiver")
    receivers = {"gcs": gcs, "inline": (inline, inline_port)}
    redis = redis_client(Config(redis_url=peers.redis_url))
    runs: dict[str, list[float]] = {"raw": [], "gcs": [], "inline": []}
    cpu_ms: dict[str, list[float]] = {"raw": [], "gcs": [], "inline": []}
    raw_requests: dict[str, float] = {}
    order = ["raw", "gcs", "inline"]
    try:
        for n in range(args.rounds + 1):  # round 0 warms everything up and is not counted
            count = args.count if n else 200
            for path in order[n % 3 :] + order[: n % 3]:
                # As in steady state, where dispatchers drain the stream and delete the
                # objects; the emulator also slows down as its bucket fills.
                await redis.delete(f"{PREFIX}:stream:default")
                await empty_bucket(session, peers)
                emulator, load = cpu_seconds(peers.emulator.pid), cpu_seconds(os.getpid())
                if path == "raw":
                    raw = await raw_round(peers, count)
                    rate, cpu = raw["per_s"], raw["cpu_ms_per_upload"]
                    raw_requests = raw["requests_per_upload"]
                else:
                    receiver, port = receivers[path]
                    before = cpu_seconds(receiver.pid)
                    rate = await ingest_round(port, key, count)
                    cpu = 1000 * (cpu_seconds(receiver.pid) - before) / count
                emulator = 1000 * (cpu_seconds(peers.emulator.pid) - emulator) / count
                load = 1000 * (cpu_seconds(os.getpid()) - load) / count
                log(
                    f"round {n}: {path} {rate:.0f}/s, {cpu:.2f} ms CPU each"
                    f" (emulator {emulator:.2f} ms, this process {load:.2f} ms)"
                )
                if n:
                    runs[path].append(round(rate, 1))
                    cpu_ms[path].append(round(cpu, 2))
    finally:
        await redis.aclose()
    raw_best, gcs_best, inline_best = (max(runs[p]) for p in ("raw", "gcs", "inline"))
    emit(
        "gcs_raw",
        raw_best,
        "uploads/s",
        runs=runs["raw"],
        cpu_ms_per_upload=min(cpu_ms["raw"]),
        requests_per_upload=raw_requests,
        size=INGEST_BYTES,
        threads=Config().gcs_threads,
    )
    emit(
        "gcs_ingest",
        gcs_best,
        "webhooks/s",
        baseline=raw_best,
        ratio=round(gcs_best / raw_best, 3),
        target=">= 0.8",
        runs=runs["gcs"],
        baseline_runs=runs["raw"],
        round_ratios=[round(g / r, 2) for g, r in zip(runs["gcs"], runs["raw"], strict=True)],
        cpu_ms_per_webhook=min(cpu_ms["gcs"]),
        inline=inline_best,
        inline_runs=runs["inline"],
    )


async def main_async(args: argparse.Namespace, folder: Path) -> None:
    peers = Peers(folder)
    sink = Sink()
    connector = aiohttp.TCPConnector(limit=64)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(600))
    try:
        await asyncio.to_thread(peers.start_backends)
        key = await register(peers, await sink.start())
        log(f"relaying one {RELAY_BYTES // MiB} MiB body (chunks of {args.chunk_size // KiB} KiB)")
        gcs = await rss_figures(peers, session, sink, key, args.chunk_size)
        if args.rounds >= 1:
            await ingest_figures(args, peers, session, key, gcs)
    finally:
        await session.close()
        await sink.stop()
        peers.stop_all()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="ingest rounds (0: memory only)")
    p.add_argument("--count", type=int, default=1000, help="webhooks per ingest round")
    p.add_argument("--chunk-size", type=int, default=Config().gcs_chunk_size)
    args = p.parse_args()
    if PINNED:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    with tempfile.TemporaryDirectory(prefix="hookline-bench-gcs-") as tmp:
        asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    main()
