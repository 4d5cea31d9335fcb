"""Every key family hookline keeps in Redis, named in one place.

``P`` is ``HOOKLINE_PREFIX`` (default ``hookline``); ``pool`` a dispatcher pool;
``EP`` an endpoint id. Who writes each family is in brackets.

Queue (:mod:`hookline.store.queue`):

* ``P:stream:pool``     stream of packed :class:`~hookline.models.Webhook` entries (field
  ``d``), read by the consumer group :data:`GROUP` [receiver; dispatchers settle]
* ``P:retry:pool``      sorted set: retry uid → due time (ms) [dispatchers]
* ``P:retrydata:pool``  hash: retry uid → packed webhook [dispatchers]
* ``P:sending:pool``    hash: webhook id → its attempts started whose outcome no settle
  recorded — one each while in flight, and those of dispatchers that died — written
  before each POST, cleared by the settle scripts; what counts duplicates [dispatchers]
* ``P:idem:HASH``       an Idempotency-Key's first webhook id, expiring [receiver]
* ``P:body:ID``         hash: the body of a source's event (``b``, absent when it is in the
  body store) and ``n``, how many of its deliveries (queued, scheduled, dead letters)
  still hold it; the settle that brings ``n`` to 0 removes it [receiver; dispatchers]

Dead letters (:mod:`hookline.store.deadletters`):

* ``P:dead``            stream: dead letters with their reason, pool and endpoint [dispatchers]

Figures (:mod:`hookline.store.figures`), written by the settle scripts:

* ``P:stats:EP``        hash: delivered, failed, dead, duplicates, last outcomes, and the
  endpoint's health — failure streak, since when, circuit open until
* ``P:attempts:EP``     list: the endpoint's latest attempts, capped
* ``P:sstats:SRC``      hash: a source's figures — events, unmatched (events no endpoint
  took), deliveries (queued), delivered, failed (attempts), dead

Registry (:mod:`hookline.store.registry`):

* ``P:endpoints``       hash: endpoint id → endpoint JSON [operator, local stack]
* ``P:keys``            hash: SHA-256 of an ingest key → endpoint id (keys never in clear)
* ``P:disabled``        hash: endpoint id → ``{"reason", "at"}`` [dispatchers: 410, auto-disable]
* ``P:sources``         hash: source id → source JSON [operator, local stack]
* ``P:sourcekeys``      hash: SHA-256 of a source's ingest key → source id
* ``P:registry``        pub/sub channel: the id of every endpoint that changed, and
  ``source ID`` for every source that did

Leases and locks (:mod:`hookline.store.leases`):

* ``P:inflight:EP``     sorted set: shared in-flight leases (``spec.maxInFlight``) [dispatchers]
* ``P:rate:EP``         hash: the token bucket of ``spec.rateLimit`` [dispatchers]
* ``P:probe:EP``        the half-open circuit's single probe [dispatchers]
* ``P:scaler:lease``    which operator replica scales the dispatchers [operator]

The body reaper (:mod:`hookline.store.references`):

* ``P:reaper:lease``    which dispatcher reaps stored bodies nothing references [dispatchers]
* ``P:reaper:pass``     set while a reaper pass reads the body references: retries are not
  moved back to their stream and dead letters not replayed meanwhile [the reaping dispatcher]
"""

from __future__ import annotations

GROUP = "dispatchers"  # the consumer group of every pool's stream


class Keys:
    """The names of the key families above for one prefix: fixed names as attributes,
    per-pool and per-endpoint families as methods."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.dead = f"{prefix}:dead"
        self.endpoints = f"{prefix}:endpoints"
        self.key_index = f"{prefix}:keys"
        self.disabled = f"{prefix}:disabled"
        self.sources = f"{prefix}:sources"
        self.source_key_index = f"{prefix}:sourcekeys"
        self.channel = f"{prefix}:registry"
        self.scaler_lease = f"{prefix}:scaler:lease"
        self.reaper_lease = f"{prefix}:reaper:lease"
        self.reaper_pass = f"{prefix}:reaper:pass"

    def _of(self, family: str, name: str) -> str:
        return f"{self.prefix}:{family}:{name}"

    def stream(self, pool: str) -> str:
        return self._of("stream", pool)

    def retry(self, pool: str) -> str:
        return self._of("retry", pool)

    def retry_data(self, pool: str) -> str:
        return self._of("retrydata", pool)

    def sending(self, pool: str) -> str:
        return self._of("sending", pool)

    def idempotency(self, hashed: str) -> str:
        return self._of("idem", hashed)

    def body(self, webhook_id: str) -> str:
        return self._of("body", webhook_id)

    def source_stats(self, source_id: str) -> str:
        return self._of("sstats", source_id)

    def stats(self, endpoint_id: str) -> str:
        return self._of("stats", endpoint_id)

    def attempts(self, endpoint_id: str) -> str:
        return self._of("attempts", endpoint_id)

    def in_flight(self, endpoint_id: str) -> str:
        return self._of("inflight", endpoint_id)

    def rate(self, endpoint_id: str) -> str:
        return self._of("rate", endpoint_id)

    def probe(self, endpoint_id: str) -> str:
        return self._of("probe", endpoint_id)
