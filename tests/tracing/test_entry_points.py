"""Tracing as the entry points set it up: ``hookline receiver`` and ``hookline dispatcher``
processes configured by ``OTEL_*`` variables, and the OpenTracing shim installed globally."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import opentracing
import pytest
from opentelemetry import propagate
from opentracing.propagation import Format

from hookline import spans
from hookline.config import Config
from hookline.models import SigningSecret, endpoint_from_spec
from hookline.signing import new_key, new_secret
from hookline.store import Store
from hookline.telemetry import RECEIVER, setup
from tests.peers import Endpoint, eventually, ok
from tests.tracing.jaeger import JaegerServer, jaeger_id
from tests.tracing.test_traces import one, trace_id_of, wait_for_trace


def component(role: str, config: Config, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HOOKLINE_"))}
    base.update(
        HOOKLINE_REDIS_URL=config.redis_url,
        HOOKLINE_PREFIX=config.prefix,
        HOOKLINE_RECEIVER_HOST="127.0.0.1",
        HOOKLINE_RECEIVER_PORT=str(config.receiver_port),
        HOOKLINE_DISPATCHER_PORT="0",
        HOOKLINE_BODY_DIR=config.body_dir,
        HOOKLINE_ALLOW_CIDRS="127.0.0.0/8",
        OTEL_BSP_SCHEDULE_DELAY="100",
        **env,
    )
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hookline", "--log-level", "WARNING", role],
            env=base,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
async def processes(
    config: Config, jaeger: JaegerServer, tmp_path: Path
) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    procs = [
        component(
            "receiver",
            config,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http},
            tmp_path / "r.log",
        ),
        component(
            "dispatcher",
            config,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_grpc,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_SERVICE_NAME": "hookline-dispatcher-eu",
            },
            tmp_path / "d.log",
        ),
    ]
    yield procs
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            pytest.fail(f"{proc.args} did not stop on SIGTERM within 20 s", pytrace=False)


async def test_receiver_and_dispatcher_processes_trace_by_the_otel_variables(
    config: Config,
    jaeger: JaegerServer,
    endpoint: Endpoint,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    key = new_key()
    spec = {"url": endpoint.on("/proc", ok)}
    store = Store.connect(config)
    try:
        ep = endpoint_from_spec("test/proc", spec, [key], [SigningSecret(new_secret())], config)
        await store.registry.put(ep)
    finally:
        await store.aclose()
    url = f"http://127.0.0.1:{config.receiver_port}"
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            try:
                async with session.get(url + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, 30, "the receiver process to be ready")
        headers = {"X-WH-Endpoint-Key": key, "Content-Type": "application/json"}
        async with session.post(url + "/webhooks/send", data=b"{}", headers=headers) as resp:
            assert resp.status == 202, await resp.text()
    await endpoint.wait_for(lambda: len(endpoint.received) == 1, 30, "the delivery")
    trace_id = jaeger_id(trace_id_of(endpoint.received[0].headers["traceparent"]))
    found, _ = await wait_for_trace(
        jaeger, trace_id, [], lambda f: len(f) >= 4, "the processes' spans", seconds=30
    )
    server = one(found, "hookline-receiver", "server")
    enqueue = one(found, "hookline-receiver", "producer")
    attempt = one(found, "hookline-dispatcher-eu", "consumer")
    outbound = one(found, "hookline-dispatcher-eu", "client")
    assert server.parent is None
    assert (enqueue.parent, attempt.parent, outbound.parent) == (server.id, enqueue.id, attempt.id)
    assert all(p.poll() is None for p in processes)


async def test_opentracing_instrumented_code_joins_hookline_spans(
    config: Config, jaeger: JaegerServer
) -> None:
    """A body store client instrumented with OpenTracing, say, shows under the upload span."""
    textmap = propagate.get_global_textmap()
    tracing = setup(config, RECEIVER, {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http})
    try:
        tracer = opentracing.global_tracer()
        with spans.upload(tracing, "gcs") as upload:
            with tracer.start_active_span("gcs resumable upload") as scope:
                carrier: dict[str, str] = {}
                tracer.inject(scope.span.context, Format.HTTP_HEADERS, carrier)
        trace_id = upload.get_span_context().trace_id
        found, _ = await wait_for_trace(
            jaeger, jaeger_id(trace_id), [tracing], lambda f: len(f) == 2, "both spans"
        )
    finally:
        opentracing.set_global_tracer(opentracing.Tracer())
        propagate.set_global_textmap(textmap)
        await tracing.close()
    hookline_span = one(found, "hookline-receiver", "internal", "body upload")
    library_span = one(found, "hookline-receiver", "internal", "gcs resumable upload")
    assert library_span.parent == hookline_span.id
    assert trace_id_of(carrier["traceparent"]) == trace_id
    assert int(carrier["uber-trace-id"].split(":")[0], 16) == trace_id
