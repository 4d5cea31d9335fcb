"""The values that travel between hookline's parts: endpoints, webhooks, delivery outcomes.

The registry stores :class:`Endpoint` records as JSON; the queue stores
:class:`Webhook` entries packed by :meth:`Webhook.pack`; the dispatcher turns
each delivery attempt into an :data:`Outcome` that the retry policy consumes.
``endpoint_from_spec`` turns a ``WebhookEndpoint`` spec (the CRD's schema) into
an :class:`Endpoint`, for the operator and for the local stack alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from hookline.config import Config
from hookline.errors import InvalidSpec


def key_hash(key: str) -> str:
    """How an ingest key is stored and looked up: never in clear."""
    return hashlib.sha256(key.encode()).hexdigest()


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Ten bits to two Crockford characters, for the time part.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
# A random byte to a random Crockford character (its low five bits: 256 is a multiple of 32,
# so every character is equally likely).
_BYTE_TO_CHAR = bytes(_CROCKFORD.encode()[i % 32] for i in range(256))


class _Ulids:
    """ULIDs for :func:`new_id`, cheaply. A ULID's 26 characters are 10 for the 48-bit
    millisecond time (computed once per millisecond) and 16 for its 80 random bits, 5 bits a
    character: those are sliced from a string of random characters made from 4 KiB of the
    kernel's random bytes at a time (one syscall per 256 ids). A forked child starts with a
    fresh string, so it never repeats its parent's ids."""

    __slots__ = ("chars", "ms", "pos", "stamp")

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.chars, self.pos, self.ms, self.stamp = "", 0, -1, ""

    def next(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms != self.ms:
            p = _PAIRS
            self.ms = ms
            self.stamp = (
                "msg_"
                + p[ms >> 40]
                + p[(ms >> 30) & 1023]
                + p[(ms >> 20) & 1023]
                + p[(ms >> 10) & 1023]
                + p[ms & 1023]
            )
        pos = self.pos
        if pos >= len(self.chars):
            self.chars = os.urandom(4096).translate(_BYTE_TO_CHAR).decode()
            pos = 0
        self.pos = pos + 16
        return self.stamp + self.chars[pos : pos + 16]


_ULIDS = _Ulids()


def new_id() -> str:
    """A time-ordered webhook id: ``msg_`` and a ULID (48 bits of ms, 80 random bits)."""
    return _ULIDS.next()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    base_seconds: float
    max_backoff_seconds: float
    max_age_seconds: float


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class SigningSecret:
    secret: str
    not_after: float | None = None  # Unix time; None: the current secret

    def valid(self, now: float) -> bool:
        return self.not_after is None or now < self.not_after


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str  # "namespace/name"
    url: str
    key_hashes: tuple[str, ...]
    signing_secrets: tuple[SigningSecret, ...]
    retry: RetryPolicy
    forward_headers: tuple[str, ...] = ()
    timeout_seconds: float = 10.0
    rate_limit: RateLimit | None = None
    max_in_flight: int | None = None
    pool: str = "default"
    paused: bool = False
    generation: int = 0
    source: str | None = None  # the WebhookSource this endpoint subscribes to ("ns/name")
    event_types: tuple[str, ...] = ()  # the subscription's filter; empty: every type

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Endpoint:
        d = json.loads(raw)
        return cls(
            id=d["id"],
            url=d["url"],
            key_hashes=tuple(d["key_hashes"]),
            signing_secrets=tuple(SigningSecret(**s) for s in d["signing_secrets"]),
            retry=RetryPolicy(**d["retry"]),
            forward_headers=tuple(d.get("forward_headers", ())),
            timeout_seconds=d.get("timeout_seconds", 10.0),
            rate_limit=RateLimit(**d["rate_limit"]) if d.get("rate_limit") else None,
            max_in_flight=d.get("max_in_flight"),
            pool=d.get("pool", "default"),
            paused=d.get("paused", False),
            generation=d.get("generation", 0),
            source=d.get("source"),
            event_types=tuple(d.get("event_types", ())),
        )


@dataclass(frozen=True, slots=True)
class Source:
    """A named stream of events with its own ingest key: a POST with it fans out to every
    endpoint that subscribes to the source and whose filter matches the event type."""

    id: str  # "namespace/name"
    key_hashes: tuple[str, ...]
    event_types: tuple[str, ...] = ()  # the catalog of types it may send; empty: any
    generation: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Source:
        d = json.loads(raw)
        return cls(
            id=d["id"],
            key_hashes=tuple(d["key_hashes"]),
            event_types=tuple(d.get("event_types", ())),
            generation=d.get("generation", 0),
        )


# An event type: a letter or digit, then letters, digits and ``_ . : / -`` (at most 128).
_EVENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
EVENT_TYPE_RULE = (
    "an event type is a letter or digit followed by letters, digits and _ . : / - "
    "(at most 128 characters)"
)


def valid_event_type(value: str) -> bool:
    return _EVENT_TYPE.fullmatch(value) is not None


def check_event_pattern(pattern: str) -> str:
    """A subscription filter: an exact event type, or a prefix ending in ``.*``
    (``invoice.*`` matches ``invoice.paid`` and ``invoice.line.added``)."""
    name = pattern[:-2] if pattern.endswith(".*") else pattern
    if not valid_event_type(name):
        raise InvalidSpec(f"invalid event type filter {pattern!r}: {EVENT_TYPE_RULE}")
    return pattern


def source_from_spec(
    source_id: str, spec: dict[str, Any], keys: list[str], generation: int = 0
) -> Source:
    """Build a registry record from a WebhookSource ``spec`` and its resolved ingest key."""
    types = spec.get("eventTypes") or []
    if not isinstance(types, list):
        raise InvalidSpec("spec.eventTypes must be a list of event types")
    for name in types:
        if not isinstance(name, str) or not valid_event_type(name):
            raise InvalidSpec(f"invalid event type {name!r}: {EVENT_TYPE_RULE}")
    return Source(
        id=source_id,
        key_hashes=tuple(key_hash(k) for k in keys),
        event_types=tuple(dict.fromkeys(types)),
        generation=generation,
    )


def check_absolute_http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidSpec(f"url must be an absolute http(s) URL with a host, got {url!r}")
    return url


def endpoint_from_spec(
    endpoint_id: str,
    spec: dict[str, Any],
    keys: list[str],
    signing_secrets: list[SigningSecret],
    config: Config,
    generation: int = 0,
) -> Endpoint:
    """Build a registry record from a WebhookEndpoint ``spec`` and its resolved secrets."""
    if "url" not in spec:
        raise InvalidSpec("spec.url is required")
    retry = spec.get("retry") or {}
    rate = spec.get("rateLimit")
    source = spec.get("source")
    patterns = spec.get("eventTypes") or []
    if not isinstance(patterns, list):
        raise InvalidSpec("spec.eventTypes must be a list of event types or prefixes")
    for pattern in patterns:
        check_event_pattern(str(pattern))
    try:
        return Endpoint(
            id=endpoint_id,
            url=check_absolute_http_url(str(spec["url"])),
            key_hashes=tuple(key_hash(k) for k in keys),
            signing_secrets=tuple(signing_secrets),
            retry=RetryPolicy(
                attempts=int(retry.get("attempts", config.retry_attempts)),
                base_seconds=float(retry.get("baseSeconds", config.retry_base)),
                max_backoff_seconds=float(retry.get("maxBackoffSeconds", config.retry_max_backoff)),
                max_age_seconds=float(retry.get("maxAgeSeconds", config.retry_max_age)),
            ),
            forward_headers=tuple(h.lower() for h in spec.get("forwardHeaders", ())),
            timeout_seconds=float(spec.get("timeoutSeconds", config.delivery_timeout)),
            rate_limit=(
                RateLimit(float(rate["perSecond"]), int(rate.get("burst", rate["perSecond"])))
                if rate
                else None
            ),
            max_in_flight=int(spec["maxInFlight"]) if spec.get("maxInFlight") else None,
            pool=str(spec.get("pool", "default")),
            paused=bool(spec.get("paused", False)),
            generation=generation,
            # A source is named in the endpoint's own namespace.
            source=f"{endpoint_id.partition('/')[0]}/{source}" if source else None,
            event_types=tuple(dict.fromkeys(str(p) for p in patterns)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidSpec(f"invalid endpoint spec: {exc}") from exc


# The start of a packed webhook (Webhook.pack): its id, endpoint and creation time. Endpoint
# names are Kubernetes names ("namespace/name"), which JSON never escapes.
_ROUTE = re.compile(rb'\{"id":"[^"\\]*","ep":"([^"\\]*)","t":(\d+),').match


@dataclass(slots=True)
class Webhook:
    """One accepted webhook as it travels through the queue."""

    id: str
    endpoint: str
    headers: dict[str, str]
    body: bytes = b""  # the body when inline; empty when body_ref is set
    body_ref: str | None = None
    size: int = 0
    attempt: int = 0  # attempts already made
    created_ms: int = 0
    trace: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # the source whose event this is a delivery of
    # The body is kept once for all of the event's deliveries (``P:body:ID`` in Redis, or
    # the body store when body_ref is set), not in this entry.
    shared: bool = False

    @property
    def delivery(self) -> str:
        """What names this delivery in Redis: the webhook id, and for a source's event (one
        id, many endpoints) the endpoint too."""
        return self.id if self.source is None else f"{self.id}>{self.endpoint}"

    def pack(self) -> bytes:
        """The queue entry: one line of compact JSON (everything but the body), a newline,
        then the body's bytes as they came (none when the body is shared or stored apart)."""
        meta: dict[str, Any] = {  # id, ep and t first: see route_of
            "id": self.id,
            "ep": self.endpoint,
            "t": self.created_ms,
            "h": self.headers,
            "ref": self.body_ref,
            "sz": self.size,
            "n": self.attempt,
            "tc": self.trace,
        }
        if self.source is not None:
            meta["src"] = self.source
        if self.shared:
            meta["sh"] = 1
        return b"".join((orjson.dumps(meta), b"\n", self.body))

    @classmethod
    def unpack(cls, data: bytes) -> Webhook:
        head, _, body = data.partition(b"\n")
        m = orjson.loads(head)
        return cls(
            id=m["id"],
            endpoint=m["ep"],
            headers=m["h"],
            body=body,
            body_ref=m["ref"],
            size=m["sz"],
            attempt=m["n"],
            created_ms=m["t"],
            trace=m["tc"],
            source=m.get("src"),
            shared=bool(m.get("sh")),
        )

    @staticmethod
    def route_of(data: bytes) -> tuple[str, int] | None:
        """The endpoint and the creation time (ms) of a packed webhook, read off the start
        of its first line without unpacking it: what the dispatcher needs to decide that
        an entry waits (paused, throttled or hanging endpoint) without building the
        webhook. None for an entry packed in another order (before this was added): unpack
        it then."""
        found = _ROUTE(data)
        return None if found is None else (found[1].decode(), int(found[2]))

    @staticmethod
    def body_ref_of(data: bytes) -> str | None:
        """The body reference of a packed webhook, None when its body is inline or the
        entry is unreadable. Reads only the first line: the body reaper runs this over
        every entry in Redis."""
        end = data.find(b"\n")
        head = data if end < 0 else data[:end]
        if b'"ref":"' not in head:  # an inline body's entry says "ref":null
            return None
        try:
            meta = orjson.loads(head)
        except orjson.JSONDecodeError:
            return None
        ref = meta.get("ref") if isinstance(meta, dict) else None
        return ref if isinstance(ref, str) else None


# Delivery outcomes: what one attempt came to, consumed by the retry policy.


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int
    latency: float


@dataclass(frozen=True, slots=True)
class Failed:
    """A retryable failure; ``retry_after`` is the endpoint's own request, if any."""

    reason: str
    status: int | None = None
    latency: float = 0.0
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A permanent failure: straight to the dead letter; ``disable`` also disables the endpoint."""

    reason: str
    status: int | None = None
    latency: float = 0.0
    disable: bool = False


@dataclass(frozen=True, slots=True)
class Deferred:
    """Not attempted (paused, throttled, circuit open); tried again after ``delay``."""

    reason: str
    delay: float


Outcome = Delivered | Failed | Rejected | Deferred
