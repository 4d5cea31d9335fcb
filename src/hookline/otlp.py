"""OTLP/HTTP span export that costs the event loop a few microseconds per span.

Used by :mod:`hookline.tracing`, which records every webhook's spans. The
OpenTelemetry SDK's own pipeline (``BatchSpanProcessor`` and the OTLP exporter)
builds protobuf objects for each span on its export thread: about 50 µs of CPU
per span here, and a thread that competes with the event loop for the GIL. At
two to four spans per webhook that more than halved a receiver's throughput.

:class:`OtlpHttpProcessor` is an SDK span processor that instead encodes each
span straight to its OTLP protobuf bytes as it ends (:func:`encode_span`,
about 6 µs for a span of hookline's), on the thread that ended it, and leaves
only the batching, HTTP and retries to a sender thread, which mostly waits on
its socket. The bytes are exactly what the SDK's encoder produces
(``tests/test_otlp.py`` compares them); the endpoint, headers, timeout,
compression, certificates and batch settings come from the standard
``OTEL_EXPORTER_OTLP_*`` and ``OTEL_BSP_*`` variables.

Wire format (``opentelemetry/proto/trace/v1/trace.proto``): an
``ExportTraceServiceRequest`` holds ``ResourceSpans`` (resource, then
``ScopeSpans``: scope, then spans). Spans wait as encoded bytes grouped by
instrumentation scope; a batch is framed around them when it is sent.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import ssl
import struct
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import SpanContext

from hookline.errors import InvalidSpec

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

log = logging.getLogger(__name__)

_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_times = struct.Struct("<BQBQ").pack  # start and end: fields 7 and 8, fixed64
_KINDS = [b"\x30" + bytes((kind + 1,)) for kind in range(5)]  # API SpanKind + 1
_NAMES: dict[str, bytes] = {}
_FLAGS_LOCAL = b"\x85\x01" + _pack_fixed32(0x100)  # field 16, HAS_IS_REMOTE
_FLAGS_REMOTE = b"\x85\x01" + _pack_fixed32(0x300)  # and IS_REMOTE


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]


def _len(n: int) -> bytes:
    return _SMALL[n] if n < 0x80 else _varint(n)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` is the encoded key (field number << 3 | 2)."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode()) if text else b""


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode()) if value else b"\x0a\x00"
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Mapping):
        pairs = b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items())
        return _field(b"\x32", pairs)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    if value is None:
        return b""
    raise TypeError(f"cannot encode {type(value).__name__} as an OTLP value")


_KEYS: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    """A ``KeyValue``'s key field; kept, since attribute names repeat."""
    head = _KEYS.get(key)
    if head is None:
        head = _field(b"\x0a", key.encode()) if key else b""
        if len(_KEYS) < 4096:
            _KEYS[key] = head
    return head


