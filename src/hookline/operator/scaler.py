"""Lag-based autoscaling of the dispatcher Deployments, with the semantics of the HPA.

Started by :func:`hookline.operator.main.operate` beside kopf, one :class:`Scaler` per
operator process. Every ``HOOKLINE_SCALE_INTERVAL`` seconds (15 s, the HPA's sync
period) it lists the Deployments labelled ``hookline.dev/component=dispatcher``,
reads each one's policy from its annotations (:func:`policy_from`), measures the work
waiting in its pool (:meth:`Scaler.measure`: the stream — entries not yet read plus
those in flight, since settled entries leave it — and the retries already due), and
sets ``spec.replicas`` through the ``scale`` subresource as :func:`decide` says.

:func:`decide` is pure, so the simulation in ``bench/autoscaling_sim.py`` and the unit
tests drive the very code that scales the cluster:

* ``wanted = ceil(work / target)``; no change while ``work / (replicas * target)`` is
  within the tolerance (10 %) of 1; the result clamped to ``[min, max]``;
* up at once, at most to ``max(replicas + 4, 2 * replicas)`` per decision;
* down only to the highest recommendation of the last ``window`` seconds (the HPA's
  scale-down stabilization), so a pool goes to zero only when ``min`` is 0 and it has
  been idle for the whole window.

Why not kopf timers: kopf puts a finalizer on every object a timer runs for, so it would
need write access to users' Deployments and block their deletion while the operator is
down; the HPA touches nothing but ``scale``. Only one operator replica scales at a time:
the holder of a lease in Redis (``P:scaler:lease``), which works with kopf peering and
without it. A lost lease, an unreachable Redis or API leave the replicas as they are;
the reason goes to the log, to a Warning Event on the Deployment (once per outage) and
to ``hookline_scaler_metrics_available``.

The lease holder also measures, each tick, how long entries have waited in every pool —
those with a Deployment and those only an endpoint's ``spec.pool`` names, which no
dispatcher may serve at all (:meth:`Scaler.watch`, the ``hookline_pool_*`` gauges the
alert rules in ``helm/hookline/files/alerts.yaml`` read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightkube.resources.apps_v1 import Deployment
from prometheus_client import CollectorRegistry, Counter, Gauge

from hookline.config import Config
from hookline.errors import ApiUnavailable, InvalidSpec, StoreUnavailable
from hookline.operator.kube import Kube
from hookline.store import ScalerLease, Store, Waiting

log = logging.getLogger(__name__)

PREFIX = "hookline.dev/"
POOL = PREFIX + "pool"
MIN_REPLICAS = PREFIX + "min-replicas"
MAX_REPLICAS = PREFIX + "max-replicas"
TARGET = PREFIX + "target-lag-per-replica"
WINDOW = PREFIX + "scale-down-window-seconds"

# hookline_scaler_errors_total reasons
ERROR_REASONS = ("redis", "api", "policy")

# Event reasons
SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
METRICS_UNAVAILABLE = "MetricsUnavailable"
INVALID_POLICY = "InvalidPolicy"
SCALE_FAILED = "ScaleFailed"


@dataclass(frozen=True)
class Policy:
    """A dispatcher Deployment's scaling policy; the defaults apply to absent annotations."""

    pool: str = "default"
    min_replicas: int = 1  # 0 allows scale to zero after an idle window
    max_replicas: int = 10
    # Work (stream entries + retries due) one replica is meant to carry: about half a
    # second of work at the 2,000 deliveries/s one dispatcher sustains against fast
    # endpoints, a few seconds against slow ones (256 deliveries in flight).
    target: int = 1000
    window: float = 300.0  # the HPA's scale-down stabilization window


