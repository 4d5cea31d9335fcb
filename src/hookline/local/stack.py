"""``hookline dev``: the whole pipeline on this machine, and ``hookline sink`` alone.

Starts a private ``redis-server`` (AOF on, data in ``var/redis``) unless one answers
at ``HOOKLINE_REDIS_URL``, loads the endpoint and source manifests of a folder into the
registry, and runs the receiver, a dispatcher and the demo sink in one process
until Ctrl-C. It prints a ``curl`` line that sends a first webhook, and one that sends
a first event to a source.

With ``--tracing`` and no ``OTEL_EXPORTER_OTLP_ENDPOINT`` of the user's, it also
runs a Jaeger on loopback (:mod:`hookline.local.jaeger`; data in ``var/jaeger``),
traces into it (receiver, dispatcher, and the sink as a traced endpoint), prints a
``hookline send`` line that traces from the sender on, and once the first webhook
is delivered and its trace is in Jaeger, the link that opens that trace in the UI.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from hookline import dispatcher, outbound, receiver, telemetry
from hookline.config import Config
from hookline.errors import HooklineError, StoreUnavailable
from hookline.http import serve
from hookline.local.jaeger import LocalJaeger, delivered, trace_id_of
from hookline.local.manifests import LoadedSource, Manifests, load_manifests
from hookline.local.sink import create_sink
from hookline.receiver.app import EVENT_TYPE_HEADER
from hookline.store import Store, Subscriptions

JAEGER_PORT = 16686  # Jaeger's own defaults: the UI and its API, and OTLP/HTTP
OTLP_PORT = 4318


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


async def run(
    config: Config,
    stop: asyncio.Event,
    endpoints_dir: str,
    sink_port: int,
    jaeger_port: int = JAEGER_PORT,
    otlp_port: int = OTLP_PORT,
) -> None:
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
    jaeger: LocalJaeger | None = None
    try:
        if telemetry.enabled(config, os.environ) and not telemetry.endpoint_set(os.environ):
            jaeger = LocalJaeger(
                config.jaeger_binary, Path("var/jaeger"), jaeger_port, otlp_port, config.jaeger_ui
            )
            await _start_jaeger(jaeger)
        await _serve(config, stop, store, endpoints_dir, sink_port, jaeger)
    finally:
        if jaeger is not None:
            await jaeger.aclose()
        await store.aclose()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)


async def _start_jaeger(jaeger: LocalJaeger) -> None:
    """Start the stack's Jaeger and point the components' OTLP export at it. The
    components read ``OTEL_*`` when they start, as they would in their own processes;
    a short batch delay puts a webhook's spans in Jaeger within a second."""
    protocol, _ = telemetry.export_target(os.environ)
    if await jaeger.start():
        where = f"log in {jaeger.log}"
        ui = (
            "the UI from " + jaeger.assets
            if jaeger.assets
            else "its API only: HOOKLINE_JAEGER_UI names a built UI (tools/README.md)"
        )
        print(f"started jaeger at {jaeger.base} ({ui}; {where})")
    else:
        print(f"tracing into the Jaeger that answers at {jaeger.base}")
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = jaeger.otlp(protocol)
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "500")


async def register(store: Store, folder: str | Path, config: Config) -> Manifests:
    """Load the manifests of ``folder`` and write their endpoints and sources into the
    registry, as the operator does on a cluster."""
    manifests = load_manifests(folder, config)
    for source in manifests.sources:
        await store.registry.put_source(source.source)
    for item in manifests.endpoints:
        await store.registry.put(item.endpoint)
    return manifests


def _filters(types: tuple[str, ...]) -> str:
    return ", ".join(types) if types else "every type"


def _sample_type(manifests: Manifests, loaded: LoadedSource) -> str:
    """An event type of the source's catalog that the most of its subscribers take."""
    subscriptions = Subscriptions(manifests.subscribers(loaded.source.id))
    types = loaded.source.event_types or ("demo",)
    return max(types, key=lambda t: len(subscriptions.match(t)))


