"""``make bench``: hookline's throughput and latency against bare baselines, one JSON line each.

Measured in one run on this machine, on loopback only:

* ``ingest``     webhooks/s one ``hookline receiver`` accepts (1 KiB bodies, 64
                 keep-alive connections, wrk) vs. a bare aiohttp handler (``bench/bare.py``)
* ``delivery``   webhooks/s one ``hookline dispatcher`` drains from a preloaded stream
                 to ``bench/sink.py`` vs. a raw aiohttp client (``bench/rawclient.py``)
                 with the same concurrency: the webhooks are for as many endpoints (all
                 on the sink) as the dispatcher's concurrency needs past its per-endpoint
                 cap (256 / 64 = 4 by default)
* ``e2e_p50_ms`` / ``e2e_p99_ms``  from the sender's ``202`` to sink receipt at a fixed
                 offered rate (``bench/sender.py``), receiver and dispatcher both running
* ``isolation``  the healthy sink's delivery rate while one dispatcher drains a stream in
                 which every other webhook is for an endpoint that answers 10 s late,
                 vs. the same drain without those webhooks (issue 3)
* ``cpu_us_per_webhook_at_100``, ``_at_1000``, ``_saturated``  whole-system CPU (receiver +
                 dispatcher + Redis) per webhook at 100/s and 1,000/s offered open loop
                 and at saturation, receiver, dispatcher and sink running together (issue
                 17; :meth:`Bench.cost` says how each is measured)
* ``relay_cpu_us_per_webhook_at_100``, ``_at_1000``, ``_saturated``  the same for the floor:
                 a bare aiohttp relay (``bench/bare.py --forward``), one process, no queue
* ``fanout_ingest``  events/s and deliveries queued/s per receiver core with a source's key
                 whose event goes to 1, 10 and 100 subscribers, vs. an endpoint's own key
* ``fanout_delivery``  deliveries/s per dispatcher core of events fanned out to 10
                 subscribers (one shared body each) vs. the width-1 ``delivery`` drain
* ``fanout_redis_bytes_per_event``  Redis memory per accepted event at width 100 vs. 1
                 (issue 15)

The process under test runs on CPU 0; the load generator, the sink and a private
``redis-server`` (no persistence unless ``--aof``: then AOF with fsync every
second) share CPU 1. Baseline and hookline alternate for ``--rounds`` rounds and
the best of each is reported, which damps noise from other work on the machine.
The ``ingest``, ``delivery`` and ``e2e_p99_ms`` lines also carry figures that move less
with the machine than rates do: ``cpu_us_per_webhook`` (the process under test;
receiver + dispatcher for e2e), ``baseline_cpu_us_per_webhook``, and Redis's share from
its ``INFO cpu`` and ``INFO commandstats`` deltas over the run (``redis_cpu_us_per_webhook``,
``redis_calls_per_webhook``, ``redis_calls`` by command; the benchmark's own calls are
taken off, commands run inside scripts count as calls).
Then every script of :data:`EXTRA_SCRIPTS` that exists runs and its JSON lines
are passed through. Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import redis

from common import (  # bench/ is the script's folder
    BODY_BYTES,
    LOAD_CPU,
    PINNED,
    SUT_CPU,
    body,
    free_port,
    preload,
)
from common import wait_until as _wait_until
from hookline.config import Config
from hookline.config import load as load_config
from hookline.models import (
    SigningSecret,
    Webhook,
    endpoint_from_spec,
    new_id,
    source_from_spec,
)
from hookline.signing import new_key, new_secret
from hookline.store import Store

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# Standalone benchmark scripts that print their own JSON lines; run when present.
EXTRA_SCRIPTS = ["bench/gcs.py", "bench/tracing.py", "bench/scale.py"]
PREFIX = "bench"
ENDPOINT = "bench/sink"
HANGING = "bench/hang"  # the isolation figure's endpoint that answers late
CONNECTIONS = 64
FANOUT_WIDTHS = (1, 10, 100)  # subscribers of the fan-out figures' sources
FANOUT_DELIVERY_WIDTH = 10
MEMORY_WIDTH = 100  # fanout_redis_bytes_per_event: this width against width 1
EVENT_TYPE = "bench.event"
# Targets of the fan-out figures. Issue 15 sets only the memory one; the others are this
# benchmark's proposals (docs/benchmarks.md says why).
FANOUT_INGEST_TARGETS = {
    1: ">= 0.9: a source's key with one subscriber costs the receiver about an endpoint's key",
    10: ">= 3: one POST queuing 10 deliveries costs at most a third of 10 direct POSTs",
    100: ">= 10: one POST queuing 100 deliveries costs at most a tenth of 100 direct POSTs",
}
FANOUT_DELIVERY_TARGET = ">= 0.8 of the width-1 delivery's webhooks per dispatcher core"
# The cost part (issue 17): offered rates, seconds of warm-up, measured window and saturation.
COST_RATES = (100, 1000)
COST_IDLE = 5.0
COST_WARM = 3.0
COST_WINDOW = {100: 15.0, 1000: 10.0}
COST_SATURATED = 5.0
COST_TARGETS = {"at_100": "<= 2x saturated (issue 17)"}
MEMORY_TARGET = "<= 2: width 100 within 2x of width 1 (issue 15; the body is stored once)"


def fan_source(width: int) -> str:
    return f"{PREFIX}/fan-{width}"


def fan_endpoints(width: int) -> list[str]:
    return [f"{PREFIX}/fan-{width}-{i}" for i in range(width)]


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


class Procs:
    """Every process the benchmark starts, so that none outlives it."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[str]] = []

    def start(
        self, argv: list[str], cpu: str | None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start ``argv`` on CPU ``cpu`` (None: wherever the scheduler likes)."""
        pin = ["taskset", "-c", cpu] if PINNED and cpu is not None else []
        proc = subprocess.Popen(
            pin + argv, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )  # taskset execs the command: proc.pid is the process itself
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
        """SIGTERM, wait, SIGKILL if needed; returns what it printed."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        self.running.remove(proc)
        return out or ""

    def wait(self, proc: subprocess.Popen[str], timeout: float) -> str:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc, 5)
            raise RuntimeError(f"{proc.args!r} did not finish in {timeout:g} s") from None
        self.running.remove(proc)
        if proc.returncode:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        return out or ""

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc, 10)


