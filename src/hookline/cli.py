"""The ``hookline`` command: one subcommand per component, plus the operator's tools.

    hookline receiver | dispatcher | operator   run a component (configured by HOOKLINE_*)
    hookline dev [--endpoints DIR]              the local stack: redis, receiver, dispatcher, sink
    hookline sink [--port N]                    a demo endpoint that checks signatures
    hookline send --key KEY [--data ...]        post a test webhook
    hookline dlq list | show ID | replay ...    the dead letter
    hookline endpoints                          endpoints and their delivery figures

This is the entry point, so it is the one place that builds the real
dependencies (Redis client, body store, HTTP session) and hands them to the
components.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis

from hookline import config as config_mod
from hookline import outbound, telemetry
from hookline.bodies import BodyStore, FilesystemBodyStore
from hookline.config import Config
from hookline.errors import HooklineError
from hookline.metrics import Metrics
from hookline.queue import DeadLetter, Queue
from hookline.registry import Registry, RegistryCache

log = logging.getLogger("hookline")


# -- wiring


def redis_client(config: Config) -> aioredis.Redis:
    return aioredis.from_url(
        config.redis_url,
        socket_connect_timeout=config.redis_timeout,
        # Above the 1 s XREADGROUP block, so a blocking read is not taken for a dead link.
        socket_timeout=config.redis_timeout + 1.0,
        health_check_interval=15,
    )


def body_store(config: Config) -> BodyStore:
    if config.body_store == "gcs":
        from hookline.gcs import GcsBodyStore

        return GcsBodyStore(
            config.gcs_bucket,
            chunk_size=config.gcs_chunk_size,
            threads=config.gcs_threads,
            timeout=config.gcs_timeout,
        )
    return FilesystemBodyStore(config.body_dir)


def client_session(config: Config) -> aiohttp.ClientSession:
    """The dispatcher's HTTP client: connects only where :mod:`hookline.outbound` permits."""
    connector = outbound.connector(
        config,
        limit=config.concurrency,
        limit_per_host=0,
        ttl_dns_cache=10,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )


async def receiver_main(config: Config, stop: asyncio.Event) -> None:
    from hookline.receiver import create_app, serve

    redis = redis_client(config)
    bodies = body_store(config)
    registry = Registry(redis, config.prefix)
    queue = Queue.from_config(redis, config)
    tracing = telemetry.setup(config, telemetry.RECEIVER)
    cache = RegistryCache(registry, config.registry_refresh)
    app = create_app(config, cache, queue, bodies, Metrics(), tracing)
    try:
        await serve(app, config.receiver_host, config.receiver_port, stop)
    finally:
        await tracing.close()
        await queue.aclose()
        await bodies.close()
        await redis.aclose()


async def dispatcher_main(config: Config, stop: asyncio.Event) -> None:
    from hookline.dispatcher import Dispatcher
    from hookline.http import serve_probes

    redis = redis_client(config)
    bodies = body_store(config)
    registry = Registry(redis, config.prefix)
    queue = Queue.from_config(redis, config)
    cache = RegistryCache(registry, config.registry_refresh)
    metrics = Metrics()
    tracing = telemetry.setup(config, telemetry.DISPATCHER)
    session = client_session(config)
    dispatcher = Dispatcher(
        config, cache, registry, queue, bodies, metrics, session, tracing=tracing
    )

    async def ready() -> str | None:
        if not cache.loaded.is_set():
            return "endpoint registry not loaded"
        try:
            await redis.ping()  # type: ignore[misc]
        except Exception as exc:  # any failure to answer means not ready
            return f"redis: {exc}"
        return None

    tasks = [asyncio.create_task(dispatcher.run(stop))]
    if config.dispatcher_port:
        tasks.append(
            asyncio.create_task(
                serve_probes(metrics, ready, config.dispatcher_host, config.dispatcher_port, stop)
            )
        )
    try:
        await asyncio.gather(*tasks)
    finally:
        await session.close()
        await tracing.close()
        await queue.aclose()
        await bodies.close()
        await redis.aclose()


# -- the local stack


async def _redis_answers(url: str) -> bool:
    client = aioredis.from_url(url, socket_connect_timeout=0.5)
    try:
        await client.ping()  # type: ignore[misc]
        return True
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


