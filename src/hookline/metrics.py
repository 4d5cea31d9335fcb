"""Prometheus metrics for every component, each process with its own registry.

Components receive a :class:`Metrics` and count into it; ``/metrics`` renders it.
A registry per instance (not the global one) lets tests run a receiver and a
dispatcher in one process without name clashes.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Tally:
    """A counter (child) for a hot path: counted as a plain integer, handed to Prometheus
    whenever the registry is collected (a scrape, or a test reading a sample). A
    ``Counter.inc`` takes a lock and checks its arguments; ``tally.n += 1`` does neither."""

    __slots__ = ("counter", "n")

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.n = 0

    def flush(self) -> None:
        if self.n:
            self.counter.inc(self.n)
            self.n = 0


class _Flush(Collector):
    """Registered first, so that every collection hands the tallies over beforehand."""

    def __init__(self) -> None:
        self.tallies: list[Tally] = []

    def collect(self) -> Iterable[Metric]:
        for tally in self.tallies:
            tally.flush()
        return []

    def describe(self) -> Iterable[Metric]:
        return []


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._flush = _Flush()
        r.register(self._flush)
        self.ingested = Counter(
            "hookline_ingested", "Webhooks accepted (202) by the receiver", ["storage"], registry=r
        )
        self.ingest_errors = Counter(
            "hookline_ingest_errors", "Ingest requests refused, by reason", ["reason"], registry=r
        )
        self.deliveries = Counter(
            "hookline_deliveries",
            "Delivery attempts by outcome (delivered, failed, rejected, deferred)",
            ["outcome"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "hookline_delivery_latency_seconds",
            "Time from the outbound request to the endpoint's answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "hookline_end_to_end_seconds",
            "Time from acceptance to successful delivery",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter("hookline_retries_scheduled", "Retries scheduled", registry=r)
        self.dead_letters = Counter(
            "hookline_dead_letters", "Webhooks moved to the dead letter", registry=r
        )
        self.duplicates = Counter(
            "hookline_duplicate_deliveries",
            "Deliveries counted as duplicates: one per earlier attempt of the same webhook "
            "that was started and never settled (its dispatcher died or was overtaken)",
            registry=r,
        )
        self.in_flight = Gauge("hookline_in_flight", "Deliveries in progress", registry=r)
        self.circuit_open = Gauge(
            "hookline_circuit_open",
            "1 while an endpoint's circuit is open",
            ["endpoint"],
            registry=r,
        )
        self.disabled = Counter(
            "hookline_endpoints_disabled",
            "Endpoints disabled by a dispatcher, by cause",
            ["cause"],
            registry=r,
        )
        self.bodies_reaped = Counter(
            "hookline_bodies_reaped",
            "Stored bodies the reaper removed: older than HOOKLINE_BODY_GRACE and referenced "
            "by no queue entry, retry or dead letter",
            registry=r,
        )
        self.queue_backlog = Gauge(
            "hookline_queue_backlog", "Entries waiting in a pool's stream", ["pool"], registry=r
        )
        self.retry_backlog = Gauge(
            "hookline_retry_backlog", "Retries scheduled in a pool", ["pool"], registry=r
        )

    def tally(self, counter: Counter) -> Tally:
        """A :class:`Tally` of ``counter`` (a counter without labels, or a labelled child)."""
        tally = Tally(counter)
        self._flush.tallies.append(tally)
        return tally

    def render(self) -> bytes:
        return generate_latest(self.registry)
