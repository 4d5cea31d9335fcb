"""OTLP/HTTP export of spans that costs the event loop a few microseconds per span.

:class:`OtlpHttpProcessor` is the span processor :mod:`hookline.telemetry`
installs for OTLP/HTTP, the default protocol. :mod:`hookline.tracing` hands it
hookline's spans already encoded (:mod:`hookline.otlp`) as they end, on the
thread that ended them; it encodes SDK spans (the OpenTracing shim's) the same
way. A sender thread does only the batching, HTTP and retries, and mostly
waits on its socket. The endpoint, headers, timeout, compression, certificates
and batch settings come from the standard ``OTEL_EXPORTER_OTLP_*`` and
``OTEL_BSP_*`` variables.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import SpanProcessor

from hookline.errors import InvalidSpec
from hookline.otlp import encode_readable, encode_request, encode_resource, encode_scope

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

log = logging.getLogger(__name__)


def _env(environ: Mapping[str, str], name: str, default: str = "") -> str:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    value = environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or environ.get(
        f"OTEL_EXPORTER_OTLP_{name}"
    )
    return (value or default).strip()


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise InvalidSpec(f"{name}={raw!r}: {exc}") from exc


def parse_headers(raw: str) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS``: ``key=value`` pairs, comma-separated, URL-encoded."""
    headers = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidSpec(f"OTEL_EXPORTER_OTLP_HEADERS: {item.strip()!r} is not key=value")
        headers[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return headers


class OtlpHttpProcessor(SpanProcessor):
    """An SDK span processor exporting OTLP/HTTP protobuf to ``url``.

    :meth:`add` takes spans already encoded (hookline's own); :meth:`on_end` encodes
    an SDK span. At most ``max_queue`` spans wait; past that new spans are dropped and
    counted (``dropped``), as the SDK's batch processor does."""

    def __init__(
        self,
        url: str,
        resource: Resource,
        environ: Mapping[str, str],
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidSpec(f"OTLP endpoint {url!r} is not an http(s) URL")
        self.url = url
        self._parts = parts
        self._resource = encode_resource(resource)
        self._headers = {
            "Content-Type": "application/x-protobuf",
            **parse_headers(_env(environ, "HEADERS")),
        }
        self._gzip = _env(environ, "COMPRESSION", "none").lower() == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._timeout = _number(environ, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000) / 1000
        if environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"):
            self._timeout = _number(environ, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 10_000) / 1000
        self._ssl = self._tls(environ) if parts.scheme == "https" else None
        self._delay = _number(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._max_queue = int(_number(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        self._max_batch = min(
            int(_number(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)), self._max_queue
        )
        self._queue: deque[tuple[bytes, bytes]] = deque()
        self._scopes: dict[Any, bytes] = {}
        self._wake = threading.Condition()
        self._flushed = 0  # batches sent (or given up), for force_flush
        self._asked = 0
        self._stopping = False
        self.dropped = 0
        self.failed = 0
        self._last_warning = 0.0
        self._connection: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="hookline-otlp", daemon=True)
        self._thread.start()

    @staticmethod
    def _tls(environ: Mapping[str, str]) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=_env(environ, "CERTIFICATE") or None)
        cert = _env(environ, "CLIENT_CERTIFICATE")
        if cert:
            context.load_cert_chain(cert, _env(environ, "CLIENT_KEY") or None)
        return context

    # -- producing side (any thread; the event loop's for hookline's spans)

    def add(self, scope: bytes, span: bytes) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            return
        queue.append((scope, span))
        if len(queue) == self._max_batch:
            with self._wake:
                self._wake.notify()

    def scope_bytes(self, scope: InstrumentationScope | None) -> bytes:
        key = (scope.name, scope.version) if scope is not None else None
        encoded = self._scopes.get(key)
        if encoded is None:
            encoded = self._scopes[key] = encode_scope(scope)
        return encoded

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context or not span.context.trace_flags.sampled:
            return
        self.add(self.scope_bytes(span.instrumentation_scope), encode_readable(span))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send everything queued now; False if that took longer than the timeout."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._wake:
            self._asked += 1
            target = self._asked
            self._wake.notify()
            while self._flushed < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._wake.wait(left)
        return True

    def shutdown(self) -> None:
        if self._stopping:
            return
        self.force_flush()
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(self._timeout + 5)
        if self.dropped or self.failed:
            log.warning(
                "tracing: %d spans dropped (queue full), %d in failed exports",
                self.dropped,
                self.failed,
            )

    # -- the sender thread

    def _run(self) -> None:
        while True:
            with self._wake:
                while (
                    not self._stopping
                    and len(self._queue) < self._max_batch
                    and self._asked == self._flushed
                ):
                    if not self._wake.wait(self._delay):
                        break  # the schedule delay passed: send what there is
                asked, stopping = self._asked, self._stopping
            pending = len(self._queue)  # not what arrives meanwhile, or a flush never ends
            while pending > 0:
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, pending))]
                pending -= len(batch)
                self._send(batch)
            with self._wake:
                self._flushed = asked
                self._wake.notify_all()
            if stopping:
                break
        if self._connection is not None:
            self._connection.close()

    def _send(self, batch: list[tuple[bytes, bytes]]) -> None:
        scopes: dict[bytes, list[bytes]] = {}
        for scope, span in batch:
            scopes.setdefault(scope, []).append(span)
        body = encode_request(self._resource, scopes)
        if self._gzip:
            body = gzip.compress(body, 6)
        deadline = time.monotonic() + self._timeout
        delay = 0.5
        while True:
            error = self._post(body)
            if error is None:
                return
            retryable, reason = error
            if not retryable or time.monotonic() + delay > deadline or self._stopping:
                self.failed += len(batch)
                self._warn(f"OTLP export to {self.url} failed: {reason}; {len(batch)} spans lost")
                return
            time.sleep(delay)
            delay *= 2

    def _post(self, body: bytes) -> tuple[bool, str] | None:
        """None on success, else (retryable, reason)."""
        try:
            connection = self._connect()
            connection.request("POST", self._path(), body, self._headers)
            resp = connection.getresponse()
            answer = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            if self._connection is not None:
                self._connection.close()
            self._connection = None
            return True, f"{type(exc).__name__}: {exc}"
        if 200 <= resp.status < 300:
            return None
        retryable = resp.status in (429, 502, 503, 504)
        return retryable, f"HTTP {resp.status} {answer[:200]!r}"

    def _path(self) -> str:
        path = self._parts.path or "/"
        return f"{path}?{self._parts.query}" if self._parts.query else path

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            host, port = self._parts.hostname or "", self._parts.port
            if self._ssl is not None:
                self._connection = http.client.HTTPSConnection(
                    host, port, timeout=self._timeout, context=self._ssl
                )
            else:
                self._connection = http.client.HTTPConnection(host, port, timeout=self._timeout)
        return self._connection

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning("tracing: %s", message)