async def _serve(
    config: Config,
    stop: asyncio.Event,
    store: Store,
    endpoints_dir: str,
    sink_port: int,
    jaeger: LocalJaeger | None,
) -> None:
    manifests = await register(store, endpoints_dir, config)
    loaded = manifests.endpoints
    sink_secrets = {urlsplit(i.endpoint.url).path: i.signing_secret for i in loaded}
    sink_tracing = telemetry.setup(config, telemetry.SINK, install_global=False)
    first = _FirstTrace(jaeger, sink_tracing.enabled)
    sink_app = create_sink(sink_secrets, tracing=sink_tracing, on_delivery=first.delivered)
    tasks = [
        asyncio.create_task(serve(sink_app, "127.0.0.1", sink_port, stop)),
        asyncio.create_task(receiver.run(config, stop)),
        asyncio.create_task(dispatcher.run(config, stop)),
    ]
    await asyncio.sleep(0.5)
    base = f"http://127.0.0.1:{config.receiver_port}"
    print(
        f"\nhookline dev: receiver {base}, dispatcher probes :{config.dispatcher_port}, "
        f"sink :{sink_port}, {len(loaded)} endpoint(s) and {len(manifests.sources)} "
        f"source(s) from {endpoints_dir}"
    )
    if telemetry.enabled(config, os.environ):
        print(f"tracing on: OTLP to {telemetry.describe_export(os.environ)} (docs/tracing.md)")
    for item in loaded:
        print(f"  {item.endpoint.id} -> {item.endpoint.url}   key: {item.key}")
    for source in manifests.sources:
        print(
            f"  source {source.source.id} ({_filters(source.source.event_types)})   "
            f"key: {source.key}"
        )
        for ep in manifests.subscribers(source.source.id):
            print(f"    -> {ep.id} takes {_filters(ep.event_types)}")
    for endpoint_id, missing in manifests.missing_sources().items():
        print(f"  {endpoint_id}: its source {missing} is not in {endpoints_dir} (SourceNotFound)")
    if loaded:
        data = '{"type":"demo","hello":"world"}'
        print(
            "\nSend one:\n  curl -i -X POST " + base + "/webhooks/send "
            f"-H 'X-WH-Endpoint-Key: {loaded[0].key}' -H 'Content-Type: application/json' "
            f"-d {shlex.quote(data)}",
            flush=True,
        )
        if jaeger is not None:
            otlp = shlex.quote(os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
            print(
                "or, traced from the sender on:\n"
                f"  OTEL_EXPORTER_OTLP_ENDPOINT={otlp} {_hookline()} send --url {base} "
                f"--key {shlex.quote(loaded[0].key)} --data {shlex.quote(data)}",
                flush=True,
            )
    for source in manifests.sources[:1]:
        event_type = _sample_type(manifests, source)
        event = f'{{"type":"{event_type}","id":42}}'
        print(
            "\nSend an event to a source (each subscriber whose eventTypes match gets it):\n"
            "  curl -i -X POST " + base + "/webhooks/send "
            f"-H 'X-WH-Endpoint-Key: {source.key}' -H '{EVENT_TYPE_HEADER}: {event_type}' "
            f"-H 'Content-Type: application/json' -d {shlex.quote(event)}",
            flush=True,
        )
    print(flush=True)
    try:
        await asyncio.gather(*tasks)
    finally:
        await first.aclose()
        await sink_tracing.close()


class _FirstTrace:
    """Prints the Jaeger link of the first delivery's trace, once Jaeger holds it."""

    def __init__(self, jaeger: LocalJaeger | None, sink_traced: bool) -> None:
        self.jaeger = jaeger
        services = (telemetry.RECEIVER, telemetry.DISPATCHER)
        self.services = (*services, telemetry.SINK) if sink_traced else services
        self.task: asyncio.Task[None] | None = None

    def delivered(self, headers: Mapping[str, str]) -> None:
        if self.jaeger is None or self.task is not None:
            return
        trace_id = trace_id_of(headers.get("traceparent", ""))
        if trace_id is not None:
            self.task = asyncio.create_task(self._show(self.jaeger, trace_id))

    async def _show(self, jaeger: LocalJaeger, trace_id: str) -> None:
        found = await jaeger.wait_for_trace(trace_id, lambda t: delivered(t, self.services))
        lines = [f"\nfirst webhook delivered; its trace: {jaeger.base}/trace/{trace_id}"]
        if found is None:
            lines.append("  (Jaeger did not have all its spans within 15 s: reload the page)")
        if jaeger.proc is not None and not jaeger.assets:
            lines.append(
                "  the UI page needs HOOKLINE_JAEGER_UI (a built Jaeger UI, tools/README.md); "
                f"the API has it: {jaeger.base}/api/traces/{trace_id}"
            )
        print("\n".join(lines) + "\n", flush=True)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def _hookline() -> str:
    """How to run ``hookline`` from here: the virtualenv's script, relative when inside."""
    script = Path(sys.executable).parent / "hookline"
    if not script.exists():
        return "hookline"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


async def sink(config: Config, stop: asyncio.Event, port: int) -> None:
    """``hookline sink``: the demo endpoint alone, its secret from ``HOOKLINE_SINK_SECRET``."""
    secret = config.sink_secret or None
    print(f"hookline sink :{port}, signatures {'checked' if secret else 'not checked'}")
    await serve(create_sink({}, fallback=secret), "0.0.0.0", port, stop)