def _key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` message."""
    return _key(key) + _field(b"\x12", _any_value(value))


# Encoded attribute prefixes: (tag, key, length) → everything before a string value's
# bytes; (tag, key, value) → a whole small-integer attribute. Both bounded.
_PREFIXES: dict[tuple[bytes, str, int], bytes] = {}
_INTS: dict[tuple[bytes, str, int], bytes] = {}
_CACHE_LIMIT = 16384


def _str_prefix(tag: bytes, key: str, n: int) -> bytes:
    head = _key(key)
    n_any = 1 + len(_len(n)) + n
    n_kv = len(head) + 1 + len(_len(n_any)) + n_any
    prefix = tag + _len(n_kv) + head + b"\x12" + _len(n_any) + b"\x0a" + _len(n)
    if len(_PREFIXES) < _CACHE_LIMIT:
        _PREFIXES[tag, key, n] = prefix
    return prefix


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated ``KeyValue`` fields; strings and small integers, the usual values, from
    cached prefixes."""
    if not attributes:
        return b""
    out: list[bytes] = []
    prefixes = _PREFIXES
    for key, value in attributes.items():
        kind = type(value)
        if kind is str:
            raw = value.encode()
            out.append(prefixes.get((tag, key, len(raw))) or _str_prefix(tag, key, len(raw)))
            out.append(raw)
            continue
        if kind is int and 0 <= value < 0x10000:
            whole = _INTS.get((tag, key, value))
            if whole is None:
                whole = _field(tag, _key_value(key, value))
                if len(_INTS) < _CACHE_LIMIT:
                    _INTS[tag, key, value] = whole
            out.append(whole)
            continue
        try:
            out.append(_field(tag, _key_value(key, value)))
        except TypeError as exc:
            log.warning("span attribute %s not exported: %s", key, exc)
    return b"".join(out)


def encode_attributes(attributes: Mapping[str, Any]) -> bytes:
    """A span's attributes encoded once, for attributes that never change (see
    :func:`encode_span`'s ``encoded``)."""
    return _attributes(b"\x4a", attributes)


def _trace_state(context: SpanContext) -> bytes:
    state = context.trace_state
    if not state:
        return b""
    return _string(b"\x1a", ",".join(f"{k}={v}" for k, v in state.items()))


def encode_span(
    context: SpanContext,
    parent: SpanContext | None,
    name: str,
    kind: int,
    start: int,
    end: int,
    attributes: Mapping[str, Any] | None,
    status_code: int = 0,
    status_message: str | None = None,
    events: Sequence[tuple[str, int, Mapping[str, Any] | None, int]] = (),
    links: Sequence[tuple[SpanContext, Mapping[str, Any] | None, int]] = (),
    dropped: tuple[int, int, int] = (0, 0, 0),
    encoded: bytes = b"",
) -> bytes:
    """One OTLP ``Span`` message. ``kind`` is the API's ``SpanKind`` value, ``status_code``
    the API's ``StatusCode`` value; ``events`` are (name, time, attributes, dropped
    attributes), ``links`` (context, attributes, dropped attributes), ``dropped`` the
    dropped attribute, event and link counts."""
    name_field = _NAMES.get(name)
    if name_field is None:
        name_field = _string(b"\x2a", name)
        if len(_NAMES) < 4096:
            _NAMES[name] = name_field
    out = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
        _trace_state(context) if context.trace_state else b"",
        b"\x22\x08" + parent.span_id.to_bytes(8, "big") if parent is not None else b"",
        name_field,
        _KINDS[kind],
        _pack_times(0x39, start, 0x41, end),
        encoded,
        _attributes(b"\x4a", attributes),
    ]
    if dropped[0]:
        out.append(b"\x50" + _varint(dropped[0]))
    for event_name, at, event_attributes, event_dropped in events:
        event = b"\x09" + _pack_fixed64(at) + _string(b"\x12", event_name)
        event += _attributes(b"\x1a", event_attributes)
        if event_dropped:
            event += b"\x20" + _varint(event_dropped)
        out.append(_field(b"\x5a", event))
    if dropped[1]:
        out.append(b"\x60" + _varint(dropped[1]))
    for link_context, link_attributes, link_dropped in links:
        link = b"\x0a\x10" + link_context.trace_id.to_bytes(16, "big")
        link += b"\x12\x08" + link_context.span_id.to_bytes(8, "big")
        link += _attributes(b"\x22", link_attributes)
        if link_dropped:
            link += b"\x28" + _varint(link_dropped)
        link += b"\x35" + _pack_fixed32(0x300 if link_context.is_remote else 0x100)
        out.append(_field(b"\x6a", link))
    if dropped[2]:
        out.append(b"\x70" + _varint(dropped[2]))
    if status_code or status_message:
        status = _string(b"\x12", status_message or "")
        if status_code:
            status += b"\x18" + _SMALL[status_code]
        out.append(_field(b"\x7a", status))
    else:
        out.append(b"\x7a\x00")
    out.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(out)


def encode_readable(span: ReadableSpan) -> bytes:
    """An SDK span (from the OpenTracing shim, or any code using the provider) as OTLP."""
    context = span.get_span_context()
    assert context is not None and span.start_time is not None and span.end_time is not None
    return encode_span(
        context,
        span.parent,
        span.name,
        span.kind.value,
        span.start_time,
        span.end_time,
        span.attributes,
        span.status.status_code.value,
        span.status.description,
        [(e.name, e.timestamp, e.attributes, e.dropped_attributes) for e in span.events],
        [(link.context, link.attributes, link.dropped_attributes) for link in span.links],
        (span.dropped_attributes, span.dropped_events, span.dropped_links),
    )


def encode_resource(resource: Resource) -> bytes:
    return _attributes(b"\x0a", resource.attributes)


def encode_scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    out = _string(b"\x0a", scope.name) + _string(b"\x12", scope.version or "")
    return out + _attributes(b"\x1a", scope.attributes)


def encode_request(resource: bytes, scopes: Mapping[bytes, list[bytes]]) -> bytes:
    """An ``ExportTraceServiceRequest`` around encoded spans grouped by encoded scope."""
    scope_spans = b"".join(
        _field(b"\x12", _field(b"\x0a", scope) + b"".join(_field(b"\x12", s) for s in spans))
        for scope, spans in scopes.items()
    )
    return _field(b"\x0a", _field(b"\x0a", resource) + scope_spans)


# -- the processor


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
