"""The scale model's inputs: CPU per webhook of a receiver, a dispatcher and Redis, measured.

    python bench/scale.py [--quick] [--dispatchers 1 2 3 4] [--svg docs/scale.svg]
    python bench/scale.py --replot LINES --svg docs/scale.svg   # redraw from saved lines

Everything runs on this machine, on loopback: a private ``redis-server`` (no
persistence), ``bench/sink.py`` answering ``204``, and ``hookline receiver`` /
``hookline dispatcher`` as their own processes configured by environment, with
1 KiB JSON bodies. Prints one JSON line per figure to stdout (progress goes to
stderr):

* ``scale_receiver``: one receiver (CPU 0) under ``wrk`` (``bench/loadgen.lua``,
  64 connections) with no dispatcher running: webhooks/s, the receiver's and
  Redis's CPU per accepted webhook, Redis commands per webhook (``INFO
  commandstats``) and Redis memory per queued webhook (``used_memory`` growth
  over the entries added).
* ``scale_dispatchers``, one line per k in ``--dispatchers``: a stream preloaded
  with ``--count`` webhooks (``Queue.enqueue``) drained by k dispatcher processes
  at once, nothing pinned but Redis and the sink (CPU 1): delivered/s, each
  process's share of a core, CPU µs per delivery of the dispatchers, Redis and
  the sink, and Redis commands per delivery. Measured over a window that opens
  when all k dispatchers have read from the stream and closes at 90 % delivered,
  so start-up and the tail are left out. ``model`` is what the model below
  predicts for k on this machine when nothing else runs on it, ``model_ratio``
  measured / model. ``ratio`` checks the model's one assumption in a way other
  sessions' load does not upset: the CPU a delivery costs the dispatchers and
  Redis with k processes against the cheapest k (target >= 0.8; the model is
  linear in k only if that cost does not grow with k).
* ``scale_large_body``: CPU per 256 KiB webhook (``--large`` of them) of one receiver
  storing the body in GCS (``fake-gcs-server``, bench/gcs.py's emulator, sender and
  sink) and of one dispatcher fetching and delivering it, and of the same two with
  the body inline in the queue entry; the emulator's own CPU is not counted (on real
  GCS it is not ours).
* ``scale_model``: capacity per core from CPU per item (the steadiest figure on a
  shared machine: rates move with the other sessions' load, CPU per item much
  less), for a receiver, a dispatcher and Redis (ingest and delivery of a webhook
  together, since one Redis does both); where one Redis is the limit.
* ``scale_plan``, one line per sustained rate (1k, 10k, 100k webhooks/s) and body
  mix (1 KiB bodies; 10 % of them over the inline limit, in GCS): receiver and
  dispatcher pods, Redis cores, Redis memory per minute of backlog.

Per k, ``--rounds`` rounds (the ks in turn each round); a CPU figure is the lowest
of the rounds (contention only adds to it), a rate the highest. With ``--svg`` the
figure of delivered/s and Redis CPU against k, measured and modelled, is written
(hand-built SVG, no plotting library). ``--quick`` is a smoke run of about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import redis

from common import (
    BODY_BYTES,
    LOAD_CPU,
    PINNED,
    Backends,
    free_port,
    pinned,
    preload,
    wait_until,
)
from hookline.config import Config
from hookline.models import SigningSecret, endpoint_from_spec
from hookline.signing import new_key, new_secret
from hookline.store import Store
from scale_plot import svg

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "benchscale"
ENDPOINT = "bench/scale-sink"
POOL = "default"
CONNECTIONS = 64
CORES = os.cpu_count() or 1
RATES = (1_000, 10_000, 100_000)  # webhooks/s sustained, the plan's rows
LARGE_SHARE = 0.10  # of bodies over the inline limit, in the plan's second mix
# Pods are sized to this share of their core, Redis planned to it: headroom for bursts and
# for the catch-up after one (a backlog drains only at capacity minus the arrival rate).
UTILISATION = 0.7
BACKLOG_SECONDS = 60  # Redis memory is quoted per minute of backlog at the plan's rate
# A body over the inline limit: 256 KiB, the size of bench/gcs.py's figures. Its CPU per
# webhook is measured by large_bodies() against fake-gcs-server; without the emulator (or
# with --large 0) these stand in: the receiver's from docs/benchmarks.md (gcs_ingest,
# 2026-12-02, 2.44-2.68 ms), the dispatcher's taken as the same.
GCS_BODY_BYTES = 256 * 1024
RECEIVER_GCS_US = 2_600.0
DISPATCHER_GCS_US = 2_600.0
# scale_dispatchers: the model is linear in k, so a delivery must cost the dispatchers and
# Redis about the same CPU with k processes as with the cheapest k (lowest / this k's).
TARGET = 0.8


def log(msg: str) -> None:
    print(f"bench/scale: {msg}", file=sys.stderr, flush=True)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
        return bool(resp.status == 200)


class Rig(Backends):
    """redis-server, the sink and the hookline processes of one run; all stopped on exit."""

    script = "bench/scale"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.sink_port = free_port()
        self.key = new_key()
        self.r = redis.Redis.from_url(self.redis_url)
        self.sink: subprocess.Popen[bytes] | None = None
        self.redis_pid = 0
        self.own: Counter[str] = Counter()  # our own commands, taken off Redis's counts

    def start_backends(self) -> None:
        self.start_redis()
        self.redis_pid = int(self.r.info("server")["process_id"])  # type: ignore[index]
        argv = [sys.executable, str(ROOT / "bench/sink.py"), "--port", str(self.sink_port)]
        self.sink = self.spawn(pinned(LOAD_CPU, argv), "sink")
        wait_until(self._sink_listens, 15, "the sink")
        asyncio.run(self.register())

    def _sink_listens(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.sink_port), timeout=0.5):
            return True

    async def register(self) -> None:
        spec = {
            "url": f"http://127.0.0.1:{self.sink_port}/hook",
            "forwardHeaders": ["x-event-type"],
        }
        store = Store.connect(Config(redis_url=self.redis_url, prefix=PREFIX))
        try:
            secrets = [SigningSecret(new_secret())]
            endpoint = endpoint_from_spec(ENDPOINT, spec, [self.key], secrets, Config())
            await store.registry.put(endpoint)
        finally:
            await store.aclose()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HOOKLINE_"))}
        env.update(
            HOOKLINE_REDIS_URL=self.redis_url,
            HOOKLINE_PREFIX=PREFIX,
            HOOKLINE_RECEIVER_HOST="127.0.0.1",
            HOOKLINE_DISPATCHER_HOST="127.0.0.1",
            HOOKLINE_DISPATCHER_PORT="0",
            HOOKLINE_BODY_DIR=str(self.folder / "bodies"),
            HOOKLINE_ALLOW_CIDRS="127.0.0.0/8",
            HOOKLINE_TRACING="off",
            **extra,
        )
        return env

    # -- what Redis says

    def clear(self) -> None:
        """The queue and the endpoint's figures: DEL, so the memory is freed before the next
        run reads ``used_memory``; the consumer group goes with the stream."""
        kinds = ("stream", "retry", "retrydata", "sending")
        keys = [f"{PREFIX}:{kind}:{POOL}" for kind in kinds]
        self.r.delete(*keys, f"{PREFIX}:stats:{ENDPOINT}", f"{PREFIX}:attempts:{ENDPOINT}")

    def delivered(self) -> int:
        self.own["hget"] += 1
        return int(self.r.hget(f"{PREFIX}:stats:{ENDPOINT}", "delivered") or 0)  # type: ignore[arg-type]

    def backlog(self) -> int:
        self.own.update(("xlen", "zcard"))
        stream = self.r.xlen(f"{PREFIX}:stream:{POOL}")
        retries = self.r.zcard(f"{PREFIX}:retry:{POOL}")
        return int(stream) + int(retries)  # type: ignore[arg-type]  # sync client

    def commands(self) -> dict[str, int]:
        """Calls per command since Redis started (commands run by scripts included)."""
        stats: dict[str, Any] = self.r.info("commandstats")  # type: ignore[assignment]
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def used_memory(self) -> int:
        return int(self.r.info("memory")["used_memory"])  # type: ignore[index]

    def command_delta(self, before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        """Commands between two snapshots, without the benchmark's own (INFO, and what
        :attr:`own` counted since ``before`` was taken)."""
        delta = {k: n - before.get(k, 0) - self.own[k] for k, n in after.items() if k != "info"}
        return {k: n for k, n in delta.items() if n > 0}

    # -- the receiver

    def wrk(self, port: int, seconds: float) -> dict[str, Any]:
        argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "-s", "bench/loadgen.lua"]
        env = dict(os.environ, BENCH_KEY=self.key, BENCH_BODY_BYTES=str(BODY_BYTES))
        url = f"http://127.0.0.1:{port}/webhooks/send"
        done = subprocess.run(
            pinned(LOAD_CPU, [*argv, url]),
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            timeout=seconds + 30,
            check=True,
        )
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if line is None:
            raise SystemExit(f"bench/scale: wrk printed no summary: {done.stdout!r}")
        stats: dict[str, Any] = json.loads(line.removeprefix("BENCH "))
        return stats

    def receiver_run(self, seconds: float) -> dict[str, Any]:
        """One receiver on CPU 0 under wrk; nothing drains, so what it accepted stays queued
        and Redis's memory growth is what the queued webhooks hold."""
        self.clear()
        port = free_port()
        proc = self.start_hookline(
            "receiver", "receiver", self.env(HOOKLINE_RECEIVER_PORT=str(port))
        )
        try:
            wait_until(lambda: ready(port), 20, "the receiver")
            self.wrk(port, 1)  # warm-up: connections, caches, the script cache
            time.sleep(0.3)
            stream = f"{PREFIX}:stream:{POOL}"
            queued, memory, cmds = int(self.r.xlen(stream)), self.used_memory(), self.commands()  # type: ignore[arg-type]
            self.own.clear()
            t0, cpu, rcpu = time.monotonic(), cpu_seconds(proc.pid), cpu_seconds(self.redis_pid)
            stats = self.wrk(port, seconds)
            wall = time.monotonic() - t0
            cpu, rcpu = cpu_seconds(proc.pid) - cpu, cpu_seconds(self.redis_pid) - rcpu
            time.sleep(0.3)  # what was in flight when wrk stopped has been answered
            self.own["xlen"] += 1
            added = int(self.r.xlen(stream)) - queued  # type: ignore[arg-type]
            grown = self.used_memory() - memory
            cmds = self.command_delta(cmds, self.commands())
        finally:
            self.stop(proc)
            self.clear()
        errors = stats["errors"] + stats["non2xx"]
        if not added or errors:
            raise SystemExit(f"bench/scale: receiver run: {added} queued, {stats}")
        run = {
            "rate": added / wall,
            "cpu": cpu / wall,
            "redis_cpu": rcpu / wall,
            "us": cpu / added * 1e6,
            "redis_us": rcpu / added * 1e6,
            "commands": sum(cmds.values()) / added,
            "by_command": {k: round(n / added, 2) for k, n in sorted(cmds.items())},
            "bytes": grown / added,
            "accepted": added,
        }
        log(f"receiver: {run['rate']:.0f}/s, {run['us']:.0f} µs, Redis {run['redis_us']:.1f} µs")
        return run

    # -- the dispatchers

    def consumers(self) -> int:
        self.own["xinfo|consumers"] += 1
        try:
            got = self.r.xinfo_consumers(f"{PREFIX}:stream:{POOL}", "dispatchers")
        except redis.ResponseError:  # no group yet
            return 0
        return len(got)  # type: ignore[arg-type]  # sync client

    def snapshot(self, pids: list[int]) -> dict[str, Any]:
        assert self.sink is not None
        return {
            "t": time.monotonic(),
            "delivered": self.delivered(),
            "cpu": [cpu_seconds(pid) for pid in pids],
            "redis": cpu_seconds(self.redis_pid),
            "sink": cpu_seconds(self.sink.pid),
            "commands": self.commands(),
        }

    def dispatch_run(self, k: int, count: int) -> dict[str, Any]:
        """``count`` webhooks preloaded, then drained by ``k`` dispatchers started together
        (the scheduler places them); measured from the moment all k have read to 90 %."""
        self.clear()
        asyncio.run(preload(self.redis_url, PREFIX, count, (ENDPOINT,), POOL))
        argv = [sys.executable, "-m", "hookline.cli", "--log-level", "WARNING", "dispatcher"]
        procs = [self.spawn(argv, f"dispatcher-{k}-{i}", self.env()) for i in range(k)]
        try:
            wait_until(lambda: self.consumers() >= k, 30, f"{k} dispatchers reading")
            first = self.snapshot([p.pid for p in procs])
            self.own.clear()
            late = first["delivered"] / count  # how much the first ones drained meanwhile
            deadline = time.monotonic() + 120
            while self.delivered() < 0.9 * count:
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench/scale: {k} dispatchers did not drain {count}")
                time.sleep(0.05)
            last = self.snapshot([p.pid for p in procs])
            wait_until(lambda: self.backlog() == 0, 60, "the last deliveries")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                self.stop(proc)
                self.procs.remove(proc)
        wall = last["t"] - first["t"]
        n = last["delivered"] - first["delivered"]
        cpus = [(b - a) / wall for a, b in zip(first["cpu"], last["cpu"], strict=True)]
        cmds = self.command_delta(first["commands"], last["commands"])
        run = {
            "k": k,
            "rate": n / wall,
            "cpus": cpus,
            "dispatcher_cpu": sum(cpus),
            "redis_cpu": (last["redis"] - first["redis"]) / wall,
            "sink_cpu": (last["sink"] - first["sink"]) / wall,
            "us": sum(cpus) * wall / n * 1e6,
            "redis_us": (last["redis"] - first["redis"]) / n * 1e6,
            "sink_us": (last["sink"] - first["sink"]) / n * 1e6,
            "commands": sum(cmds.values()) / n,
            "by_command": {c: round(m / n, 3) for c, m in sorted(cmds.items())},
            "window": n,
            "before_window": round(late, 3),
        }
        log(
            f"{k} dispatcher(s): {run['rate']:.0f}/s, CPU {[round(c, 2) for c in cpus]}, "
            f"{run['us']:.0f} µs, Redis {run['redis_cpu']:.2f} = {run['redis_us']:.1f} µs, "
            f"{run['commands']:.2f} commands per delivery; {late:.0%} before the window"
        )
        return run


