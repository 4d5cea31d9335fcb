"""The one place hookline reads its environment.

Every setting is a ``HOOKLINE_*`` variable, read once by :func:`load` into the
frozen :class:`Config`; everything else receives the object it needs. A bad
value raises :class:`~hookline.errors.InvalidSpec` naming the variable, so a
misconfigured pod fails at start with a clear message.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hookline.errors import InvalidSpec

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB


def _setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Config:
    """All settings; the environment variable is ``HOOKLINE_`` + the field name in capitals."""

    redis_url: str = _setting("redis://127.0.0.1:6379/0", "Redis holding registry, queues, stats")
    prefix: str = _setting("hookline", "prefix of every Redis key, so several installs can share")
    redis_timeout: float = _setting(2.0, "seconds before a Redis call counts as failed")

    # receiver
    receiver_host: str = _setting("0.0.0.0", "receiver listen address")
    receiver_port: int = _setting(8080, "receiver listen port (ingest, probes, metrics)")
    max_body_bytes: int = _setting(1 * MiB, "largest accepted body; 413 past it")
    inline_limit: int = _setting(64 * KiB, "bodies up to this size travel inside the queue entry")
    request_timeout: float = _setting(
        20.0, "deadline for one ingest request, from its first byte to the last of its body"
    )
    idle_timeout: float = _setting(60.0, "an ingest connection with no request this long is closed")
    max_connections: int = _setting(
        4096, "open ingest connections per receiver; past it a new one gets 503 and is closed"
    )
    idempotency_ttl: float = _setting(86400.0, "how long an Idempotency-Key maps to its first id")
    retry_after: float = _setting(1.0, "Retry-After seconds sent with a 503")
    gc_young: int = _setting(
        20_000,
        "receiver and dispatcher: allocations between two young-generation garbage "
        "collections (Python's default is 700); 0 keeps Python's defaults",
    )

    # bodies
    body_store: str = _setting("fs", "where large bodies go: 'fs' (a folder) or 'gcs'")
    body_dir: str = _setting("var/bodies", "folder of the filesystem body store")
    body_retention: float = _setting(7 * 86400.0, "seconds dead-lettered bodies are kept")
    # A receiver stores a body while it reads the request and enqueues it after, all within
    # HOOKLINE_REQUEST_TIMEOUT of the request's start; a body younger than that may be one
    # whose queue entry is still on its way, so the reaper only looks at older ones.
    body_grace: float = _setting(
        3600.0,
        "seconds a stored body is left alone before the reaper may remove it for being "
        "referenced by nothing; above HOOKLINE_REQUEST_TIMEOUT, which bounds the time "
        "between storing a body and enqueueing its webhook",
    )
    body_reap_interval: float = _setting(
        600.0, "seconds between two reaper passes over the body store (0: no reaper)"
    )
    gcs_bucket: str = _setting("", "bucket of the GCS body store (required with 'gcs')")
    gcs_chunk_size: int = _setting(
        4 * MiB, "GCS upload chunk and download range, a multiple of 256 KiB; ~3 in memory per body"
    )
    gcs_threads: int = _setting(16, "threads making blocking GCS calls: GCS requests in flight")
    gcs_timeout: float = _setting(
        10.0, "seconds a GCS request, retries included, may take (below HOOKLINE_REQUEST_TIMEOUT)"
    )

    # dispatcher
    dispatcher_host: str = _setting("0.0.0.0", "dispatcher probe/metrics listen address")
    dispatcher_port: int = _setting(8081, "dispatcher probe/metrics port (0: no server)")
    pool: str = _setting("default", "the dispatcher pool (stream) this process serves")
    concurrency: int = _setting(256, "deliveries in flight per dispatcher process")
    read_batch: int = _setting(128, "entries read from the stream per call")
    read_linger: float = _setting(
        0.0,
        "seconds the dispatcher waits before its next read after one that found few entries,"
        " so that at low rates entries share reads, script calls and wake-ups; adds up to"
        " that much latency (0: never; docs/benchmarks.md, Cost per webhook)",
    )
    claim_idle: float = _setting(
        60.0, "seconds a pending entry may sit before another consumer takes it"
    )
    delivery_timeout: float = _setting(10.0, "default per-delivery deadline, seconds")
    response_cap: int = _setting(64 * KiB, "bytes of an endpoint's response body that are read")
    shutdown_grace: float = _setting(20.0, "seconds in-flight deliveries get after SIGTERM")
    defer_delay: float = _setting(
        1.0, "seconds a paused or throttled delivery waits before it is tried"
    )
    allow_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _setting(
        (), "comma-separated CIDRs the dispatcher may deliver to although they are not public"
    )
    https_only: bool = _setting(False, "deliver only to https:// URLs; others are dead-lettered")
    fault_ack_delay: float = _setting(
        0.0, "fault injection: seconds between an endpoint's 2xx and the acknowledgement"
    )
    fault_delete_delay: float = _setting(
        0.0,
        "fault injection: seconds between the acknowledgement of a delivery and the delete "
        "of its stored body",
    )

    endpoint_concurrency: int = _setting(
        64, "deliveries in flight to one endpoint per dispatcher process, whatever its spec"
    )
    circuit_threshold: int = _setting(10, "consecutive failed attempts that open a circuit")
    circuit_cooldown: float = _setting(30.0, "seconds a circuit stays open before one probe")
    disable_after: float = _setting(
        5 * 86400.0, "an endpoint failing continuously this long is disabled"
    )
    attempt_log: int = _setting(50, "latest attempts kept per endpoint")

    # retry defaults (an endpoint's spec.retry overrides them)
    retry_attempts: int = _setting(15, "delivery attempts before the dead letter")
    retry_base: float = _setting(5.0, "first backoff, seconds; doubles each attempt")
    retry_max_backoff: float = _setting(4 * 3600.0, "longest backoff, seconds")
    retry_max_age: float = _setting(3 * 86400.0, "a webhook older than this is dead-lettered")
    retry_after_max: float = _setting(3600.0, "largest Retry-After an endpoint may ask for")

    # registry
    registry_refresh: float = _setting(
        30.0, "full registry reload interval (pub/sub is the fast path)"
    )

    # tracing (the OTEL_* variables configure the rest: endpoint, protocol, sampler, service name)
    tracing: str = _setting(
        "auto",
        "'on', 'off' or 'auto' (on when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set)",
    )

    # the demo sink (`hookline sink`) and the local stack (`hookline dev`)
    sink_secret: str = _setting(
        "", "the whsec_ signing secret `hookline sink` checks signatures with (empty: none)"
    )
    jaeger_binary: str = _setting(
        ".cache/bin/jaeger",
        "the Jaeger `hookline dev --tracing` runs (`make dev TRACING=1` builds it)",
    )
    jaeger_ui: str = _setting(
        "",
        "a built Jaeger UI (jaeger-ui's packages/jaeger-ui/build) for that Jaeger to serve "
        "(empty: its API only; tools/README.md)",
    )

    # operator
    operator_host: str = _setting("0.0.0.0", "operator probe/metrics listen address")
    operator_port: int = _setting(8082, "operator probe/metrics port (0: no server)")
    operator_namespaces: str = _setting(
        "", "comma-separated namespaces the operator watches (empty: the whole cluster)"
    )
    operator_peering: str = _setting(
        "", "kopf peering object shared by several operator replicas (empty: standalone)"
    )
    operator_priority: int = _setting(
        0, "kopf peering priority: the highest live replica works (0: a random one at start)"
    )
    operator_interval: float = _setting(
        30.0, "seconds between status-figure updates and registry drift repairs per endpoint"
    )
    signing_grace: float = _setting(
        86400.0, "seconds a rotated-out signing secret keeps signing next to the new one"
    )
    scale_interval: float = _setting(
        15.0, "seconds between two autoscaling decisions for the dispatcher Deployments"
    )
    scale_tolerance: float = _setting(
        0.1, "relative gap between work and capacity within which replicas are left alone"
    )


def _parse(name: str, kind: Any, raw: str) -> Any:
    try:
        if kind in (int, "int"):
            return int(raw.replace("_", ""))
        if kind in (float, "float"):
            return float(raw)
        if name == "tracing":
            return _switch(raw)
        if kind in (str, "str"):
            return raw
        if kind in (bool, "bool"):
            flag = raw.strip().lower()
            if flag in ("1", "true", "yes", "on"):
                return True
            if flag in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if name == "allow_cidrs":
            return tuple(ipaddress.ip_network(c.strip()) for c in raw.split(",") if c.strip())
    except ValueError as exc:
        raise InvalidSpec(f"HOOKLINE_{name.upper()}={raw!r}: {exc}") from exc
    raise InvalidSpec(f"HOOKLINE_{name.upper()}: unsupported setting type {kind!r}")


# What the kubelet sets for every Service of the namespace when a pod spec leaves
# enableServiceLinks on: NAME_PORT=tcp://10.0.0.204:80 for a Service "name". For a
# Service hookline-receiver that is HOOKLINE_RECEIVER_PORT, which no user meant as a port.
_SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://\S+:\d+")


def _is_service_link(name: str, raw: str) -> bool:
    return name.endswith("_port") and _SERVICE_LINK.fullmatch(raw.strip()) is not None


_SWITCH = {
    **dict.fromkeys(("1", "true", "yes", "on"), "on"),
    **dict.fromkeys(("0", "false", "no", "off"), "off"),
    "auto": "auto",
}


def _switch(raw: str) -> str:
    try:
        return _SWITCH[raw.strip().lower()]
    except KeyError:
        raise ValueError("expected on/off (1/0, true/false) or auto") from None


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Read ``HOOKLINE_*`` from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        raw = env.get(f"HOOKLINE_{f.name.upper()}")
        if raw is None or raw == "":
            continue
        if _is_service_link(f.name, raw):
            # A pod of one's own (`kubectl create deployment ... -- hookline sink`) in a
            # namespace with a release named hookline gets these; the chart's pods do not.
            log.warning(
                "HOOKLINE_%s=%r ignored: a Kubernetes service-link variable (of a Service "
                "named %s), not a setting; enableServiceLinks: false in the pod spec avoids it",
                f.name.upper(),
                raw,
                "hookline-" + f.name.removesuffix("_port").replace("_", "-"),
            )
            continue
        values[f.name] = _parse(f.name, f.type, raw)
    values.update(overrides)
    config = Config(**values)
    validate(config)
    return config


def validate(config: Config) -> None:
    if config.idle_timeout < config.request_timeout:
        # aiohttp counts a connection whose request head is still arriving as idle
        raise InvalidSpec("HOOKLINE_IDLE_TIMEOUT must not be below HOOKLINE_REQUEST_TIMEOUT")
    if config.inline_limit > config.max_body_bytes:
        raise InvalidSpec("HOOKLINE_INLINE_LIMIT must not exceed HOOKLINE_MAX_BODY_BYTES")
    for name in (
        "concurrency",
        "read_batch",
        "retry_attempts",
        "endpoint_concurrency",
        "circuit_threshold",
        "attempt_log",
    ):
        if getattr(config, name) < 1:
            raise InvalidSpec(f"HOOKLINE_{name.upper()} must be at least 1")
    if config.body_store not in ("fs", "gcs"):
        raise InvalidSpec("HOOKLINE_BODY_STORE must be 'fs' or 'gcs'")
    if config.body_store == "gcs" and not config.gcs_bucket:
        raise InvalidSpec("HOOKLINE_BODY_STORE=gcs needs HOOKLINE_GCS_BUCKET")
    if config.gcs_chunk_size <= 0 or config.gcs_chunk_size % (256 * KiB):
        raise InvalidSpec("HOOKLINE_GCS_CHUNK_SIZE must be a positive multiple of 256 KiB (262144)")
    if config.tracing not in ("on", "off", "auto"):
        raise InvalidSpec("HOOKLINE_TRACING must be 'on', 'off' or 'auto'")
    if config.gcs_threads < 1:
        raise InvalidSpec("HOOKLINE_GCS_THREADS must be at least 1")
    if config.body_grace <= config.request_timeout:
        raise InvalidSpec(
            "HOOKLINE_BODY_GRACE must exceed HOOKLINE_REQUEST_TIMEOUT: a body younger than "
            "a request may take can be one whose webhook is still being enqueued"
        )
    if not 0 <= config.read_linger <= 1:
        raise InvalidSpec("HOOKLINE_READ_LINGER must be between 0 and 1 (seconds)")
    if config.body_reap_interval < 0:
        raise InvalidSpec("HOOKLINE_BODY_REAP_INTERVAL must be 0 (no reaper) or positive")
    if config.scale_interval <= 0:
        raise InvalidSpec("HOOKLINE_SCALE_INTERVAL must be positive")
    if not 0 <= config.scale_tolerance < 1:
        raise InvalidSpec("HOOKLINE_SCALE_TOLERANCE must be at least 0 and below 1")


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of every setting, for docs and ``--help``."""
    return [
        (f"HOOKLINE_{f.name.upper()}", repr(f.default), f.metadata["doc"])
        for f in dataclasses.fields(Config)
    ]