def wait_until(check: Callable[[], object], seconds: float, what: str) -> None:
    _wait_until(check, seconds, what, (OSError, redis.RedisError))


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
        return bool(resp.status == 200)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_seconds(pid: int) -> float:
    """CPU time of a running process's threads to the ns (``/proc/PID/task/*/schedstat``):
    the clock-tick resolution of :func:`cpu_seconds` is too coarse for an idle second.
    A thread that has exited is not counted (the processes measured keep theirs)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def last_json(out: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"no JSON summary in {out!r}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@dataclass(frozen=True)
class RedisReading:
    """Redis's own CPU seconds and calls per command at one moment, with the calls the
    benchmark itself had made by then (polls, these readings), to be taken off."""

    cpu: float
    calls: Counter[str]
    own: Counter[str]


def redis_cost(before: RedisReading, after: RedisReading, webhooks: int) -> dict[str, Any]:
    """Redis CPU µs and commands per webhook between two readings, the benchmark's own calls
    taken off. Commands a script runs count as calls of their own (an EVALSHA whose script
    XACKs and XDELs is three), as ``INFO commandstats`` counts them."""
    calls = (after.calls - before.calls) - (after.own - before.own)
    per = max(webhooks, 1)
    return {
        "redis_cpu_us_per_webhook": round((after.cpu - before.cpu) / per * 1e6, 1),
        "redis_calls_per_webhook": round(sum(calls.values()) / per, 2),
        "redis_calls": {c: round(n / per, 3) for c, n in calls.most_common()},
    }


class Drain(NamedTuple):
    """What a dispatcher used draining a preloaded stream."""

    cpu: float  # share of a core
    cpu_us: float  # CPU µs per webhook
    redis: dict[str, Any]  # redis_cost()


class CostReading(NamedTuple):
    at: float  # time.monotonic()
    cpu: list[float]  # CPU seconds of each process measured
    delivered: int  # webhooks delivered so far
    redis: RedisReading


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.procs = Procs()
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis = redis.Redis.from_url(self.redis_url)
        self.sink_port = free_port()
        self.hang_port = free_port()
        self.key = new_key()
        self.source_keys = {width: new_key() for width in FANOUT_WIDTHS}
        self.redis_proc: subprocess.Popen[str] | None = None
        self.concurrency = load_config().concurrency  # HOOKLINE_CONCURRENCY applies to both
        self.stream = f"{PREFIX}:stream:default"
        # The delivery figure's endpoints, all on the sink: as many as it takes for the
        # dispatcher's HOOKLINE_CONCURRENCY to be used, as the raw client uses it, past
        # the per-process cap on one endpoint (HOOKLINE_ENDPOINT_CONCURRENCY).
        config = load_config()
        spread = max(1, math.ceil(config.concurrency / config.endpoint_concurrency))
        self.spread = tuple(f"{ENDPOINT}-{i}" for i in range(spread))
        self.own: Counter[str] = Counter()  # the benchmark's own Redis calls, by command
        self.baseline_us: dict[str, float] = {}  # bare.py's and rawclient.py's CPU µs/webhook

    # -- set-up

    def start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (make bench installs it)")
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"]
        if not self.args.aof:
            persistence = ["--appendonly", "no"]
        argv = [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
        self.redis_proc = self.procs.start([*argv, "--dir", str(self.work), *persistence], LOAD_CPU)
        wait_until(self.redis.ping, 10, "redis-server")

    async def register(self) -> None:
        config = Config()
        spec = {
            "url": f"http://127.0.0.1:{self.sink_port}/hook",
            "forwardHeaders": ["x-event-type"],
        }
        # Its timeout outlasts the hang: every request to it is answered, late.
        hang = {"url": f"http://127.0.0.1:{self.hang_port}/hook", "timeoutSeconds": 60}
        store = Store.connect(Config(redis_url=self.redis_url, prefix=PREFIX))
        try:
            named = [(ENDPOINT, self.key, spec), (HANGING, new_key(), hang)]
            named += [(name, new_key(), spec) for name in self.spread]
            for name, key, s in named:
                endpoint = endpoint_from_spec(name, s, [key], [SigningSecret(new_secret())], config)
                await store.registry.put(endpoint)
        finally:
            await store.aclose()

    def hookline_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOOKLINE_REDIS_URL=self.redis_url,
            HOOKLINE_PREFIX=PREFIX,
            HOOKLINE_RECEIVER_HOST="127.0.0.1",
            HOOKLINE_DISPATCHER_HOST="127.0.0.1",
            HOOKLINE_BODY_DIR=str(self.work / "bodies"),
            HOOKLINE_ALLOW_CIDRS="127.0.0.0/8",
            **extra,
        )
        return env

    def hookline(self, component: str, cpu: str | None, **env: str) -> subprocess.Popen[str]:
        argv = [PY, "-m", "hookline.cli", "--log-level", "WARNING", component]
        return self.procs.start(argv, cpu, self.hookline_env(**env))

    def backlog(self) -> int:
        """Webhooks not delivered yet: in the stream, or deferred onto the retry schedule (a
        dispatcher defers what an endpoint it does not know to be fast cannot take yet)."""
        stream = self.redis.xlen(self.stream)
        retries = self.redis.zcard(f"{PREFIX}:retry:default")
        self.own.update(("xlen", "zcard"))
        return int(stream) + int(retries)  # type: ignore[arg-type]  # sync client

    def clear_queue(self) -> None:
        keys = [f"{PREFIX}:{kind}:default" for kind in ("stream", "retry", "retrydata")]
        endpoints = (ENDPOINT, HANGING, *self.spread)
        self.redis.delete(*keys, *(f"{PREFIX}:stats:{ep}" for ep in endpoints))

    def redis_reading(self) -> RedisReading:
        """Redis's CPU (``INFO cpu``: user + system, all its threads) and its calls per
        command (``INFO commandstats``) now; the private server serves nobody else."""
        info: dict[str, Any] = self.redis.execute_command("INFO", "cpu", "commandstats")
        self.own["info"] += 1  # counted in the next reading's commandstats, not this one's
        calls = Counter(
            {
                k.removeprefix("cmdstat_"): int(v["calls"])
                for k, v in info.items()
                if k.startswith("cmdstat_")
            }
        )
        cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return RedisReading(cpu, calls, Counter(self.own))

    def delivered(self, endpoint: str = ENDPOINT) -> int:
        got = self.redis.hget(f"{PREFIX}:stats:{endpoint}", "delivered")
        self.own["hget"] += 1
        return int(got or 0)  # type: ignore[arg-type]  # sync client

    @contextlib.contextmanager
    def profiled(
        self, proc: subprocess.Popen[str], name: str, seconds: float, after: float = 0.0
    ) -> Iterator[None]:
        """With ``--profile DIR``: py-spy samples ``proc`` for ``seconds``, ``after`` seconds
        into the block (past start-up and imports)."""
        if not self.args.profile:
            yield
            return
        time.sleep(after)
        out = Path(self.args.profile) / f"{name}.txt"
        spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
        if spy is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        argv = [spy, "record", "-p", str(proc.pid), "-d", str(math.ceil(seconds)), "-r", "200"]
        sampler = self.procs.start([*argv, "-f", "raw", "-o", str(out)], LOAD_CPU)
        try:
            yield
        finally:
            self.procs.wait(sampler, seconds + 30)
            log(f"profile of {name} in {out}")

    # -- ingest

    def wrk(
        self, port: int, seconds: float, key: str | None = None, event_type: str | None = None
    ) -> dict[str, Any]:
        argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "-s", "bench/loadgen.lua"]
        env = dict(os.environ, BENCH_KEY=key or self.key, BENCH_BODY_BYTES=str(BODY_BYTES))
        if event_type is not None:
            env["BENCH_EVENT_TYPE"] = event_type
        proc = self.procs.start([*argv, f"http://127.0.0.1:{port}/webhooks/send"], LOAD_CPU, env)
        out = self.procs.wait(proc, seconds + 30)
        line = next((ln for ln in out.splitlines() if ln.startswith("BENCH ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no summary: {out!r}")
        stats: dict[str, Any] = json.loads(line.removeprefix("BENCH "))
        stats["rate"] = stats["requests"] / (stats["duration_us"] / 1e6)
        return stats

    def ingest_once(self, server: str) -> dict[str, Any]:
        port = free_port()
        if server == "bare":
            proc = self.procs.start([PY, "bench/bare.py", "--port", str(port)], SUT_CPU)
            wait_until(lambda: listening(port), 15, "the bare server")
        else:
            proc = self.hookline("receiver", SUT_CPU, HOOKLINE_RECEIVER_PORT=str(port))
            wait_until(lambda: ready(port), 15, "the receiver")
        try:
            self.wrk(port, 2)  # warm-up: connections, caches, allocator
            cpu, before = cpu_seconds(proc.pid), self.redis_reading()
            with self.profiled(proc, f"ingest-{server}", self.args.duration):
                stats = self.wrk(port, self.args.duration)
            cpu, after = cpu_seconds(proc.pid) - cpu, self.redis_reading()
            # About 1.0 when the server is the bottleneck, as it should be.
            stats["cpu"] = cpu / (stats["duration_us"] / 1e6)
            stats["cpu_us"] = cpu / max(stats["requests"], 1) * 1e6
            if server == "hookline":
                stats["redis"] = redis_cost(before, after, stats["requests"])
        finally:
            self.procs.stop(proc)
        if server == "hookline":
            stats["queued"] = self.backlog()
            self.clear_queue()
        log(f"ingest {server}: {stats['rate']:.0f}/s {stats}")
        return stats

    def ingest(self) -> None:
        runs: dict[str, list[dict[str, Any]]] = {"bare": [], "hookline": []}
        for _ in range(self.args.rounds):
            for server in runs:
                runs[server].append(self.ingest_once(server))
        errors = sum(r["errors"] + r["non2xx"] for r in runs["hookline"])
        self.baseline_us["ingest"] = min(r["cpu_us"] for r in runs["bare"])
        emit(compare("ingest", runs["hookline"], runs["bare"], ">= 0.8", errors=errors))

    # -- delivery

    def sink(
        self, record: Path | None = None, cpu: str | None = LOAD_CPU, hang: float = 0.0
    ) -> subprocess.Popen[str]:
        port = self.hang_port if hang else self.sink_port
        argv = [PY, "bench/sink.py", "--port", str(port), "--hang", str(hang)]
        proc = self.procs.start(argv + (["--record", str(record)] if record else []), cpu)
        wait_until(lambda: listening(port), 15, "the sink")
        return proc

    def sink_rate(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        cpu = cpu_seconds(proc.pid)
        stats = last_json(self.procs.stop(proc))
        seconds = (stats["last_ns"] - stats["first_ns"]) / 1e9
        stats["rate"] = (stats["received"] - 1) / seconds if seconds > 0 else 0.0
        # CPU over its whole life per second of traffic: an upper bound of how busy it was.
        stats["sink_cpu"] = cpu / seconds if seconds > 0 else 0.0
        return stats

    def drain(self, dispatcher: subprocess.Popen[str], count: int, timeout: float = 180) -> Drain:
        """Wait until the stream is empty; what the dispatcher and Redis used while it drained
        (from the first entries taken on: start-up is not counted)."""
        deadline = time.monotonic() + timeout
        start: tuple[float, float, int, RedisReading] | None = None
        while (left := self.backlog()) > 0:
            if start is None and left < count:
                start = (time.monotonic(), cpu_seconds(dispatcher.pid), left, self.redis_reading())
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dispatcher left {left} of {count} in {timeout:g} s")
            time.sleep(0.1)
        if start is None:
            return Drain(0.0, 0.0, {})
        wall, cpu = time.monotonic() - start[0], cpu_seconds(dispatcher.pid) - start[1]
        return Drain(
            cpu / wall, cpu / start[2] * 1e6, redis_cost(start[3], self.redis_reading(), start[2])
        )

    def delivery_once(self, client: str) -> dict[str, Any]:
        count = self.args.delivery_count
        sink = self.sink()
        try:
            if client == "raw":
                url = f"http://127.0.0.1:{self.sink_port}/hook"
                argv = [PY, "bench/rawclient.py", "--url", url, "--count", str(count)]
                argv += ["--concurrency", str(self.concurrency), "--body-bytes", str(BODY_BYTES)]
                proc = self.procs.start(argv, SUT_CPU)
                with self.profiled(proc, "delivery-raw", 6, after=2):
                    posted = last_json(self.procs.wait(proc, 180))
                cpu = posted["cpu_seconds"] / posted["seconds"]
                cpu_us, redis_figures = posted["cpu_seconds"] / count * 1e6, {}
            else:
                self.clear_queue()
                asyncio.run(preload(self.redis_url, PREFIX, count, self.spread))
                proc = self.hookline("dispatcher", SUT_CPU, HOOKLINE_DISPATCHER_PORT="0")
                try:
                    with self.profiled(proc, "delivery-hookline", 6, after=2):
                        drained = self.drain(proc, count)
                finally:
                    self.procs.stop(proc)
                cpu, cpu_us, redis_figures = drained
        finally:
            stats = self.sink_rate(sink)
        stats["cpu"] = cpu
        stats["cpu_us"] = cpu_us
        if client == "hookline":
            stats["redis"] = redis_figures
        log(f"delivery {client}: {stats['rate']:.0f}/s {stats}")
        if stats["received"] < count:
            raise RuntimeError(f"the sink got {stats['received']} of {count} webhooks")
        return stats

    def delivery(self) -> None:
        runs: dict[str, list[dict[str, Any]]] = {"raw": [], "hookline": []}
        for _ in range(self.args.rounds):
            for client in runs:
                runs[client].append(self.delivery_once(client))
        sink_cpu = max(r["sink_cpu"] for rs in runs.values() for r in rs)
        self.baseline_us["delivery"] = min(r["cpu_us"] for r in runs["raw"])
        emit(
            compare(
                "delivery",
                runs["hookline"],
                runs["raw"],
                ">= 0.7",
                webhooks=self.args.delivery_count,
                concurrency=self.concurrency,
                sink_cpu_max=round(sink_cpu, 2),
            )
        )

    # -- isolation

    def isolation_once(self, hanging: bool) -> dict[str, Any]:
        """One dispatcher drains ``--isolation-count`` webhooks for the healthy sink — with
        as many for the hanging endpoint interleaved when ``hanging`` — and the healthy
        sink's rate is taken from its first to its last receipt."""
        count = self.args.isolation_count
        self.clear_queue()
        sink = self.sink()
        late = self.sink(hang=self.args.hang) if hanging else None
        try:
            endpoints = (ENDPOINT, HANGING) if hanging else (ENDPOINT,)
            asyncio.run(preload(self.redis_url, PREFIX, count * len(endpoints), endpoints))
            proc = self.hookline("dispatcher", SUT_CPU, HOOKLINE_DISPATCHER_PORT="0")
            try:
                with self.profiled(proc, f"isolation-{len(endpoints)}", 6, after=2):
                    cpu, start = cpu_seconds(proc.pid), time.monotonic()
                    wait_until(lambda: self.delivered() >= count, 180, "the healthy deliveries")
                    cpu, wall = cpu_seconds(proc.pid) - cpu, time.monotonic() - start
                hang_delivered = self.delivered(HANGING)
            finally:
                self.procs.stop(proc)
        finally:
            stats = self.sink_rate(sink)
            if late is not None:
                self.procs.stop(late)
        stats["cpu"] = cpu / wall
        stats["dispatcher_cpu_us_per_webhook"] = round(cpu / count * 1e6, 1)
        stats["hanging_delivered"] = hang_delivered
        log(f"isolation {'beside hanging' if hanging else 'alone'}: {stats['rate']:.0f}/s {stats}")
        if stats["received"] < count:
            raise RuntimeError(f"the sink got {stats['received']} of {count} webhooks")
        return stats

    def isolation(self) -> None:
        runs: dict[str, list[dict[str, Any]]] = {"alone": [], "beside": []}
        for _ in range(self.args.rounds):
            runs["alone"].append(self.isolation_once(False))
            runs["beside"].append(self.isolation_once(True))
        emit(
            compare(
                "isolation",
                runs["beside"],
                runs["alone"],
                ">= 0.9",
                webhooks=self.args.isolation_count,
                hang_seconds=self.args.hang,
                cpu_us_alone=min(r["dispatcher_cpu_us_per_webhook"] for r in runs["alone"]),
                cpu_us_beside=min(r["dispatcher_cpu_us_per_webhook"] for r in runs["beside"]),
            )
        )

    # -- end to end

    def e2e(self) -> None:
        self.clear_queue()
        accepted_file, receipts_file = self.work / "accepted.tsv", self.work / "receipts.tsv"
        # Receiver and dispatcher are separate pods in production: here nothing is pinned,
        # so that neither waits for the other's core (Redis stays on the load core).
        sink = self.sink(receipts_file, cpu=None)
        port, dport = free_port(), free_port()
        receiver = self.hookline("receiver", None, HOOKLINE_RECEIVER_PORT=str(port))
        dispatcher = self.hookline("dispatcher", None, HOOKLINE_DISPATCHER_PORT=str(dport))
        try:
            wait_until(lambda: ready(port) and ready(dport), 15, "receiver and dispatcher")
            rate, seconds = self.args.e2e_rate, self.args.e2e_duration
            argv = [PY, "bench/sender.py", "--url", f"http://127.0.0.1:{port}/webhooks/send"]
            argv += ["--key", self.key, "--rate", str(rate), "--duration", str(seconds)]
            # CPU from the sender's start to the last delivery: its start-up (~0.3 s of
            # idle loops) is counted, a few % of the run's CPU at 1,000/s.
            cpu = [cpu_seconds(receiver.pid), cpu_seconds(dispatcher.pid)]
            before = self.redis_reading()
            sender = self.procs.start([*argv, "--out", str(accepted_file)], None)
            sent = last_json(self.procs.wait(sender, seconds + 60))
            wait_until(lambda: self.backlog() == 0, 30, "the last deliveries")
            cpu = [cpu_seconds(receiver.pid) - cpu[0], cpu_seconds(dispatcher.pid) - cpu[1]]
            after = self.redis_reading()
        finally:
            self.procs.stop(dispatcher)
            self.procs.stop(receiver)
            self.procs.stop(sink)
        accepted = dict(ln.split("\t") for ln in accepted_file.read_text().splitlines())
        received: dict[str, int] = {}
        for ln in receipts_file.read_text().splitlines():
            wid, at = ln.split("\t")
            received.setdefault(wid, int(at))  # the first delivery counts
        lat = sorted((received[w] - int(t)) / 1e6 for w, t in accepted.items() if w in received)
        lost = sum(1 for w in accepted if w not in received)
        log(f"e2e: sender {sent}, {len(lat)} latencies, {lost} lost")
        if not lat:
            raise RuntimeError("no webhook reached the sink")
        common = {
            "unit": "ms",
            "offered_per_s": rate,
            "samples": len(lat),
            "lost": lost,
            # How late the sender itself ran: large when the machine was starved for CPU.
            "sender_lag_ms": sent["max_schedule_lag_ms"],
        }
        webhooks = max(len(accepted), 1)
        costs: dict[str, Any] = {
            "cpu_us_per_webhook": round(sum(cpu) / webhooks * 1e6, 1),
            "receiver_cpu_us_per_webhook": round(cpu[0] / webhooks * 1e6, 1),
            "dispatcher_cpu_us_per_webhook": round(cpu[1] / webhooks * 1e6, 1),
        }
        if len(self.baseline_us) == 2:  # the ingest and delivery parts ran
            costs["baseline_cpu_us_per_webhook"] = round(sum(self.baseline_us.values()), 1)
            costs["baseline_is"] = "bare.py + rawclient.py per webhook at saturation, this run"
        costs.update(redis_cost(before, after, webhooks))
        emit({"name": "e2e_p50_ms", "value": percentile(lat, 50), **common})
        emit(
            {
                "name": "e2e_p99_ms",
                "value": percentile(lat, 99),
                "target": "< 50",
                **common,
                **costs,
            }
        )

    # -- cost per webhook (issue 17)

    def cost(self) -> None:
        """Whole-system CPU per webhook at the rates people run and at saturation.

        Receiver, dispatcher and sink run together, 1 KiB webhooks, nothing pinned (as for
        e2e: receiver and dispatcher are separate pods in production; Redis stays on the
        load core). Whole system means receiver + dispatcher (``/proc``) + redis-server
        (``INFO cpu``); the load generator and the sink are not counted.

        * ``idle``: the three with no traffic for :data:`COST_IDLE` s (what every second
          costs whatever the rate).
        * ``at_100``, ``at_1000``: ``bench/sender.py`` offers that rate open loop; CPU over
          a steady window (from :data:`COST_WARM` s after the first delivery, for
          :data:`COST_WINDOW` s) per webhook delivered in it.
        * ``saturated``: wrk (closed loop, 64 connections) posts to the receiver as fast as
          it answers for :data:`COST_SATURATED` s while the dispatcher delivers
          concurrently (it catches up after wrk stops); CPU from wrk's start to the last
          of those webhooks delivered, per webhook. After a 2 s wrk warm-up, drained.
        """
        self.clear_queue()
        receipts = self.work / "cost-receipts.tsv"
        sink = self.sink(receipts, cpu=None)
        port, dport = free_port(), free_port()
        receiver = self.hookline("receiver", None, HOOKLINE_RECEIVER_PORT=str(port))
        dispatcher = self.hookline("dispatcher", None, HOOKLINE_DISPATCHER_PORT=str(dport))
        procs = [receiver, dispatcher]
        figures: dict[str, dict[str, Any]] = {}
        try:
            wait_until(lambda: ready(port) and ready(dport), 15, "receiver and dispatcher")
            time.sleep(2)  # past start-up: imports done, connections open
            idle = self.cost_reading(procs)
            time.sleep(COST_IDLE)
            figures["idle"] = self.cost_idle(idle, self.cost_reading(procs))
            for rate in COST_RATES:
                figures[f"at_{rate}"] = self.cost_at(port, procs, rate)
            figures["saturated"] = self.cost_saturated(port, procs)
        finally:
            self.procs.stop(dispatcher)
            self.procs.stop(receiver)
            self.procs.stop(sink)
        floor = self.cost_floor()
        received: dict[str, int] = {}
        for ln in receipts.read_text().splitlines():
            wid, at = ln.split("\t")
            received.setdefault(wid, int(at))
        saturated = figures["saturated"]["value"]
        for name in (*(f"at_{rate}" for rate in COST_RATES), "saturated"):
            fig = figures[name]
            accepted = fig.pop("accepted", None)
            if accepted is not None:  # latency of every webhook of the phase
                sent = [ln.split("\t") for ln in accepted.read_text().splitlines()]
                lat = sorted((received[w] - int(t)) / 1e6 for w, t in sent if w in received)
                fig["lost"] = sum(1 for w, _ in sent if w not in received)
                if lat:
                    fig["p50_ms"], fig["p99_ms"] = percentile(lat, 50), percentile(lat, 99)
            emit(
                {
                    "name": f"cpu_us_per_webhook_{name}",
                    "value": fig.pop("value"),
                    "unit": "CPU us/webhook",
                    "target": COST_TARGETS.get(name),
                    "ratio_to_saturated": round(figures[name]["value_raw"] / saturated, 2)
                    if name != "saturated"
                    else 1.0,
                    "floor_ratio_to_saturated": round(floor[name] / floor["saturated"], 2),
                    **{k: v for k, v in fig.items() if k != "value_raw"},
                    **({"idle": figures["idle"]} if name == f"at_{COST_RATES[0]}" else {}),
                }
            )
        for name, value in floor.items():
            emit(
                {
                    "name": f"relay_cpu_us_per_webhook_{name}",
                    "value": round(value, 1),
                    "unit": "CPU us/webhook",
                    "target": None,
                    "why_no_target": "the floor the cost_per_webhook lines are read against: "
                    "bench/bare.py --forward, a bare aiohttp relay (one process, no queue)",
                    "ratio_to_saturated": round(value / floor["saturated"], 2),
                }
            )

    def cost_floor(self) -> dict[str, float]:
        """The cost phases for a bare relay (``bench/bare.py --forward``: receive, post on to
        the sink, answer): its CPU µs per webhook at each rate and saturated. Whatever a
        relay does per event, it pays at least these wake-ups; their ratio to saturation
        is what the whole system's ``ratio_to_saturated`` is read against."""
        sink = self.sink(cpu=None)
        port = free_port()
        argv = [PY, "bench/bare.py", "--port", str(port)]
        relay = self.procs.start([*argv, "--forward", f"http://127.0.0.1:{self.sink_port}/h"], None)
        floor: dict[str, float] = {}
        try:
            wait_until(lambda: listening(port), 15, "the bare relay")
            for rate in COST_RATES:
                floor[f"at_{rate}"] = self.floor_at(port, relay, rate)
            self.wrk(port, 2)  # warm-up, as for hookline
            cpu = run_seconds(relay.pid)
            stats = self.wrk(port, COST_SATURATED)
            floor["saturated"] = (run_seconds(relay.pid) - cpu) / stats["requests"] * 1e6
        finally:
            self.procs.stop(relay)
            self.procs.stop(sink)
        log(f"cost floor (bare relay), CPU us per webhook: {floor}")
        return floor

    def floor_at(self, port: int, relay: subprocess.Popen[str], rate: int) -> float:
        window = COST_WINDOW[rate]
        accepted = self.work / f"floor-accepted-{rate}.tsv"
        argv = [PY, "bench/sender.py", "--url", f"http://127.0.0.1:{port}/webhooks/send"]
        argv += ["--key", "-", "--rate", str(rate), "--out", str(accepted)]
        sender = self.procs.start([*argv, "--duration", str(COST_WARM + window + 3)], None)
        time.sleep(COST_WARM + 1)  # the sender's start-up, then warm
        start, cpu = time.monotonic_ns(), run_seconds(relay.pid)
        time.sleep(window)
        end, cpu = time.monotonic_ns(), run_seconds(relay.pid) - cpu
        self.procs.wait(sender, COST_WARM + window + 60)
        at = (int(ln.split("\t")[1]) for ln in accepted.read_text().splitlines())
        return cpu / max(sum(start <= t < end for t in at), 1) * 1e6

    def cost_reading(self, procs: list[subprocess.Popen[str]]) -> CostReading:
        cpu = [run_seconds(proc.pid) for proc in procs]
        return CostReading(time.monotonic(), cpu, self.delivered(), self.redis_reading())

    def cost_between(self, a: CostReading, b: CostReading, webhooks: int) -> dict[str, Any]:
        per = max(webhooks, 1)
        receiver, dispatcher = ((y - x) / per * 1e6 for x, y in zip(a.cpu, b.cpu, strict=True))
        redis_figures = redis_cost(a.redis, b.redis, per)
        total = receiver + dispatcher + (b.redis.cpu - a.redis.cpu) / per * 1e6
        return {
            "value": round(total, 1),
            "value_raw": total,
            "receiver_cpu_us_per_webhook": round(receiver, 1),
            "dispatcher_cpu_us_per_webhook": round(dispatcher, 1),
            **redis_figures,
            "achieved_per_s": round(webhooks / (b.at - a.at), 1),
            "webhooks": webhooks,
            "window_s": round(b.at - a.at, 1),
        }

    def cost_idle(self, a: CostReading, b: CostReading) -> dict[str, Any]:
        """CPU µs per second (and Redis calls per second) of the three with no traffic."""
        seconds = b.at - a.at
        receiver, dispatcher = ((y - x) / seconds * 1e6 for x, y in zip(a.cpu, b.cpu, strict=True))
        calls = (b.redis.calls - a.redis.calls) - (b.redis.own - a.redis.own)
        return {
            "unit": "CPU us/s, calls/s",
            "receiver": round(receiver),
            "dispatcher": round(dispatcher),
            "redis": round((b.redis.cpu - a.redis.cpu) / seconds * 1e6),
            "redis_calls": {c: round(n / seconds, 1) for c, n in calls.most_common()},
        }

    def cost_at(self, port: int, procs: list[subprocess.Popen[str]], rate: int) -> dict[str, Any]:
        window = COST_WINDOW[rate]
        accepted = self.work / f"cost-accepted-{rate}.tsv"
        argv = [PY, "bench/sender.py", "--url", f"http://127.0.0.1:{port}/webhooks/send"]
        argv += ["--key", self.key, "--rate", str(rate), "--out", str(accepted)]
        argv += ["--duration", str(COST_WARM + window + 3)]  # sender start-up, margin after
        first = self.delivered()
        sender = self.procs.start(argv, None)
        wait_until(lambda: self.delivered() > first, 15, f"the first delivery at {rate}/s")
        time.sleep(COST_WARM)
        a = self.cost_reading(procs)
        receiver, dispatcher = procs
        with (
            self.profiled(receiver, f"cost-{rate}-receiver", window),
            self.profiled(dispatcher, f"cost-{rate}-dispatcher", window),
        ):
            time.sleep(window)
        b = self.cost_reading(procs)
        sent = last_json(self.procs.wait(sender, COST_WARM + window + 60))
        wait_until(lambda: self.backlog() == 0, 30, "the last deliveries")
        fig = self.cost_between(a, b, b.delivered - a.delivered)
        fig.update(offered_per_s=rate, sender_lag_ms=sent["max_schedule_lag_ms"], accepted=accepted)
        log(f"cost at {rate}/s: {fig}")
        return fig

    def cost_saturated(self, port: int, procs: list[subprocess.Popen[str]]) -> dict[str, Any]:
        self.wrk(port, 2)  # warm-up: wrk's connections, the receiver's batches
        wait_until(lambda: self.backlog() == 0, 120, "the warm-up's deliveries")
        a = self.cost_reading(procs)
        stats = self.wrk(port, COST_SATURATED)
        wait_until(lambda: self.backlog() == 0, 180, "the saturated run's deliveries")
        b = self.cost_reading(procs)
        webhooks = b.delivered - a.delivered
        fig = self.cost_between(a, b, webhooks)
        fig.update(
            offered_per_s="closed loop, 64 connections",
            accepted_per_s=round(stats["rate"]),
            errors=stats["errors"] + stats["non2xx"],
        )
        log(f"cost saturated: {fig}")
        if webhooks < stats["requests"] - stats["errors"] - stats["non2xx"]:
            raise RuntimeError(f"{webhooks} delivered of {stats['requests']} accepted")
        return fig

    # -- fan-out (issue 15)

    async def register_fanout(self) -> None:
        """A source per width in :data:`FANOUT_WIDTHS`, each with that many subscribers
        (all taking every type, all posting to the sink); registered for this part only,
        so that the other figures run with the two endpoints they always had."""
        config = Config()
        spec = {
            "url": f"http://127.0.0.1:{self.sink_port}/hook",
            "forwardHeaders": ["x-event-type"],
        }
        store = Store.connect(Config(redis_url=self.redis_url, prefix=PREFIX))
        try:
            for width in FANOUT_WIDTHS:
                key = self.source_keys[width]
                await store.registry.put_source(source_from_spec(fan_source(width), {}, [key]))
                for name in fan_endpoints(width):
                    sub = {**spec, "source": f"fan-{width}"}
                    secrets = [SigningSecret(new_secret())]
                    endpoint = endpoint_from_spec(name, sub, [new_key()], secrets, config)
                    await store.registry.put(endpoint)
        finally:
            await store.aclose()

    def clear_fanout(self) -> None:
        """The queue, the shared bodies and the figures the fan-out runs leave (DEL, not
        UNLINK: the memory figure reads used_memory right after)."""
        self.clear_queue()
        keys = [f"{PREFIX}:sstats:{fan_source(w)}" for w in FANOUT_WIDTHS]
        for width in FANOUT_WIDTHS:
            for ep in fan_endpoints(width):
                keys += (f"{PREFIX}:stats:{ep}", f"{PREFIX}:attempts:{ep}")
        keys += self.redis.scan_iter(match=f"{PREFIX}:body:*", count=1000)
        for start in range(0, len(keys), 1000):
            self.redis.delete(*keys[start : start + 1000])

    @contextlib.contextmanager
    def emptying(self) -> Iterator[None]:
        """Unlink the stream every half second: with no dispatcher running, a 10 s run at
        width 100 would otherwise keep every delivery it queued (hundreds of MB)."""
        stop = threading.Event()

        def loop() -> None:
            client = redis.Redis.from_url(self.redis_url)
            try:
                while not stop.wait(0.5):
                    client.unlink(self.stream)
            finally:
                client.close()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def redis_cpu(self) -> float:
        assert self.redis_proc is not None
        return cpu_seconds(self.redis_proc.pid)

    def fanout_ingest_once(self, width: int | None) -> dict[str, Any]:
        """One receiver under wrk with the source of ``width`` subscribers' key, or with
        the endpoint's own key (``width`` None: the baseline); its CPU use measured."""
        key = self.key if width is None else self.source_keys[width]
        event_type = None if width is None else EVENT_TYPE
        port = free_port()
        proc = self.hookline("receiver", SUT_CPU, HOOKLINE_RECEIVER_PORT=str(port))
        wait_until(lambda: ready(port), 15, "the receiver")
        try:
            with self.emptying():
                self.wrk(port, 2, key, event_type)  # warm-up
                cpu, redis_cpu = cpu_seconds(proc.pid), self.redis_cpu()
                stats = self.wrk(port, self.args.duration, key, event_type)
                seconds = stats["duration_us"] / 1e6
                stats["cpu"] = (cpu_seconds(proc.pid) - cpu) / seconds
                stats["redis_cpu"] = (self.redis_cpu() - redis_cpu) / seconds
        finally:
            self.procs.stop(proc)
        self.clear_fanout()
        stats["per_core"] = stats["rate"] / stats["cpu"] if stats["cpu"] > 0 else 0.0
        log(f"fanout ingest width {width or 'direct'}: {stats['rate']:.0f}/s {stats}")
        return stats

    def fanout_ingest(self) -> None:
        runs: dict[int | None, list[dict[str, Any]]] = {None: []}
        runs.update((width, []) for width in FANOUT_WIDTHS)
        for _ in range(self.args.rounds):
            for width in runs:
                runs[width].append(self.fanout_ingest_once(width))
        base = max(r["per_core"] for r in runs[None])
        for width in FANOUT_WIDTHS:
            best = max(runs[width], key=lambda r: r["per_core"])
            events = best["per_core"]
            emit(
                {
                    "name": "fanout_ingest",
                    "width": width,
                    "value": round(events),
                    "unit": "events/s per receiver core",
                    "deliveries_per_core": round(events * width),
                    "baseline": round(base),
                    "baseline_is": "webhooks/s per receiver core with an endpoint's own key",
                    "ratio": round(events * width / base, 3),  # deliveries vs. direct webhooks
                    "target": FANOUT_INGEST_TARGETS[width],
                    "runs": [round(r["rate"]) for r in runs[width]],
                    "cpu": [round(r["cpu"], 2) for r in runs[width]],
                    "redis_cpu": [round(r["redis_cpu"], 2) for r in runs[width]],
                    "baseline_runs": [round(r["rate"]) for r in runs[None]],
                    "baseline_cpu": [round(r["cpu"], 2) for r in runs[None]],
                    "errors": sum(r["errors"] + r["non2xx"] for r in runs[width]),
                }
            )

    async def _preload_fanout(self, events: int, width: int) -> None:
        """Fan ``events`` events out to the ``width`` subscribers of its source with
        ``Queue.fan_out``, as the receiver does: one shared body per event."""
        store = Store.connect(Config(redis_url=self.redis_url, prefix=PREFIX))
        queue = store.queue
        payload = body()
        source = fan_source(width)
        endpoints = fan_endpoints(width)
        headers = {
            "content-type": "application/json",
            "x-event-type": "bench",
            "x-wh-event-type": EVENT_TYPE,
        }

        def deliveries(wid: str) -> list[tuple[str, Webhook]]:
            created = int(time.time() * 1000)
            return [
                (
                    "default",
                    Webhook(
                        id=wid,
                        endpoint=ep,
                        headers=headers,
                        size=len(payload),
                        created_ms=created,
                        source=source,
                        shared=True,
                    ),
                )
                for ep in endpoints
            ]

        try:
            for start in range(0, events, 500):
                ids = [new_id() for _ in range(start, min(start + 500, events))]
                await asyncio.gather(
                    *(queue.fan_out(source, wid, deliveries(wid), payload) for wid in ids)
                )
        finally:
            await store.aclose()

    def fanout_delivery_once(self) -> dict[str, Any]:
        width = FANOUT_DELIVERY_WIDTH
        events = self.args.delivery_count // width
        count = events * width
        self.clear_fanout()
        sink = self.sink()
        try:
            asyncio.run(self._preload_fanout(events, width))
            proc = self.hookline("dispatcher", SUT_CPU, HOOKLINE_DISPATCHER_PORT="0")
            try:
                with self.profiled(proc, "delivery-fanout", 6, after=2):
                    cpu = self.drain(proc, count).cpu
            finally:
                self.procs.stop(proc)
        finally:
            stats = self.sink_rate(sink)
        stats["cpu"] = cpu
        stats["per_core"] = stats["rate"] / cpu if cpu > 0 else 0.0
        # Every shared body goes with the last of its deliveries.
        stats["bodies_left"] = sum(1 for _ in self.redis.scan_iter(match=f"{PREFIX}:body:*"))
        log(f"fanout delivery width {width}: {stats['rate']:.0f}/s {stats}")
        if stats["received"] < count:
            raise RuntimeError(f"the sink got {stats['received']} of {count} deliveries")
        self.clear_fanout()
        return stats

    def fanout_delivery(self) -> None:
        """Alternates the ``delivery`` figure's own width-1 drain (one endpoint, 30,000
        webhooks) with the width-10 drain (3,000 events, 30,000 deliveries)."""
        runs: dict[str, list[dict[str, Any]]] = {"width1": [], "fanout": []}
        for _ in range(self.args.rounds):
            runs["width1"].append(self.delivery_once("hookline"))
            runs["fanout"].append(self.fanout_delivery_once())
        for r in runs["width1"]:
            r["per_core"] = r["rate"] / r["cpu"] if r["cpu"] > 0 else 0.0
        best = max(r["per_core"] for r in runs["fanout"])
        base = max(r["per_core"] for r in runs["width1"])
        emit(
            {
                "name": "fanout_delivery",
                "width": FANOUT_DELIVERY_WIDTH,
                "value": round(best),
                "unit": "deliveries/s per dispatcher core",
                "baseline": round(base),
                "baseline_is": "the width-1 delivery drain of this run, webhooks/s per core",
                "ratio": round(best / base, 3),
                "target": FANOUT_DELIVERY_TARGET,
                "runs": [round(r["rate"]) for r in runs["fanout"]],
                "cpu": [round(r["cpu"], 2) for r in runs["fanout"]],
                "baseline_runs": [round(r["rate"]) for r in runs["width1"]],
                "baseline_cpu": [round(r["cpu"], 2) for r in runs["width1"]],
                "deliveries": runs["fanout"][0]["received"],
                "bodies_left": max(r["bodies_left"] for r in runs["fanout"]),
            }
        )

    def used_memory(self) -> int:
        info: dict[str, Any] = self.redis.info("memory")  # type: ignore[assignment]
        return int(info["used_memory"])

    def fanout_memory_once(self, width: int) -> dict[str, Any]:
        """Redis's used_memory before and after 2 s of wrk with the source of ``width``
        subscribers' key, no dispatcher running: what the events accepted meanwhile hold."""
        port = free_port()
        proc = self.hookline("receiver", SUT_CPU, HOOKLINE_RECEIVER_PORT=str(port))
        wait_until(lambda: ready(port), 15, "the receiver")
        key, stats_key = self.source_keys[width], f"{PREFIX}:sstats:{fan_source(width)}"
        try:
            self.wrk(port, 1, key, EVENT_TYPE)  # warm-up: connections, the script cache
            self.clear_fanout()
            time.sleep(0.5)
            before = self.used_memory()
            stats = self.wrk(port, 2, key, EVENT_TYPE)
            time.sleep(0.5)  # what was in flight when wrk stopped has been answered
            events = int(self.redis.hget(stats_key, "events") or 0)  # type: ignore[arg-type]
            grown = self.used_memory() - before
        finally:
            self.procs.stop(proc)
        self.clear_fanout()
        if not events or stats["errors"] or stats["non2xx"]:
            raise RuntimeError(f"memory run at width {width}: {events} events, {stats}")
        log(f"fanout memory width {width}: {grown} bytes for {events} events")
        return {"events": events, "bytes": grown, "per_event": grown / events}

    def fanout_memory(self) -> None:
        one = self.fanout_memory_once(1)
        wide = self.fanout_memory_once(MEMORY_WIDTH)
        emit(
            {
                "name": "fanout_redis_bytes_per_event",
                "width": MEMORY_WIDTH,
                "value": round(wide["per_event"]),
                "unit": "bytes/event",
                "baseline": round(one["per_event"]),
                "baseline_is": "width 1, same run",
                "ratio": round(wide["per_event"] / one["per_event"], 2),
                "target": MEMORY_TARGET,
                "bytes_per_delivery": round(wide["per_event"] / MEMORY_WIDTH),
                # each entry carrying its own copy of the body instead
                "unshared_estimate": round(one["per_event"] * MEMORY_WIDTH),
                "body_bytes": BODY_BYTES,
                "events": [one["events"], wide["events"]],
            }
        )

    def fanout(self) -> None:
        asyncio.run(self.register_fanout())
        self.fanout_ingest()
        self.fanout_delivery()
        self.fanout_memory()

    # -- the others

    def extra_scripts(self) -> None:
        for script in EXTRA_SCRIPTS:
            if not (ROOT / script).exists():
                continue
            log(f"running {script}")
            try:
                done = subprocess.run(
                    [PY, script], cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=600
                )
            except subprocess.TimeoutExpired:
                log(f"{script} did not finish in 600 s")
                continue
            for line in done.stdout.splitlines():
                if line.startswith("{"):
                    print(line, flush=True)
            if done.returncode:
                log(f"{script} exited with {done.returncode}")


