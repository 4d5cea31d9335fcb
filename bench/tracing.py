"""Tracing overhead: ingest and delivery throughput with every webhook traced into Jaeger.

    python bench/tracing.py [--rounds N] [--seconds S] [--deliveries N]

Everything runs on this machine, on loopback: a private ``redis-server``, the
real Jaeger v2 all-in-one (``make tools``) with in-memory storage, ``hookline
receiver`` and ``hookline dispatcher`` as their own processes configured by
environment, ``wrk`` as the sender and an HTTP sink in this process. Prints one
JSON line per figure to stdout (progress goes to stderr):

* ``ingest_traced``: webhooks/s one receiver accepts with tracing on and 100%
  sampling (``OTEL_TRACES_SAMPLER=always_on``, OTLP/HTTP to Jaeger), against an
  identical receiver with tracing off (``baseline``), in the same run: ``wrk``
  with 32 connections and 512-byte JSON bodies for ``--seconds`` s per variant
  and round. The streams are emptied between rounds.
* ``delivery_traced``: deliveries/s of one dispatcher with tracing on, each
  entry carrying a sampled ``traceparent`` as a traced receiver writes it,
  against an identical untraced dispatcher (``baseline``): per round and
  variant a stream is filled with ``--deliveries`` entries, the dispatcher
  started, and the rate taken at the sink from its first delivery to its last.
* ``ingest_traced_sampled`` and ``delivery_traced_sampled``: the same at the
  production setting ``docs/tracing.md`` recommends,
  ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` with
  ``OTEL_TRACES_SAMPLER_ARG=0.01``, against the same untraced baseline. ``wrk``
  sends no trace context, so the receiver samples 1% of its webhooks by trace
  id. A parent-based dispatcher follows the sampled flag of the ``traceparent``
  the receiver wrote, so its stream holds entries as such a receiver writes
  them: every entry carries a ``traceparent``, and every 100th (exactly 1%, so
  that the spans expected are known) has the sampled flag, the others not.

The variants run back to back in each round, in an order that changes from
round to round, after a warm-up round; a figure is the median over rounds, and
``ratio`` the median of the per-round ratios against the untraced variant of
the same round, so that a burst of load from elsewhere on a shared machine
skews one round rather than the figure. ``cpu_us`` /
``baseline_cpu_us`` are the CPU time the process under test spent per webhook
(``/proc``), and ``cpu_ratio`` their ratio: the throughput per core, steadier
than the rates when the machine is busy. Targets (``target`` on each line):
ratio >= 0.85 at 100% sampling, >= 0.97 at 1%. Each traced figure also reports
the spans Jaeger accepted against the spans expected (``spans_exported`` /
``spans_expected``, a few more when requests were in flight as a round ended;
at 1% the ingest figure's expectation is only about right, since the sampler
draws), so a tracer that kept up by dropping spans would show. As in the other
benchmarks, the processes under test run on CPU 0 and the load, sink, Redis and
Jaeger on CPU 1 when there are two CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.tracing.jaeger, the Jaeger the tests start too

from tests.tracing.jaeger import JaegerServer  # noqa: E402

from common import (  # noqa: E402 (bench/ is on sys.path)
    LOAD_CPU,
    PINNED,
    Backends,
    free_port,
    pinned,
    wait_until,
)
from hookline.config import Config  # noqa: E402
from hookline.models import SigningSecret, Webhook, endpoint_from_spec, new_id  # noqa: E402
from hookline.signing import new_key, new_secret  # noqa: E402
from hookline.store import Queue, Store, redis_client  # noqa: E402

PREFIX = "benchtrace"
BODY = json.dumps({"type": "bench.event", "data": "x" * 460}).encode()[:512]
RATIO = 0.01  # the sampled variant's OTEL_TRACES_SAMPLER_ARG
SAMPLED_EVERY = round(1 / RATIO)  # the sampled delivery stream: every 100th entry sampled
VARIANTS = ("plain", "traced", "sampled")
TARGETS = {"traced": 0.85, "sampled": 0.97}
FIGURES = {"traced": "traced", "sampled": "traced_sampled"}


def log(msg: str) -> None:
    print(f"bench/tracing: {msg}", file=sys.stderr, flush=True)


def emit(name: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"name": name, "value": round(value, 1), "unit": unit, **extra}), flush=True)


def figure(
    name: str,
    unit: str,
    rounds: dict[str, list[tuple[float, float]]],
    variant: str,
    **extra: Any,
) -> None:
    """Emit a traced variant's figure against the untraced baseline from paired rounds
    of (rate, CPU seconds per item): medians of each, the median of the per-round
    ratios (each pair ran in the same round), and the same ratio for CPU per item."""
    plain, traced = rounds["plain"], rounds[variant]
    emit(
        name,
        statistics.median(r for r, _ in traced),
        unit,
        baseline=round(statistics.median(r for r, _ in plain), 1),
        ratio=round(statistics.median(t[0] / p[0] for p, t in zip(plain, traced, strict=True)), 3),
        target=TARGETS[variant],
        cpu_us=round(statistics.median(c for _, c in traced) * 1e6, 1),
        baseline_cpu_us=round(statistics.median(c for _, c in plain) * 1e6, 1),
        cpu_ratio=round(
            statistics.median(p[1] / t[1] for p, t in zip(plain, traced, strict=True)), 3
        ),
        rounds=len(plain),
        **extra,
    )


def order(n: int) -> tuple[str, ...]:
    """The variants' order in round ``n``: rotated and reversed in turn, so that over
    rounds each runs before and after each other and drift favours none."""
    k = n % len(VARIANTS)
    turned = VARIANTS[k:] + VARIANTS[:k]
    return turned if n % 2 else turned[::-1]


class Peers(Backends):
    """redis-server, Jaeger and the hookline processes; all stopped on exit."""

    script = "bench/tracing"
    stop_timeout = 30.0

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        wrap = tuple(pinned(LOAD_CPU, []))
        # One Jaeger per traced variant, so that each one's count of accepted spans is
        # that variant's alone (the sampled one's gets few).
        self.jaegers = {
            v: JaegerServer(folder / f"jaeger-{v}", metrics=True, wrap=wrap)
            for v in ("traced", "sampled")
        }

    def start_backends(self) -> None:
        if shutil.which("wrk") is None:
            raise SystemExit("bench/tracing: wrk is not installed (apt-get install wrk)")
        self.start_redis()
        for jaeger in self.jaegers.values():
            jaeger.start()

    def hookline(self, role: str, variant: str, **settings: Any) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HOOKLINE_"))}
        env.update(
            {
                "HOOKLINE_REDIS_URL": self.redis_url,
                "HOOKLINE_PREFIX": PREFIX,
                "HOOKLINE_RECEIVER_HOST": "127.0.0.1",
                "HOOKLINE_DISPATCHER_PORT": "0",
                "HOOKLINE_ALLOW_CIDRS": "127.0.0.0/8",
                "HOOKLINE_BODY_DIR": str(self.folder / "bodies"),
                "HOOKLINE_TRACING": "off" if variant == "plain" else "on",
            }
        )
        if variant == "traced":
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.jaegers[variant].otlp_http
            env["OTEL_TRACES_SAMPLER"] = "always_on"
        elif variant == "sampled":
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.jaegers[variant].otlp_http
            env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            env["OTEL_TRACES_SAMPLER_ARG"] = str(RATIO)
        env.update({f"HOOKLINE_{k.upper()}": str(v) for k, v in settings.items()})
        return self.start_hookline(role, f"{role}-{variant}", env)

    def stop_all(self) -> None:
        super().stop_all()
        for jaeger in self.jaegers.values():
            jaeger.stop()

    def log_tail(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User and system CPU time a process (or one of its threads) has used so far."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def receiver_ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
        return bool(resp.status == 200)


async def spans_settle(jaeger: JaegerServer, expected: int, seconds: float = 20.0) -> int:
    """Spans Jaeger has accepted once it reaches ``expected`` (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    accepted = jaeger.accepted_spans()
    while accepted < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        accepted = jaeger.accepted_spans()
    return accepted


# -- ingest


def wrk(port: int, key: str, seconds: float, folder: Path) -> tuple[float, int]:
    """(requests/s, requests) of one wrk run; fails on any non-2xx answer or socket error."""
    script = folder / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY.decode())}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["X-WH-Endpoint-Key"] = "{key}"\n'
    )
    url = f"http://127.0.0.1:{port}/webhooks/send"
    argv = pinned(LOAD_CPU, ["wrk", "-t1", "-c32", f"-d{seconds:g}s", "-s", str(script), url])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rate is None or total is None or "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"bench/tracing: wrk failed or saw errors:\n{out}")
    return float(rate.group(1)), int(total.group(1))