def policy_from(annotations: Mapping[str, str] | None, env_pool: str | None = None) -> Policy:
    """The policy of a Deployment from its annotations. ``env_pool`` is the
    ``HOOKLINE_POOL`` its pods are given, used when the annotation is absent; when both
    are set they must agree, since scaling one pool on another's work helps nobody."""
    a = dict(annotations or {})
    d = Policy()

    def number(key: str, default: float, kind: Callable[[str], Any] = int) -> Any:
        raw = a.get(key)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = kind(raw.strip())
        except ValueError:
            raise InvalidSpec(f"annotation {key}={raw!r} is not a number") from None
        if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise InvalidSpec(f"annotation {key}={raw!r} must not be negative")
        return value

    pool = (a.get(POOL) or "").strip()
    if pool and env_pool and pool != env_pool:
        raise InvalidSpec(
            f"annotation {POOL}={pool!r} but the pods serve HOOKLINE_POOL={env_pool!r}"
        )
    policy = Policy(
        pool=pool or env_pool or d.pool,
        min_replicas=number(MIN_REPLICAS, d.min_replicas),
        max_replicas=number(MAX_REPLICAS, d.max_replicas),
        target=number(TARGET, d.target),
        window=number(WINDOW, d.window, float),
    )
    if policy.max_replicas < 1:
        raise InvalidSpec(f"annotation {MAX_REPLICAS} must be at least 1")
    if policy.min_replicas > policy.max_replicas:
        raise InvalidSpec(
            f"{MIN_REPLICAS}={policy.min_replicas} exceeds {MAX_REPLICAS}={policy.max_replicas}"
        )
    if policy.target < 1:
        raise InvalidSpec(f"annotation {TARGET} must be at least 1")
    return policy


@dataclass(frozen=True)
class Work:
    """What waits in a pool, as measured at one tick."""

    stream: int  # entries in the stream: not yet read (lag) plus read and in flight (pending)
    retry_due: int  # retries whose time has come (the dispatchers move them to the stream)
    retry_scheduled: int = 0  # every retry on the schedule, due or not (figures only)
    lag: int | None = None  # XINFO GROUPS lag; None when Redis cannot tell
    pending: int = 0  # XINFO GROUPS pending: read by a dispatcher, not yet settled

    @property
    def total(self) -> int:
        """The work the replicas are sized for."""
        return self.stream + self.retry_due

    def describe(self) -> str:
        lag = "?" if self.lag is None else str(self.lag)
        return (
            f"work {self.total} (stream {self.stream}: lag {lag}, in flight {self.pending}; "
            f"retries due {self.retry_due} of {self.retry_scheduled} scheduled)"
        )


History = tuple[tuple[float, int], ...]  # (when, recommendation), oldest first


@dataclass(frozen=True)
class Decision:
    current: int
    replicas: int  # what to set; equal to current: leave it
    wanted: int  # ceil(work / target)
    recommendation: int  # after tolerance and bounds: what this decision remembers
    reason: str
    history: History  # the recommendations of the window, this one included

    @property
    def changed(self) -> bool:
        return self.replicas != self.current


def decide(
    policy: Policy,
    current: int,
    work: int,
    history: History,
    now: float,
    tolerance: float = 0.1,
) -> Decision:
    """The replicas a pool with ``work`` waiting should run, given the recommendations of
    earlier decisions (``history``, from the previous :class:`Decision`; start it with
    ``((now, current),)`` so that nothing scales down before a window has been seen)."""
    wanted = math.ceil(work / policy.target) if work > 0 else 0
    if current > 0 and abs(work / (current * policy.target) - 1) <= tolerance:
        recommendation, why = current, f"within {tolerance:.0%} of the target"
    else:
        recommendation, why = wanted, f"ceil({work}/{policy.target}) = {wanted}"
    if recommendation > policy.max_replicas:
        recommendation, why = policy.max_replicas, f"{why}, held at max {policy.max_replicas}"
    elif recommendation < policy.min_replicas:
        recommendation, why = policy.min_replicas, f"{why}, held at min {policy.min_replicas}"

    kept = (*((t, r) for t, r in history if t > now - policy.window), (now, recommendation))
    if recommendation > current:
        limit = max(current + 4, 2 * current)
        replicas = min(recommendation, limit)
        if replicas < recommendation:
            why = f"{why}; at most {limit} from {current} in one step"
    else:
        highest = max(r for _, r in kept)
        replicas = min(current, highest)
        if replicas > recommendation:
            why = (
                f"{why}; kept at {replicas}: the last {policy.window:g} s recommended "
                f"up to {highest}"
            )
    # Replicas set by hand outside the bounds come back into them at once.
    replicas = max(policy.min_replicas, min(policy.max_replicas, replicas))
    return Decision(current, replicas, wanted, recommendation, why, kept)