# -- bodies over the inline limit


def fallback(why: str) -> dict[str, Any]:
    return {
        "bytes": GCS_BODY_BYTES,
        "receiver_us": RECEIVER_GCS_US,
        "dispatcher_us": DISPATCHER_GCS_US,
        "from": f"not measured ({why}): receiver from docs/benchmarks.md gcs_ingest "
        "(2026-12-02), dispatcher taken as the same",
    }


async def large_bodies(count: int, folder: Path) -> dict[str, Any]:
    """CPU per 256 KiB webhook of a receiver storing it in GCS (fake-gcs-server) and of a
    dispatcher fetching and delivering it; and the same two with the body inline in the
    queue entry, which tells GCS's share from reading and posting 256 KiB. The receiver and
    the dispatcher on CPU 0, one after the other (the receiver queues, then the dispatcher
    drains); bench/gcs.py's emulator, sink and sender on CPU 1."""
    import gcs  # bench/gcs.py; imported here so that the rest runs without its emulator

    bin_dir = Path(os.environ.get("HOOKLINE_BIN_DIR", ROOT / ".cache" / "bin"))
    if not os.access(bin_dir / "fake-gcs-server", os.X_OK):
        log("no fake-gcs-server (make tools): large bodies not measured")
        return fallback("no fake-gcs-server")
    folder = folder / "gcs"
    folder.mkdir()
    peers, sink = gcs.Peers(folder), gcs.Sink()
    out: dict[str, Any] = {"bytes": gcs.INGEST_BYTES, "webhooks": count}
    try:
        await asyncio.to_thread(peers.start_backends)
        key = await gcs.register(peers, await sink.start())
        for store, settings in (
            ("gcs", {"body_store": "gcs", "inline_limit": 64 * 1024}),
            ("inline", {"body_store": "fs", "inline_limit": 1024 * 1024}),
        ):
            settings["body_dir"] = str(folder / "bodies")
            port = free_port()
            receiver = peers.hookline(
                "receiver", f"receiver-{store}", receiver_port=port, **settings
            )
            await asyncio.to_thread(wait_until, partial(ready, port), 20, "the receiver")
            await gcs.ingest_round(port, key, 64)  # warm-up: connections, the GCS client
            cpu = cpu_seconds(receiver.pid)
            await gcs.ingest_round(port, key, count)
            received_us = (cpu_seconds(receiver.pid) - cpu) / count * 1e6
            peers.stop(receiver)
            sink.got.clear()
            dispatcher = peers.hookline("dispatcher", f"dispatcher-{store}", **settings)
            # the window: from the 64th delivery (start-up and the warm-up's share behind)
            # to 90 % of the rest (on a starved machine a few GCS reads time out and go to
            # the retry schedule, seconds later)
            first = await delivered(sink, 64, dispatcher.pid)
            last = await delivered(sink, 64 + count * 9 // 10, dispatcher.pid)
            peers.stop(dispatcher)
            # what is left (retries of the starved) must not reach the next pass's dispatcher
            leftover = [f"{gcs.PREFIX}:{kind}:{POOL}" for kind in ("stream", "retry", "retrydata")]
            redis.Redis.from_url(peers.redis_url).delete(*leftover)
            delivered_us = (last[1] - first[1]) / (last[0] - first[0]) * 1e6
            out[f"receiver_us_{store}"] = round(received_us)
            out[f"dispatcher_us_{store}"] = round(delivered_us)
            log(f"256 KiB {store}: receiver {received_us:.0f} µs, dispatcher {delivered_us:.0f} µs")
    finally:
        await sink.stop()
        peers.stop_all()
    out["receiver_us"] = out["receiver_us_gcs"]
    out["dispatcher_us"] = out["dispatcher_us_gcs"]
    out["from"] = "measured: bench/scale.py, fake-gcs-server (its CPU not counted)"
    return out


async def delivered(sink: Any, n: int, pid: int, seconds: float = 60) -> tuple[int, float]:
    """Wait until the sink has ``n`` webhooks; then (how many it has, the dispatcher's CPU)."""
    deadline = time.monotonic() + seconds
    while len(sink.got) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/scale: {len(sink.got)} of {n} large webhooks delivered")
        await asyncio.sleep(0.01)
    return len(sink.got), cpu_seconds(pid)


# -- the model


def model(
    receivers: list[dict[str, Any]],
    runs: dict[int, list[dict[str, Any]]],
    large: dict[str, Any],
) -> dict[str, Any]:
    """Capacities per core from the lowest CPU per item measured (each its own lowest: other
    work on the machine only adds to them); one Redis carries ingest and delivery of every
    webhook, so its ceiling is one core over both costs."""
    receiver = {
        key: min(r[key] for r in receivers) for key in ("us", "redis_us", "commands", "bytes")
    }
    dispatcher_us = min(r["us"] for rs in runs.values() for r in rs)
    redis_delivery_us = min(r["redis_us"] for rs in runs.values() for r in rs)
    sink_us = min(r["sink_us"] for rs in runs.values() for r in rs)
    redis_us = receiver["redis_us"] + redis_delivery_us
    return {
        "name": "scale_model",
        "receiver_per_core": round(1e6 / receiver["us"]),
        "dispatcher_per_core": round(1e6 / dispatcher_us),
        "redis_per_core": round(1e6 / redis_us),
        "value": round(1e6 / redis_us),
        "unit": "webhooks/s through one Redis (its one core, ingest + delivery)",
        "target": "none: a model; scale_dispatchers checks it against measured drains",
        "receiver_us": round(receiver["us"], 1),
        "dispatcher_us": round(dispatcher_us, 1),
        "redis_us_per_accept": round(receiver["redis_us"], 2),
        "redis_us_per_delivery": round(redis_delivery_us, 2),
        "sink_us": round(sink_us, 1),
        "redis_commands_per_webhook": round(
            receiver["commands"] + min(r["commands"] for rs in runs.values() for r in rs), 2
        ),
        "redis_bytes_per_queued": round(receiver["bytes"]),
        "redis_planned": round(UTILISATION * 1e6 / redis_us),
        "utilisation": UTILISATION,
        "large_body": large,
        "cores": CORES,
    }


def on_this_machine(m: dict[str, Any], k: int) -> dict[str, float]:
    """What the model predicts for k dispatchers draining a preloaded stream here: each
    dispatcher at most one core, and all of them, Redis and the sink sharing this machine's
    cores; Redis's delivery side at most its one core."""
    per_delivery = m["dispatcher_us"] + m["redis_us_per_delivery"] + m["sink_us"]
    rate = min(
        k * 1e6 / m["dispatcher_us"],
        CORES * 1e6 / per_delivery,
        1e6 / m["redis_us_per_delivery"],
    )
    return {"rate": rate, "redis_cpu": rate * m["redis_us_per_delivery"] / 1e6}


def plan(m: dict[str, Any]) -> list[dict[str, Any]]:
    """Pods and Redis for each sustained rate and body mix, from the model's per-item CPU."""
    entry = m["redis_bytes_per_queued"]
    out = []
    for large in (0.0, LARGE_SHARE):
        big = m["large_body"]
        receiver_us = (1 - large) * m["receiver_us"] + large * big["receiver_us"]
        dispatcher_us = (1 - large) * m["dispatcher_us"] + large * big["dispatcher_us"]
        # A large body's entry holds its reference, not its bytes: the Redis side is no
        # dearer than a 1 KiB body's, and its entry about a KiB smaller.
        per_entry = (1 - large) * entry + large * (entry - BODY_BYTES)
        redis_us = m["redis_us_per_accept"] + m["redis_us_per_delivery"]
        for rate in RATES:
            redis_cores = rate * redis_us / 1e6
            out.append(
                {
                    "name": "scale_plan",
                    "rate": rate,
                    "large_share": large,
                    "receiver_cores": round(rate * receiver_us / 1e6, 2),
                    "receiver_pods": math.ceil(rate * receiver_us / 1e6 / UTILISATION),
                    "dispatcher_cores": round(rate * dispatcher_us / 1e6, 2),
                    "dispatcher_pods": math.ceil(rate * dispatcher_us / 1e6 / UTILISATION),
                    "redis_cores": round(redis_cores, 2),
                    "redis_instances": math.ceil(redis_cores / UTILISATION),
                    "redis_mib_per_backlog_minute": round(
                        rate * BACKLOG_SECONDS * per_entry / 2**20
                    ),
                    "gcs_mib_per_s": round(rate * large * GCS_BODY_BYTES / 2**20),
                    "target": "none: the model's arithmetic (pods and Redis sized to "
                    f"{UTILISATION:.0%} of a core)",
                }
            )
    return out


# -- the run


def measure(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    rig = Rig(folder)
    lines: list[dict[str, Any]] = []
    load_start = os.getloadavg()[0]
    try:
        rig.start_backends()
        receivers = [rig.receiver_run(args.seconds) for _ in range(args.rounds)]
        runs: dict[int, list[dict[str, Any]]] = {k: [] for k in args.dispatchers}
        for _ in range(args.rounds):
            for k in args.dispatchers:
                runs[k].append(rig.dispatch_run(k, args.count))
    finally:
        rig.stop_all()
    large = fallback("--large 0")
    if args.large:
        try:
            large = asyncio.run(large_bodies(args.large, folder))
        except SystemExit as exc:  # what was measured before stays worth printing
            log(f"large bodies: {exc}")
            large = fallback(str(exc))
    receiver = min(receivers, key=lambda r: r["us"])
    lines.append(
        {
            "name": "scale_receiver",
            "value": round(1e6 / receiver["us"]),
            "unit": "webhooks/s per receiver core",
            "target": "none: an input of the model (ingest's own target is in bench/run.py)",
            "runs": [round(r["rate"]) for r in receivers],
            "cpu": [round(r["cpu"], 2) for r in receivers],
            "receiver_us": [round(r["us"], 1) for r in receivers],
            "redis_cpu": [round(r["redis_cpu"], 2) for r in receivers],
            "redis_us_per_accept": [round(r["redis_us"], 2) for r in receivers],
            "redis_commands_per_accept": round(receiver["commands"], 2),
            "by_command": receiver["by_command"],
            "redis_bytes_per_queued": [round(r["bytes"]) for r in receivers],
            "body_bytes": BODY_BYTES,
        }
    )
    if "receiver_us_gcs" in large:
        lines.append(
            {
                "name": "scale_large_body",
                "value": large["dispatcher_us"],
                "unit": "µs of dispatcher CPU per 256 KiB webhook fetched from GCS and delivered",
                "target": "none: an input of the model",
                **{k: v for k, v in large.items() if k != "from"},
            }
        )
    m = model(receivers, runs, large)
    m["measured"] = time.strftime("%Y-%m-%d %H:%M")
    cheapest = min(
        min(r["us"] for r in rs) + min(r["redis_us"] for r in rs) for rs in runs.values()
    )
    for k, rs in runs.items():
        best = max(rs, key=lambda r: r["rate"])
        low = min(rs, key=lambda r: r["us"])
        low_redis = min(r["redis_us"] for r in rs)
        predicted = on_this_machine(m, k)
        lines.append(
            {
                "name": "scale_dispatchers",
                "k": k,
                "value": round(best["rate"]),
                "unit": "webhooks delivered/s",
                "model": round(predicted["rate"]),
                "model_ratio": round(best["rate"] / predicted["rate"], 3),
                "ratio": round(cheapest / (low["us"] + low_redis), 3),
                "target": f">= {TARGET}: CPU per delivery (dispatchers + Redis) within "
                f"1/{TARGET} of the cheapest k's, so that capacity grows linearly with k",
                "runs": [round(r["rate"]) for r in rs],
                "dispatcher_cpu": [round(r["dispatcher_cpu"], 2) for r in rs],
                "per_process_cpu": [[round(c, 2) for c in r["cpus"]] for r in rs],
                "dispatcher_us": round(low["us"], 1),
                "redis_cpu_runs": [round(r["redis_cpu"], 3) for r in rs],
                "redis_cpu": round(max(r["redis_cpu"] for r in rs), 3),
                "redis_cpu_us_per_delivery": round(min(r["redis_us"] for r in rs), 2),
                "sink_us": round(min(r["sink_us"] for r in rs), 1),
                "redis_commands_per_delivery": round(low["commands"], 2),
                "by_command": low["by_command"],
                "delivered_before_window": [r["before_window"] for r in rs],
                "webhooks": args.count,
            }
        )
    lines.append(m)
    lines += plan(m)
    lines.append(
        {
            "name": "scale_load",
            "value": round(os.getloadavg()[0], 2),
            "unit": "loadavg_1m",
            "at_start": round(load_start, 2),
            "cpus": CORES,
            "target": "none: how busy the shared machine was",
        }
    )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dispatchers", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--count", type=int, default=10_000, help="webhooks per drain")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0, help="wrk's measured run, receiver")
    p.add_argument("--large", type=int, default=300, help="256 KiB webhooks (0: none)")
    p.add_argument("--quick", action="store_true", help="one round, k 1-3, small drains")
    p.add_argument("--svg", type=Path, help="write the figure here")
    p.add_argument("--replot", type=Path, help="draw --svg from these JSON lines; no run")
    args = p.parse_args()
    if args.replot:
        if not args.svg:
            p.error("--replot needs --svg")
        lines = [
            json.loads(ln) for ln in args.replot.read_text().splitlines() if ln.startswith("{")
        ]
        args.svg.write_text(svg(lines))
        return 0
    if shutil.which("wrk") is None:
        raise SystemExit("bench/scale: wrk is not installed (apt-get install wrk)")
    if args.quick:
        args.dispatchers, args.count, args.rounds, args.seconds = [1, 2, 3], 8000, 1, 2.0
        args.large = min(args.large, 100)
    if not PINNED:
        log("fewer than 2 CPUs or no taskset: nothing is pinned")
    if PINNED:  # this process polls; keep it off the receiver's core
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    with tempfile.TemporaryDirectory(prefix="hookline-bench-scale-") as tmp:
        lines = measure(args, Path(tmp))
    for line in lines:
        emit(line)
    if args.svg:
        args.svg.write_text(svg(lines))
        log(f"figure in {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