def compare(
    name: str, runs: list[dict[str, Any]], baseline: list[dict[str, Any]], target: str, **extra: Any
) -> dict[str, Any]:
    """One figure against its baseline, best run of each. ``cpu`` is the CPU share the process
    under test got (1.0: all of its core); ``ratio_per_cpu`` compares webhooks per CPU-second,
    which says what the ratio would be on an idle machine when other work stole CPU.
    Runs that measured them add the machine-independent figures: the process's CPU µs per
    webhook (``cpu_us``, the lowest run: other work only adds to it) and Redis's (``redis``,
    the run with the least Redis CPU, its calls with it)."""
    best, base = max(r["rate"] for r in runs), max(r["rate"] for r in baseline)
    efficiency = max(r["rate"] / r["cpu"] for r in runs if r["cpu"] > 0)
    base_efficiency = max(r["rate"] / r["cpu"] for r in baseline if r["cpu"] > 0)
    costs: dict[str, Any] = {}
    if all("cpu_us" in r for r in runs + baseline):
        costs["cpu_us_per_webhook"] = round(min(r["cpu_us"] for r in runs), 1)
        costs["baseline_cpu_us_per_webhook"] = round(min(r["cpu_us"] for r in baseline), 1)
    if all("redis" in r for r in runs):
        costs.update(min((r["redis"] for r in runs), key=lambda c: c["redis_cpu_us_per_webhook"]))
    return {
        "name": name,
        "value": round(best),
        "unit": "webhooks/s",
        "baseline": round(base),
        "ratio": round(best / base, 3),
        "target": target,
        "ratio_per_cpu": round(efficiency / base_efficiency, 3),
        "runs": [round(r["rate"]) for r in runs],
        "baseline_runs": [round(r["rate"]) for r in baseline],
        "cpu": [round(r["cpu"], 2) for r in runs],
        "baseline_cpu": [round(r["cpu"], 2) for r in baseline],
        **costs,
        **extra,
    }


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return round(sorted_values[rank - 1], 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per ingest run")
    p.add_argument("--rounds", type=int, default=3, help="baseline/hookline pairs per figure")
    p.add_argument("--delivery-count", type=int, default=30_000, help="webhooks per drain")
    p.add_argument("--isolation-count", type=int, default=30_000, help="healthy webhooks per drain")
    p.add_argument("--hang", type=float, default=10.0, help="the hanging endpoint's delay, s")
    p.add_argument("--e2e-rate", type=float, default=1000.0, help="offered webhooks/s")
    p.add_argument("--e2e-duration", type=float, default=10.0)
    p.add_argument("--aof", action="store_true", help="Redis with AOF, fsync every second")
    p.add_argument(
        "--only",
        nargs="*",
        choices=["ingest", "delivery", "e2e", "isolation", "cost", "fanout", "extra"],
        default=["ingest", "delivery", "e2e", "isolation", "cost", "fanout", "extra"],
        help="which parts to run (extra: the EXTRA_SCRIPTS)",
    )
    p.add_argument("--profile", metavar="DIR", help="py-spy the process under test into DIR")
    p.add_argument("--keep", metavar="DIR", help="keep the working files (latencies) in DIR")
    args = p.parse_args()
    # A SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C, stopping every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("wrk") is None and {"ingest", "cost", "fanout"} & set(args.only):
        log("wrk is not installed: apt-get install -y wrk (make bench does it)")
        return 2
    if not PINNED:
        log("fewer than 2 CPUs: nothing is pinned, ratios are not comparable")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hookline-bench-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(args, work)
        try:
            bench.start_redis()
            asyncio.run(bench.register())
            for name in ("ingest", "delivery", "e2e", "isolation", "cost", "fanout"):
                if name in args.only:
                    getattr(bench, name)()
        finally:
            bench.procs.stop_all()
    if "extra" in args.only:
        bench.extra_scripts()
    emit(
        {
            "name": "load",
            "value": round(os.getloadavg()[0], 2),
            "unit": "loadavg_1m",
            "at_start": round(load_start, 2),
            "cpus": os.cpu_count(),
            "redis": "aof everysec" if args.aof else "no persistence",
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