async def ingest(peers: Peers, keys: dict[str, str], rounds: int, seconds: float) -> None:
    ports = {v: free_port() for v in VARIANTS}
    receivers = {v: peers.hookline("receiver", v, receiver_port=ports[v]) for v in VARIANTS}
    for v in VARIANTS:
        ready = lambda v=v: receiver_ready(ports[v])  # noqa: E731
        await asyncio.to_thread(wait_until, ready, 30, f"{v} receiver")
    redis = redis_client(Config(redis_url=peers.redis_url))
    measured: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    requests = dict.fromkeys(VARIANTS, 0)
    before = {v: jaeger.accepted_spans() for v, jaeger in peers.jaegers.items()}
    try:
        for n in range(rounds + 1):  # round 0 warms both up and is not counted
            for v in order(n):
                pid = receivers[v].pid
                cpu, loop_cpu = cpu_seconds(pid), cpu_seconds(pid, pid)
                rate, total = await asyncio.to_thread(
                    wrk, ports[v], keys[v], seconds if n else 2, peers.folder
                )
                cpu = cpu_seconds(pid) - cpu
                loop_cpu = cpu_seconds(pid, pid) - loop_cpu
                requests[v] += total
                if n:
                    measured[v].append((rate, cpu / total))
                log(
                    f"ingest round {n}: {v} {rate:.0f} webhooks/s, "
                    f"receiver CPU {cpu / total * 1e6:.0f} us per webhook "
                    f"({loop_cpu / total * 1e6:.0f} in the event loop's thread)"
                )
                await redis.delete(*(f"{PREFIX}:stream:{p}" for p in VARIANTS))
    finally:
        await redis.aclose()
    for v in VARIANTS:
        peers.stop(receivers[v])  # the traced ones flush their spans on the way out
    for v in ("traced", "sampled"):
        # Server and producer span per request; at 1%, about 2% of the requests'.
        expected = 2 * requests[v] if v == "traced" else round(2 * RATIO * requests[v])
        jaeger = peers.jaegers[v]
        accepted = await spans_settle(jaeger, before[v] + expected, 20 if v == "traced" else 3)
        approximately = {} if v == "traced" else {"spans_expected_about": True}
        figure(
            f"ingest_{FIGURES[v]}",
            "webhooks/s",
            measured,
            v,
            spans_expected=expected,
            spans_exported=accepted - before[v],
            **approximately,
        )


