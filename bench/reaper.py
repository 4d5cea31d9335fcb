"""What one body reaper pass costs, for the filesystem store and GCS.

    python bench/reaper.py [--entries N] [--bodies N] [--orphans N]

A private redis-server (no persistence) and fake-gcs-server (memory backend, from
``make tools``). Redis holds ``--entries`` queued webhooks with inline bodies of 1 KiB
(in one pool's stream, what a backlog looks like), plus one entry per stored body:
``--bodies`` bodies in the store, of which ``--orphans`` are referenced by nothing. Then
one pass of :class:`hookline.dispatcher.reaper.Reaper` per store, timed as a whole and
by step: listing the store, reading the references (the time retries wait for the
pass), deleting the orphans. Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from common import LOAD_CPU, Backends, free_port, pinned, wait_until  # bench/ is its folder
from hookline.bodies import BodyStore, FilesystemBodyStore
from hookline.config import Config, KiB
from hookline.dispatcher.reaper import Reaper
from hookline.gcs import GcsBodyStore
from hookline.metrics import Metrics
from hookline.models import Webhook, new_id
from hookline.store import Store, redis_client

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "reaper"


def emit(name: str, value: float, unit: str, **extra: object) -> None:
    line = {"name": name, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def start_gcs(peers: Backends, port: int) -> str:
    bin_dir = Path(os.environ.get("HOOKLINE_BIN_DIR", ROOT / ".cache" / "bin"))
    exe = bin_dir / "fake-gcs-server"
    if not os.access(exe, os.X_OK):
        raise SystemExit(f"bench/reaper: {exe} is missing: run `make tools`")
    args = ["-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"]
    peers.spawn(pinned(LOAD_CPU, [str(exe), *args, "-log-level", "error"]), "fake-gcs-server")
    url = f"http://127.0.0.1:{port}"

    def bucket() -> bool:
        body = json.dumps({"name": BUCKET}).encode()
        req = urllib.request.Request(url + "/storage/v1/b?project=bench", data=body)
        urllib.request.urlopen(req, timeout=1).close()
        return True

    wait_until(bucket, 10, "fake-gcs-server")
    return url


async def one_kib() -> AsyncIterator[bytes]:
    yield os.urandom(KiB)


async def fill(store: Store, pool: str, entries: int, refs: list[str]) -> None:
    """``entries`` inline webhooks and one webhook per reference, enqueued in batches."""

    def webhook(ref: str | None) -> Webhook:
        body = b"" if ref else os.urandom(KiB)
        return Webhook(new_id(), "bench/x", {"content-type": "application/json"}, body, ref, KiB)

    todo = [webhook(None) for _ in range(entries)] + [webhook(r) for r in refs]
    for at in range(0, len(todo), 1000):
        await asyncio.gather(*(store.queue.enqueue(pool, w) for w in todo[at : at + 1000]))


async def measure(kind: str, bodies: BodyStore, config: Config, args: argparse.Namespace) -> None:
    store = Store.connect(config)
    try:
        refs = [
            ref
            for ref, _ in await asyncio.gather(
                *(bodies.put(new_id(), one_kib(), 2 * KiB) for _ in range(args.bodies))
            )
        ]
        referenced = refs[args.orphans :]
        pool = f"{kind}-pool"
        await fill(store, pool, args.entries, referenced)
        entries = args.entries + len(referenced)

        start = time.monotonic()
        listed = [r async for r in bodies.older(time.time())]
        emit(f"{kind}_list_s", time.monotonic() - start, "s", bodies=len(listed))
        start = time.monotonic()
        found = await store.references.body_refs()
        assert found is not None and len(found) == len(referenced)
        emit(f"{kind}_references_s", time.monotonic() - start, "s", entries=entries)

        reaper = Reaper(replace(config, body_grace=0.0), store, bodies, Metrics())
        start = time.monotonic()
        removed = await reaper.reap()
        emit(f"{kind}_pass_s", time.monotonic() - start, "s", removed=removed, entries=entries)
        assert removed == args.orphans
        await store.redis.delete(store.keys.stream(pool))
    finally:
        await store.aclose()


async def main(args: argparse.Namespace, folder: Path, redis_url: str, gcs_url: str) -> None:
    config = Config(redis_url=redis_url, prefix="benchreaper")
    probe = redis_client(config)
    await probe.flushall()
    await probe.aclose()
    fs = FilesystemBodyStore(folder / "bodies")
    await measure("fs", fs, config, args)
    gcs = GcsBodyStore(BUCKET, endpoint=gcs_url)
    try:
        await measure("gcs", gcs, config, args)
    finally:
        await gcs.close()
    emit("load", os.getloadavg()[0], "loadavg_1m", cpus=os.cpu_count())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--bodies", type=int, default=1_000)
    parser.add_argument("--orphans", type=int, default=100)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reaper-") as tmp:
        peers = Backends(Path(tmp))
        peers.script = "bench/reaper"
        try:
            peers.start_redis()
            gcs_url = start_gcs(peers, free_port())
            asyncio.run(main(ns, Path(tmp), peers.redis_url, gcs_url))
        finally:
            peers.stop_all()