def start_redis(url: str, folder: Path) -> subprocess.Popen[bytes]:
    """A private redis-server with AOF on, for the local stack."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise HooklineError("redis-server is not installed (make dev installs it: apt-get)")
    parts = urlsplit(url)
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            exe,
            "--port",
            str(parts.port or 6379),
            "--bind",
            parts.hostname or "127.0.0.1",
            "--dir",
            str(folder),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C stops the stack first, then we stop redis
    )


def dev_config(config: Config) -> Config:
    """The local stack's settings: its endpoints are on loopback, so loopback is allowed
    unless ``HOOKLINE_ALLOW_CIDRS`` says otherwise."""
    if config.allow_cidrs:
        return config
    return replace(config, allow_cidrs=outbound.LOOPBACK)


async def dev_main(config: Config, stop: asyncio.Event, endpoints_dir: str, sink_port: int) -> None:
    from hookline.http import serve
    from hookline.manifests import load_endpoints
    from hookline.sink import create_sink

    config = dev_config(config)
    redis_proc = None
    if not await _redis_answers(config.redis_url):
        redis_proc = start_redis(config.redis_url, Path("var/redis"))
        for _ in range(50):
            if await _redis_answers(config.redis_url):
                break
            await asyncio.sleep(0.1)
        else:
            raise HooklineError(f"redis-server did not start at {config.redis_url}")
        print(f"started redis-server at {config.redis_url} (data in var/redis)")
    redis = redis_client(config)
    registry = Registry(redis, config.prefix)
    loaded = load_endpoints(endpoints_dir, config)
    for item in loaded:
        await registry.put(item.endpoint)
    sink_secrets = {urlsplit(i.endpoint.url).path: i.signing_secret for i in loaded}
    tasks = [
        asyncio.create_task(serve(create_sink(sink_secrets), "127.0.0.1", sink_port, stop)),
        asyncio.create_task(receiver_main(config, stop)),
        asyncio.create_task(dispatcher_main(config, stop)),
    ]
    await asyncio.sleep(0.5)
    base = f"http://127.0.0.1:{config.receiver_port}"
    print(
        f"\nhookline dev: receiver {base}, dispatcher probes :{config.dispatcher_port}, "
        f"sink :{sink_port}, {len(loaded)} endpoint(s) from {endpoints_dir}"
    )
    if telemetry.enabled(config, os.environ):
        print(f"tracing on: OTLP to {telemetry.describe_export(os.environ)} (docs/tracing.md)")
    for item in loaded:
        print(f"  {item.endpoint.id} -> {item.endpoint.url}   key: {item.key}")
    if loaded:
        print(
            "\nSend one:\n  curl -i -X POST " + base + "/webhooks/send "
            f"-H 'X-WH-Endpoint-Key: {loaded[0].key}' -H 'Content-Type: application/json' "
            '-d \'{"type":"demo","hello":"world"}\'\n',
            flush=True,
        )
    try:
        await asyncio.gather(*tasks)
    finally:
        await redis.aclose()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)


async def sink_main(config: Config, stop: asyncio.Event, port: int) -> None:
    from hookline.http import serve
    from hookline.sink import create_sink

    secret = config.sink_secret or None
    print(f"hookline sink :{port}, signatures {'checked' if secret else 'not checked'}")
    await serve(create_sink({}, fallback=secret), "0.0.0.0", port, stop)


# -- tools


async def send_main(args: argparse.Namespace) -> int:
    headers = {"X-WH-Endpoint-Key": args.key, "Content-Type": args.content_type}
    for h in args.header or []:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    data = await asyncio.to_thread(Path(args.file).read_bytes) if args.file else args.data.encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            args.url.rstrip("/") + "/webhooks/send", data=data, headers=headers
        ) as resp:
            print(resp.status, await resp.text())
            return 0 if resp.status < 300 else 1


async def dlq_main(config: Config, args: argparse.Namespace) -> int:
    redis = redis_client(config)
    queue = Queue.from_config(redis, config)
    registry = Registry(redis, config.prefix)
    try:
        since = time.time() - _duration(args.since) if getattr(args, "since", None) else None
        if args.action == "list":
            for letter in await queue.dead_letters(since, args.endpoint, args.limit):
                wh = letter.webhook
                print(
                    f"{letter.id}  {wh.id}  {wh.endpoint}  attempts={wh.attempt}  "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(letter.at))}  "
                    f"{letter.reason}"
                )
            return 0
        if args.action == "show":
            shown = await queue.dead_letter(args.id)
            if shown is None:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return 1
            wh = shown.webhook
            print(
                json.dumps(
                    {
                        "dead_letter_id": shown.id,
                        "id": wh.id,
                        "endpoint": wh.endpoint,
                        "reason": shown.reason,
                        "pool": shown.pool,
                        "attempts": wh.attempt,
                        "dead_at": shown.at,
                        "created_at": wh.created_ms / 1000,
                        "headers": wh.headers,
                        "size": wh.size,
                        "body_ref": wh.body_ref,
                        "body": wh.body.decode("utf-8", "replace") if wh.body_ref is None else None,
                    },
                    indent=2,
                )
            )
            return 0
        # replay
        letters: list[DeadLetter] = []
        if args.ids:
            for ident in args.ids:
                found = await queue.dead_letter(ident)
                if found is None:
                    print(f"no dead letter {ident}", file=sys.stderr)
                    return 1
                letters.append(found)
        else:
            letters = await queue.dead_letters(since, args.endpoint, 1_000_000)
        replayed = 0
        for letter in letters:
            endpoint = await registry.get(letter.webhook.endpoint)
            pool = endpoint.pool if endpoint else letter.pool
            replayed += await queue.replay(letter, pool)
        print(f"replayed {replayed} webhook(s)")
        return 0
    finally:
        await queue.aclose()
        await redis.aclose()


def _when(value: str | float | None) -> str:
    if not value:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(value) / 1000))


async def endpoints_main(config: Config, attempts_of: str | None = None) -> int:
    """The endpoints with their figures; with ``attempts_of``, that endpoint's latest attempts."""
    redis = redis_client(config)
    registry = Registry(redis, config.prefix)
    queue = Queue.from_config(redis, config)
    try:
        if attempts_of is not None:
            for a in await queue.attempts(attempts_of):
                print(
                    f"{_when(a['at'] * 1000)}  status={a.get('status') or '-'}  "
                    f"latency={a.get('latency', 0) * 1000:.0f}ms  {a.get('reason', 'delivered')}"
                )
            return 0
        disabled = await registry.disabled()
        header = (
            "ENDPOINT",
            "POOL",
            "DELIVERED",
            "FAILED",
            "DEAD",
            "DUPLICATES",
            "STATE",
            "LAST SUCCESS",
            "LAST FAILURE",
            "URL",
        )
        rows = [header]
        now_ms = time.time() * 1000
        for ep in sorted((await registry.all()).values(), key=lambda e: e.id):
            s = await queue.stats(ep.id)
            if ep.id in disabled:
                state = "disabled: " + str(disabled[ep.id].get("reason", ""))
            elif ep.paused:
                state = "paused"
            elif (
                int(s.get("streak", 0)) >= config.circuit_threshold
                and float(s.get("open_until", 0)) > now_ms
            ):
                state = "circuit-open"
            else:
                state = "active"
            last_failure = "-"
            if s.get("last_failure"):
                f = json.loads(s["last_failure"])
                last_failure = f"{_when(f['at'] * 1000)} {f.get('reason', '')}"
            rows.append(
                (
                    ep.id,
                    ep.pool,
                    s.get("delivered", "0"),
                    s.get("failed", "0"),
                    s.get("dead", "0"),
                    s.get("duplicates", "0"),
                    state,
                    _when(s.get("last_success")),
                    last_failure,
                    ep.url,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        return 0
    finally:
        await redis.aclose()


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


# -- main


def _run(factory: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> Any:
    """Run a component under uvloop (when installed) until SIGTERM or SIGINT."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await factory(stop)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hookline", description="A Kubernetes-native webhook relay.")
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("receiver", help="run the ingest service")
    sub.add_parser("dispatcher", help="run a delivery worker for HOOKLINE_POOL")
    sub.add_parser("operator", help="run the Kubernetes operator")
    dev = sub.add_parser("dev", help="run the local stack")
    dev.add_argument("--endpoints", default="examples/endpoints")
    dev.add_argument("--sink-port", type=int, default=9000)
    dev.add_argument(
        "--tracing",
        action="store_true",
        help="trace every webhook (OTLP to OTEL_EXPORTER_OTLP_ENDPOINT, default localhost:4318)",
    )
    sink = sub.add_parser(
        "sink", help="a demo endpoint that prints each webhook, its signature checked"
    )
    sink.add_argument("--port", type=int, default=8080)
    send = sub.add_parser("send", help="post a test webhook")
    send.add_argument("--url", default="http://127.0.0.1:8080")
    send.add_argument("--key", required=True)
    send.add_argument("--data", default='{"type":"test","hello":"world"}')
    send.add_argument("--file")
    send.add_argument("--content-type", default="application/json")
    send.add_argument("--header", action="append", help="NAME: VALUE, repeatable")
    send.add_argument("--idempotency-key")
    dlq = sub.add_parser("dlq", help="list, show and replay dead letters")
    dsub = dlq.add_subparsers(dest="action", required=True)
    lst = dsub.add_parser("list")
    lst.add_argument("--endpoint")
    lst.add_argument("--since", help="e.g. 30m, 2h, 7d")
    lst.add_argument("--limit", type=int, default=100)
    show = dsub.add_parser("show")
    show.add_argument("id", help="a dead-letter id or a webhook id")
    rep = dsub.add_parser("replay")
    rep.add_argument("ids", nargs="*")
    rep.add_argument("--endpoint")
    rep.add_argument("--since")
    eps = sub.add_parser("endpoints", help="endpoints and their delivery figures")
    eps.add_argument("--attempts", metavar="ENDPOINT", help="the latest attempts of one endpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_mod.load()
        if args.command == "receiver":
            _run(lambda stop: receiver_main(config, stop))
        elif args.command == "dispatcher":
            _run(lambda stop: dispatcher_main(config, stop))
        elif args.command == "operator":
            from hookline.operator import run as run_operator

            return int(run_operator(config))
        elif args.command == "dev":
            if args.tracing:
                config = dataclasses.replace(config, tracing="on")
            _run(lambda stop: dev_main(config, stop, args.endpoints, args.sink_port))
        elif args.command == "sink":
            _run(lambda stop: sink_main(config, stop, args.port))
        elif args.command == "send":
            return int(_run(lambda _stop: send_main(args)))
        elif args.command == "dlq":
            return int(_run(lambda _stop: dlq_main(config, args)))
        elif args.command == "endpoints":
            return int(_run(lambda _stop: endpoints_main(config, args.attempts)))
    except HooklineError as exc:
        print(f"hookline: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