# -- delivery


class _SinkConnection(asyncio.Protocol):
    """A bare HTTP/1.1 endpoint: reads each request (Content-Length bodies, keep-alive),
    notes its arrival and answers 204. Far cheaper than an aiohttp server, so that the
    dispatcher under test, not the sink, is what limits the delivery rate."""

    def __init__(self, arrivals: dict[str, list[float]]) -> None:
        self.arrivals = arrivals
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            path = head.split(" ", 2)[1]
            self.arrivals.setdefault(path, []).append(time.monotonic())
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


class Sink:
    """The endpoints: arrival times per path."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _SinkConnection(self.arrivals), "127.0.0.1", 0, backlog=1024
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def fill(queue: Queue, variant: str, count: int) -> None:
    """``count`` entries for the variant's endpoint. The traced variant's carry a sampled
    ``traceparent``; the sampled variant's a ``traceparent`` sampled on every
    :data:`SAMPLED_EVERY`-th entry and unsampled on the others, as a receiver sampling
    at :data:`RATIO` writes them; the plain variant's none."""
    now = int(time.time() * 1000)
    for start in range(0, count, 1000):
        batch = []
        for i in range(start, start + min(1000, count - start)):
            trace = {}
            if variant != "plain":
                flags = "01" if variant == "traced" or i % SAMPLED_EVERY == 0 else "00"
                trace["traceparent"] = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{flags}"
            webhook = Webhook(
                id=new_id(),
                endpoint=f"bench/{variant}",
                headers={"content-type": "application/json"},
                body=BODY,
                size=len(BODY),
                created_ms=now,
                trace=trace,
            )
            batch.append(queue.enqueue(variant, webhook))
        await asyncio.gather(*batch)


