"""``hookline dev``: the whole pipeline on this machine, and ``hookline sink`` alone.

Starts a private ``redis-server`` (AOF on, data in ``var/redis``) unless one answers
at ``HOOKLINE_REDIS_URL``, loads the endpoint manifests of a folder into the
registry, and runs the receiver, a dispatcher and the demo sink in one process
until Ctrl-C. It prints a ``curl`` line that sends a first webhook.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from hookline import dispatcher, outbound, receiver, telemetry
from hookline.config import Config
from hookline.errors import HooklineError, StoreUnavailable
from hookline.http import serve
from hookline.local.manifests import load_endpoints
from hookline.local.sink import create_sink
from hookline.store import Store


async def _redis_answers(config: Config) -> bool:
    store = Store.connect(replace(config, redis_timeout=0.5))
    try:
        await store.ping()
        return True
    except StoreUnavailable:
        return False
    finally:
        await store.aclose()


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


async def run(config: Config, stop: asyncio.Event, endpoints_dir: str, sink_port: int) -> None:
    config = dev_config(config)
    redis_proc = None
    if not await _redis_answers(config):
        redis_proc = start_redis(config.redis_url, Path("var/redis"))
        for _ in range(50):
            if await _redis_answers(config):
                break
            await asyncio.sleep(0.1)
        else:
            raise HooklineError(f"redis-server did not start at {config.redis_url}")
        print(f"started redis-server at {config.redis_url} (data in var/redis)")
    store = Store.connect(config)
    loaded = load_endpoints(endpoints_dir, config)
    for item in loaded:
        await store.registry.put(item.endpoint)
    sink_secrets = {urlsplit(i.endpoint.url).path: i.signing_secret for i in loaded}
    tasks = [
        asyncio.create_task(serve(create_sink(sink_secrets), "127.0.0.1", sink_port, stop)),
        asyncio.create_task(receiver.run(config, stop)),
        asyncio.create_task(dispatcher.run(config, stop)),
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
        await store.aclose()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)


async def sink(config: Config, stop: asyncio.Event, port: int) -> None:
    """``hookline sink``: the demo endpoint alone, its secret from ``HOOKLINE_SINK_SECRET``."""
    secret = config.sink_secret or None
    print(f"hookline sink :{port}, signatures {'checked' if secret else 'not checked'}")
    await serve(create_sink({}, fallback=secret), "0.0.0.0", port, stop)