class ScalerMetrics:
    """The scaler's Prometheus series, registered into the operator's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["namespace", "deployment", "pool"]
        self.replicas = Gauge(
            "hookline_scaler_replicas",
            "spec.replicas of a dispatcher Deployment after the last decision",
            labels,
            registry=registry,
        )
        self.recommended = Gauge(
            "hookline_scaler_recommended_replicas",
            "ceil(work / target) within tolerance and bounds, before stabilization",
            labels,
            registry=registry,
        )
        self.rescales = Counter(
            "hookline_scaler_rescales",
            "Changes of replicas made by the scaler",
            [*labels, "direction"],
            registry=registry,
        )
        self.work = Gauge(
            "hookline_scaler_work",
            "Work of a pool: stream entries plus retries due",
            ["pool"],
            registry=registry,
        )
        self.lag = Gauge(
            "hookline_scaler_lag",
            "Entries of a pool's stream its consumer group has not read (XINFO GROUPS)",
            ["pool"],
            registry=registry,
        )
        self.pending = Gauge(
            "hookline_scaler_pending",
            "Entries read by a pool's dispatchers and not yet settled (XINFO GROUPS)",
            ["pool"],
            registry=registry,
        )
        self.retry_due = Gauge(
            "hookline_scaler_retries_due", "Retries due in a pool", ["pool"], registry=registry
        )
        self.available = Gauge(
            "hookline_scaler_metrics_available",
            "1 when the pool's work could be measured at the last tick, else 0",
            ["pool"],
            registry=registry,
        )
        self.errors = Counter(
            "hookline_scaler_errors",
            "Ticks or Deployments left unscaled, by reason (redis, api, policy)",
            ["reason"],
            registry=registry,
        )
        for reason in ERROR_REASONS:  # served at 0 from the start: rate() sees the first one
            self.errors.labels(reason)
        self.leader = Gauge(
            "hookline_scaler_leader",
            "1 while this operator holds the scaler lease and scales",
            registry=registry,
        )
        self.ticks = Counter(
            "hookline_scaler_ticks", "Scaling rounds this operator started", registry=registry
        )
        # What waits in every pool: those with a dispatcher Deployment and those only an
        # endpoint names (the alert rules need the second kind most: nothing serves it).
        self.oldest = Gauge(
            "hookline_pool_oldest_age_seconds",
            "Age of the oldest entry in a pool's stream, read or not (0: empty)",
            ["pool"],
            registry=registry,
        )
        self.unread = Gauge(
            "hookline_pool_oldest_unread_age_seconds",
            "Age of the oldest entry of a pool's stream no dispatcher has read yet (0: none)",
            ["pool"],
            registry=registry,
        )

    def pools(self, waiting: Mapping[str, Waiting]) -> None:
        """Replace the pool gauges with ``waiting`` (empty: unknown, or measured by the
        replica that holds the lease), so no pool keeps an age nobody measures any more."""
        self.oldest.clear()
        self.unread.clear()
        for pool, w in waiting.items():
            self.oldest.labels(pool).set(w.oldest)
            self.unread.labels(pool).set(w.unread)


@dataclass
class _Target:
    """A dispatcher Deployment as one tick sees it."""

    deployment: Deployment
    namespace: str
    name: str
    uid: str
    replicas: int
    resource_version: str
    policy: Policy | None = None
    problem: str | None = None  # why it is not scaled (invalid policy, pool conflict)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, self.uid)


def _target(d: Deployment) -> _Target:
    meta, spec = d.metadata, d.spec
    assert meta is not None and meta.name is not None and meta.namespace is not None
    env_pools = {
        e.value
        for c in (spec.template.spec.containers if spec and spec.template.spec else [])
        for e in c.env or []
        if e.name == "HOOKLINE_POOL" and e.value
    }
    t = _Target(
        deployment=d,
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid or "",
        replicas=int(spec.replicas if spec and spec.replicas is not None else 1),
        resource_version=meta.resourceVersion or "",
    )
    try:
        if len(env_pools) > 1:
            raise InvalidSpec(f"containers serve different pools: {sorted(env_pools)}")
        t.policy = policy_from(meta.annotations, next(iter(env_pools), None))
    except InvalidSpec as exc:
        t.problem = str(exc)
    return t


@dataclass
class Scaler:
    """Runs :func:`decide` for every dispatcher Deployment each ``scale_interval``."""

    config: Config
    kube: Kube
    store: Store
    metrics: ScalerMetrics
    namespaces: Sequence[str] = ()
    clock: Callable[[], float] = time.monotonic
    lease: ScalerLease = field(init=False)
    histories: dict[tuple[str, str, str], History] = field(default_factory=dict)
    # The Warning last posted per Deployment, so an outage is reported once, not per tick.
    warned: dict[tuple[str, str, str], str] = field(default_factory=dict)
    leading: bool = False

    def __post_init__(self) -> None:
        self.lease = ScalerLease(self.store.conn, ttl=max(3 * self.config.scale_interval, 5.0))

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; then hand the lease over at once."""
        try:
            while not stop.is_set():
                started = self.clock()
                try:
                    await self.tick()
                except Exception:  # a bug must not stop the scaler for good
                    log.exception("scaler: the tick failed")
                wait = max(0.0, self.config.scale_interval - (self.clock() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            if self.leading:
                await self.lease.release()

    async def tick(self) -> None:
        self.metrics.ticks.inc()
        redis_down: str | None = None
        try:
            self.leading = await self.lease.hold()
        except StoreUnavailable as exc:
            # Nobody can scale without Redis; the last holder says so on the Deployments.
            redis_down = str(exc)
            log.warning("scaler: %s; no replicas change until Redis answers", exc)
        self.metrics.leader.set(1 if self.leading else 0)
        if not self.leading:
            self.histories.clear()  # whoever leads next starts from what it finds
            self.metrics.pools({})
            return
        try:
            targets = [_target(d) for d in await self.kube.dispatcher_deployments(self.namespaces)]
        except ApiUnavailable as exc:
            self.metrics.errors.labels("api").inc()
            log.warning("scaler: %s; replicas left as they are", exc)
            await self.watch(set())  # the pools endpoints name are still known
            return
        live = {t.key for t in targets}
        for key in set(self.histories) - live:
            del self.histories[key]
        for key in set(self.warned) - live:
            del self.warned[key]

        by_pool: dict[str, list[_Target]] = {}
        for t in sorted(targets, key=lambda t: (t.namespace, t.name)):
            if t.policy is not None:
                by_pool.setdefault(t.policy.pool, []).append(t)
        for pool, group in by_pool.items():
            # Pools are global to a Redis prefix: two Deployments sized on the same work
            # would each take all of it. The first (by namespace/name) is scaled.
            for other in group[1:]:
                other.problem = (
                    f"pool {pool!r} is already scaled with Deployment "
                    f"{group[0].namespace}/{group[0].name}"
                )
        for t in targets:
            if t.problem is not None:
                self.metrics.errors.labels("policy").inc()
                await self._warn(t, INVALID_POLICY, f"not scaled: {t.problem}")

        for pool, group in by_pool.items():
            target = group[0]
            work: Work | None = None
            problem = redis_down
            if problem is None:
                try:
                    work = await self.measure(pool)
                except StoreUnavailable as exc:
                    problem = str(exc)
            if work is None:
                self.metrics.available.labels(pool).set(0)
                self.metrics.errors.labels("redis").inc()
                log.warning(
                    "scaler: pool %r cannot be measured (%s); %s/%s stays at %d replicas",
                    pool,
                    problem,
                    target.namespace,
                    target.name,
                    target.replicas,
                )
                await self._warn(
                    target,
                    METRICS_UNAVAILABLE,
                    f"pool {pool!r}: work cannot be measured, replicas stay at "
                    f"{target.replicas}: {problem}",
                )
                continue
            self.metrics.available.labels(pool).set(1)
            await self._scale(target, work)
        await self.watch(set(by_pool))

    async def watch(self, scaled: set[str]) -> None:
        """Measure what waits in every pool: ``scaled`` (those with a dispatcher Deployment)
        and every pool a registered endpoint names, served or not."""
        try:
            named = {ep.pool for ep in (await self.store.registry.all()).values()}
            waiting = {pool: await self.store.figures.waiting(pool) for pool in scaled | named}
        except StoreUnavailable as exc:
            log.warning("scaler: the pools' waiting entries cannot be measured: %s", exc)
            waiting = {}
        self.metrics.pools(waiting)

    async def measure(self, pool: str) -> Work:
        backlog = await self.store.figures.backlog(pool)
        group = await self.store.figures.group(pool)
        work = Work(
            stream=int(backlog["stream"]),
            retry_due=int(backlog["retry_due"]),
            retry_scheduled=int(backlog["retry_scheduled"]),
            lag=group["lag"],
            pending=int(group["pending"] or 0),
        )
        self.metrics.work.labels(pool).set(work.total)
        self.metrics.retry_due.labels(pool).set(work.retry_due)
        self.metrics.pending.labels(pool).set(work.pending)
        if work.lag is not None:
            self.metrics.lag.labels(pool).set(work.lag)
        return work

    async def _scale(self, t: _Target, work: Work) -> None:
        assert t.policy is not None
        p = t.policy
        now = self.clock()
        history = self.histories.get(t.key) or ((now, t.replicas),)
        d = decide(p, t.replicas, work.total, history, now, self.config.scale_tolerance)
        labels = (t.namespace, t.name, p.pool)
        self.metrics.recommended.labels(*labels).set(d.recommendation)
        self.metrics.replicas.labels(*labels).set(t.replicas)
        self.histories[t.key] = d.history
        if self.warned.pop(t.key, None) is not None:
            log.info("scaler: %s/%s is measured and scaled again", t.namespace, t.name)
        if not d.changed:
            return
        try:
            done = await self.kube.scale(t.namespace, t.name, d.replicas, t.resource_version)
        except ApiUnavailable as exc:
            self.metrics.errors.labels("api").inc()
            log.warning("scaler: %s", exc)
            await self._warn(t, SCALE_FAILED, str(exc))
            return
        if not done:  # changed or deleted since the listing: decide again next tick
            self.histories[t.key] = history
            log.info("scaler: %s/%s changed meanwhile; next tick", t.namespace, t.name)
            return
        up = d.replicas > d.current
        self.metrics.replicas.labels(*labels).set(d.replicas)
        self.metrics.rescales.labels(*labels, "up" if up else "down").inc()
        message = (
            f"pool {p.pool!r}: {d.current} → {d.replicas} replicas; {work.describe()}; "
            f"target {p.target} per replica, bounds [{p.min_replicas}, {p.max_replicas}], "
            f"scale-down window {p.window:g} s; {d.reason}"
        )
        log.info("scaler: %s/%s %s", t.namespace, t.name, message)
        with contextlib.suppress(ApiUnavailable):
            await self.kube.event(t.deployment, SCALED_UP if up else SCALED_DOWN, message)

    async def _warn(self, t: _Target, reason: str, message: str) -> None:
        """A Warning Event, once per outage (or per distinct invalid policy) until the
        Deployment is scaled again: an outage's message changes, its reason does not."""
        seen = f"{reason}: {message}" if reason == INVALID_POLICY else reason
        if self.warned.get(t.key) == seen:
            return
        self.warned[t.key] = seen
        try:
            await self.kube.event(t.deployment, reason, message, warning=True)
        except ApiUnavailable as exc:
            log.warning("scaler: %s", exc)