async def delivery(peers: Peers, sink: Sink, rounds: int, count: int) -> None:
    redis = redis_client(Config(redis_url=peers.redis_url))
    store = Store(redis, Config(prefix=PREFIX))
    queue = store.queue
    measured: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    expected = dict.fromkeys(VARIANTS, 0)  # consumer and client span per sampled delivery
    exported = dict.fromkeys(VARIANTS, 0)
    try:
        for n in range(rounds + 1):
            for v in order(n):
                size = count if n else count // 5
                await fill(queue, v, size)
                path = f"/{v}"
                sink.arrivals[path] = []
                jaeger = peers.jaegers.get(v)
                before = jaeger.accepted_spans() if jaeger is not None else 0
                proc = peers.hookline("dispatcher", v, pool=v)
                deadline = time.monotonic() + 120
                cpu_at: list[tuple[int, float]] = []  # (delivered, dispatcher CPU seconds)
                while len(sink.arrivals[path]) < size:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(
                            f"bench/tracing: the {v} dispatcher did not deliver "
                            f"({len(sink.arrivals[path])} of {size}); its log ends:\n"
                            + peers.log_tail(f"dispatcher-{v}")
                        )
                    if sink.arrivals[path]:
                        cpu_at.append((len(sink.arrivals[path]), cpu_seconds(proc.pid)))
                    await asyncio.sleep(0.02)
                cpu_at.append((size, cpu_seconds(proc.pid)))
                times = sink.arrivals[path]
                rate = (len(times) - 1) / (times[-1] - times[0])
                await asyncio.to_thread(peers.stop, proc)  # which flushes its spans
                if jaeger is not None:
                    sampled = size if v == "traced" else len(range(0, size, SAMPLED_EVERY))
                    expected[v] += 2 * sampled
                    accepted = await spans_settle(jaeger, before + 2 * sampled, 10)
                    exported[v] += accepted - before
                (n0, c0), (n1, c1) = cpu_at[0], cpu_at[-1]
                cpu = (c1 - c0) / max(1, n1 - n0)
                if n:
                    measured[v].append((rate, cpu))
                log(
                    f"delivery round {n}: {v} {rate:.0f} deliveries/s, "
                    f"dispatcher CPU {cpu * 1e6:.0f} us per delivery"
                )
    finally:
        await store.aclose()
        await redis.aclose()
    for v in ("traced", "sampled"):
        figure(
            f"delivery_{FIGURES[v]}",
            "deliveries/s",
            measured,
            v,
            spans_expected=expected[v],
            spans_exported=exported[v],
        )


async def register(peers: Peers, sink_port: int) -> dict[str, str]:
    store = Store.connect(Config(redis_url=peers.redis_url, prefix=PREFIX))
    keys = {}
    try:
        for v in VARIANTS:
            key = new_key()
            spec = {"url": f"http://127.0.0.1:{sink_port}/{v}", "pool": v}
            endpoint = endpoint_from_spec(
                f"bench/{v}", spec, [key], [SigningSecret(new_secret())], Config()
            )
            await store.registry.put(endpoint)
            keys[v] = key
    finally:
        await store.aclose()
    return keys


async def main_async(args: argparse.Namespace, folder: Path) -> None:
    peers = Peers(folder)
    sink = Sink()
    try:
        await asyncio.to_thread(peers.start_backends)
        await sink.start()
        keys = await register(peers, sink.port)
        if args.seconds > 0:
            await ingest(peers, keys, args.rounds, args.seconds)
        if args.deliveries > 0:
            await delivery(peers, sink, args.rounds, args.deliveries)
    finally:
        await sink.stop()
        peers.stop_all()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per variant")
    p.add_argument("--seconds", type=float, default=5.0, help="length of an ingest round (0: none)")
    p.add_argument("--deliveries", type=int, default=5000, help="entries per delivery round")
    args = p.parse_args()
    if PINNED:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    with tempfile.TemporaryDirectory(prefix="hookline-bench-tracing-") as tmp:
        asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    main()
