"""Fixtures of the tracing tier: one real Jaeger per session, traced stacks, traced senders.

The in-process receiver and dispatcher each get their own TracerProvider, passed
in as the entry points would, with the service names the entry points give them;
the receiver exports over OTLP/HTTP and the dispatcher over OTLP/gRPC, so both
exporters are exercised against the real Jaeger.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import jaeger_client
import pytest

from hookline.config import Config
from hookline.telemetry import DISPATCHER, RECEIVER, setup
from hookline.tracing import Tracing
from tests.stack import Stack
from tests.tracing.jaeger import JaegerFailed, JaegerServer

SENDER = "webhook-sender"


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerServer]:
    try:
        server = JaegerServer(tmp_path_factory.mktemp("jaeger"))
        server.start()
    except JaegerFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


def receiver_tracing(config: Config, jaeger: JaegerServer) -> Tracing:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http}
    return setup(config, RECEIVER, env, install_global=False)


def dispatcher_tracing(config: Config, jaeger: JaegerServer) -> Tracing:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_grpc, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    return setup(config, DISPATCHER, env, install_global=False)


@contextlib.asynccontextmanager
async def traced_stack(config: Config, jaeger: JaegerServer) -> AsyncIterator[Stack]:
    """A stack whose receiver (OTLP/HTTP) and dispatcher (OTLP/gRPC) trace into ``jaeger``."""
    stack = Stack(
        config,
        receiver_tracing=receiver_tracing(config, jaeger),
        dispatcher_tracing=dispatcher_tracing(config, jaeger),
    )
    await stack.start()
    yield stack
    await stack.stop()
    await stack.receiver_tracing.close()
    await stack.dispatcher_tracing.close()


@pytest.fixture
async def traced(config: Config, jaeger: JaegerServer) -> AsyncIterator[Stack]:
    """A stack that traces into the session's Jaeger."""
    async with traced_stack(config, jaeger) as stack:
        yield stack


@pytest.fixture
def sender(jaeger: JaegerServer) -> Iterator[jaeger_client.Tracer]:
    """A sender instrumented with the legacy Jaeger client, reporting spans over UDP
    (compact Thrift) to Jaeger's agent port, as a Jaeger-instrumented service would."""
    config = jaeger_client.Config(
        config={
            "sampler": {"type": "const", "param": 1},
            "local_agent": {"reporting_host": "127.0.0.1", "reporting_port": jaeger.agent_port},
            "reporter_flush_interval": 0.05,
            # Given, so the client does not probe the network interfaces for an address.
            "tags": {"ip": "127.0.0.1"},
            "logging": False,
        },
        service_name=SENDER,
        validate=True,
    )
    tracer = config.new_tracer()
    yield tracer
    # jaeger-client reports from a Tornado loop in a thread of its own; its close()
    # returns that loop's future, and nothing releases the thread and the UDP socket.
    channel = tracer.reporter._channel
    thread_loop = channel._thread_loop
    io_loop = thread_loop._io_loop
    closing = tracer.close()  # reports what is still queued
    deadline = time.monotonic() + 10
    while not closing.done():
        if time.monotonic() > deadline:
            pytest.fail("jaeger-client did not flush its spans within 10 s", pytrace=False)
        time.sleep(0.01)
    io_loop.add_callback(io_loop.stop)
    thread_loop._thread.join(10)
    io_loop.close()
    channel.close()
