"""Turns one WebhookEndpoint or WebhookSource into its registry record and its status.
Called by the kopf handlers in :mod:`hookline.operator.handlers` on create, update,
resume, every timer tick, every change of a Secret a resource refers to, and — for the
other kind — when a source appears or goes, or an endpoint's subscription changes.

One reconciliation, the same whatever triggered it and for both kinds (what differs is
described in :mod:`hookline.operator.kinds`), and idempotent:

1. resolve the Secrets of the kind — an endpoint's ingest key and signing secret, a
   source's ingest key — generating owned Secrets ``NAME-key`` / ``NAME-signing`` when the
   spec names none, or adopting those a deleted resource of the same kind and name left
   behind; a Secret of that name hookline did not generate for it is never changed:
   ``Ready=False``, reason ``SecretConflict``;
2. build the record: an :class:`~hookline.models.Endpoint` with ``endpoint_from_spec``
   (when the signing secret differs from the one the record in Redis signs with, that
   one stays in the record for ``signing_grace`` seconds: the dispatcher signs with both),
   a :class:`~hookline.models.Source` with ``source_from_spec``;
3. write the record only when it differs from what Redis holds — so a restart of the
   operator writes nothing, and a Redis that lost its data is refilled at the next tick;
4. compute the status: ``Ready`` (registered or why not: an endpoint whose ``spec.source``
   names no WebhookSource is registered — its own key works — but ``Ready=False``,
   reason ``SourceNotFound``); an endpoint's ``Delivering`` (active, paused, or disabled
   by a dispatcher) and delivery figures; a source's subscribers and figures. Only
   changed fields are returned, with a line for each change made in the cluster or Redis
   (the handlers log those at INFO; a reconciliation that changes nothing is not worth a
   line).

Which sources exist and which endpoints subscribe to each comes in :class:`Links`, from
kopf's indexes (complete before any handler runs, so a restarted operator never sees an
endpoint's source missing for a moment). :meth:`Reconciler.out_of_date` names the
resources whose status disagrees with them, for the handlers to reconcile at once.

Rotation state lives in the registry record only: a Redis that loses its data while a
rotation's grace period runs comes back with the new secret alone.

:class:`Conditions` exports the ``Ready`` and ``Delivering`` conditions the reconciler
last computed as ``hookline_endpoint_condition`` (what ``kubectl get whe`` shows, for
the alert rules: an endpoint disabled, an endpoint the operator cannot make live).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from hookline.config import Config
from hookline.errors import (
    ApiUnavailable,
    HooklineError,
    InvalidSpec,
    SecretConflict,
    SecretNotFound,
    StoreUnavailable,
)
from hookline.models import Endpoint, SigningSecret, endpoint_from_spec, source_from_spec
from hookline.operator import status as st
from hookline.operator.kinds import ENDPOINTS, KEY, SIGNING, SOURCES, Kind, SecretRef
from hookline.operator.kube import Kube
from hookline.store import Figures, Registry

SecretName = tuple[str, str]  # (namespace, name)

# What keeps a resource from being registered, and the Ready=False reason it shows.
_NOT_READY: dict[type[HooklineError], str] = {
    InvalidSpec: st.INVALID_SPEC,
    SecretNotFound: st.SECRET_NOT_FOUND,
    SecretConflict: st.SECRET_CONFLICT,
    StoreUnavailable: st.REGISTRY_UNAVAILABLE,
    ApiUnavailable: st.API_UNAVAILABLE,
}


@dataclass(frozen=True)
class Resource:
    """What the operator needs of a WebhookEndpoint or WebhookSource object."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)
    kind: Kind = ENDPOINTS

    @property
    def id(self) -> str:
        """The registry id, ``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def key(self) -> tuple[str, str]:
        """What tells it from every other resource: an endpoint and a source may share
        a name (and so an id)."""
        return self.kind.kind, self.id

    @property
    def logged_as(self) -> str:
        """How the log names it: an endpoint by its id (``ns/name``), a source as
        ``source ns/name``."""
        return self.id if self.kind is ENDPOINTS else f"{self.kind.noun} {self.id}"

    @property
    def source_id(self) -> str | None:
        """The source an endpoint subscribes to (``spec.source``, in its namespace)."""
        source = self.spec.get("source") if self.kind is ENDPOINTS else None
        return f"{self.namespace}/{source}" if source else None

    @classmethod
    def from_body(cls, body: Mapping[str, Any], kind: Kind = ENDPOINTS) -> Resource:
        meta = body.get("metadata") or {}
        return cls(
            namespace=str(meta.get("namespace", "default")),
            name=str(meta["name"]),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
            kind=kind,
        )

    def ref(self) -> dict[str, Any]:
        """An object reference, for owner references and Events."""
        return {
            "apiVersion": self.kind.api_version,
            "kind": self.kind.kind,
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }

    def secret(self, what: SecretRef) -> tuple[str, str, bool]:
        """(Secret name, key in it, generated by the operator) of one of its Secrets."""
        ref = self.spec.get(what.field)
        if ref and ref.get("name"):
            return str(ref["name"]), str(ref.get("key") or what.key), False
        return f"{self.name}-{what.suffix}", what.key, True

    def key_secret(self) -> tuple[str, str, bool]:
        return self.secret(KEY)

    def secret_names(self) -> list[str]:
        return [self.secret(what)[0] for what in self.kind.secrets]


@dataclass(frozen=True)
class Links:
    """What is known of the other resources when one is reconciled, from kopf's indexes:
    the ids of the WebhookSources that exist (and are not being deleted), and the ids of
    the endpoints that subscribe to each source id."""

    sources: Container[str] = frozenset()
    subscribers: Mapping[str, Collection[str]] = field(default_factory=dict)

    def subscribed(self, source_id: str) -> int:
        return len(self.subscribers.get(source_id, ()))


def source_entry(body: Mapping[str, Any]) -> dict[str, str]:
    """A WebhookSource's entry in kopf's index of live sources: ``{id: name}``, nothing
    once it is being deleted (its subscribers are then told it is gone)."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return {}
    return {f"{meta.get('namespace', 'default')}/{meta['name']}": str(meta["name"])}


def subscription_entry(body: Mapping[str, Any]) -> dict[str, str]:
    """A WebhookEndpoint's entry in kopf's index of subscribers: ``{source id: endpoint
    id}`` when it names a source and is not being deleted, else nothing."""
    meta = body.get("metadata") or {}
    source = (body.get("spec") or {}).get("source")
    if not source or meta.get("deletionTimestamp"):
        return {}
    namespace = meta.get("namespace", "default")
    return {f"{namespace}/{source}": f"{namespace}/{meta['name']}"}


@dataclass
class Result:
    """A reconciliation's outcome: the status fields to patch (only those that changed),
    the error that stopped it (None when the resource is registered), the reason a
    dispatcher disabled an endpoint when that is news (an Event is due), and what it
    changed (a Secret generated, the registry record written...), one phrase each."""

    status: dict[str, Any]
    error: HooklineError | None = None
    newly_disabled: str | None = None
    changes: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        config: Config,
        kube: Kube,
        registry: Registry,
        figures: Figures,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.kube = kube
        self.registry = registry
        self.figures = figures
        self.clock = clock
        # Secrets resources refer to, as last read or seen in a watch event (None: missing).
        self.secrets: dict[SecretName, dict[str, str] | None] = {}
        # The endpoints and sources known to this operator, as last seen, by Resource.key.
        self.resources: dict[tuple[str, str], Resource] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- what refers to what

    def referencing(self, namespace: str, name: str) -> list[Resource]:
        return [
            r
            for r in self.resources.values()
            if r.namespace == namespace and name in r.secret_names()
        ]

    def secret_seen(self, namespace: str, name: str, data: dict[str, str] | None) -> list[Resource]:
        """A Secret changed (``None``: deleted). Returns the resources to reconcile: those
        that refer to it, when its data differs from what they were built with."""
        users = self.referencing(namespace, name)
        if not users:
            self.secrets.pop((namespace, name), None)
            return []
        if (namespace, name) in self.secrets and self.secrets[(namespace, name)] == data:
            return []
        self.secrets[(namespace, name)] = data
        return users

    def out_of_date(self, links: Links) -> list[Resource]:
        """The known resources whose last status disagrees with ``links``: endpoints whose
        ``Ready`` says ``SourceNotFound`` while their source exists, or not while it does
        not; sources whose ``subscribers`` is not the number of endpoints subscribing.
        Called after a source or an endpoint changed, to reconcile those at once rather
        than at their next timer tick."""
        stale = []
        for res in self.resources.values():
            if res.kind is SOURCES:
                shown = res.status.get("subscribers")
                if shown is not None and shown != links.subscribed(res.id):
                    stale.append(res)
                continue
            if res.source_id is None:
                continue
            ready = st.condition(res.status, st.READY) or {}
            if ready.get("reason") not in (st.REGISTERED, st.SOURCE_NOT_FOUND):
                continue  # not registered: nothing a source changes
            if (ready["reason"] == st.SOURCE_NOT_FOUND) == (res.source_id in links.sources):
                stale.append(res)
        return stale

    def remember_status(self, res: Resource, patch: dict[str, Any]) -> None:
        known = self.resources.get(res.key)
        if known is not None:
            self.resources[res.key] = replace(known, status={**known.status, **patch})

    # -- one reconciliation

    async def reconcile(self, res: Resource, fresh: bool = True, links: Links = Links()) -> Result:
        """Reconcile ``res``; ``fresh`` reads its Secrets from the API instead of the cache
        that watch events keep current (handlers of a change read fresh, the timer not)."""
        lock = self._locks.setdefault(res.key, asyncio.Lock())
        async with lock:
            self.resources[res.key] = res
            changes: list[str] = []
            result = await self._reconcile(res, fresh, links, changes)
            result.changes = changes
            return result

    async def _reconcile(
        self, res: Resource, fresh: bool, links: Links, changes: list[str]
    ) -> Result:
        now = self.clock()
        wanted: dict[str, Any] = {"observedGeneration": res.generation}
        conditions: list[st.Condition] = []
        error: HooklineError | None = None
        newly_disabled = None
        try:
            values = await self._secrets(res, fresh, changes)
            wanted["keySecretName"] = res.key_secret()[0]
            if res.kind is SOURCES:
                conditions.append(await self._register_source(res, values[KEY], changes))
            else:
                conditions.append(await self._register(res, values, now, links, changes))
        except tuple(_NOT_READY) as exc:
            error = exc
            reason = next(r for kind, r in _NOT_READY.items() if isinstance(exc, kind))
            conditions.append(st.Condition(st.READY, False, reason, str(exc)))
        if not isinstance(error, StoreUnavailable):
            try:
                if res.kind is SOURCES:
                    stats = await self.figures.source_stats(res.id)
                    wanted.update(st.source_figures(stats, links.subscribed(res.id)))
                else:
                    delivering, figures = await self._delivery(res)
                    conditions.append(delivering)
                    wanted.update(figures)
                    old = st.condition(res.status, st.DELIVERING) or {}
                    if delivering.reason == st.DISABLED and old.get("reason") != st.DISABLED:
                        newly_disabled = delivering.message
            except StoreUnavailable as exc:  # Redis went away in between: next time
                error = error or exc
        wanted["conditions"] = st.conditions(
            list(res.status.get("conditions") or []), conditions, res.generation, now
        )
        return Result(st.changes(res.status, wanted), error, newly_disabled)

    async def _secrets(
        self, res: Resource, fresh: bool, changes: list[str]
    ) -> dict[SecretRef, str]:
        """The value of each Secret of the resource's kind, checked."""
        values = {}
        for what in res.kind.secrets:
            name, key, generated = res.secret(what)
            value = await self._value(res, name, key, generated, what.make, fresh, changes)
            if what.check is not None:
                try:
                    what.check(value)
                except InvalidSpec as exc:
                    raise InvalidSpec(f"Secret {name!r} key {key!r}: {exc}") from exc
            values[what] = value
        return values

    async def _value(
        self,
        res: Resource,
        name: str,
        key: str,
        generated: bool,
        make: Callable[[], str],
        fresh: bool,
        changes: list[str],
    ) -> str:
        where = (res.namespace, name)
        data: dict[str, str] | None = None
        if not fresh and where in self.secrets:
            data = self.secrets[where]
        elif not generated:
            data = await self.kube.secret(res.namespace, name)
        if data is None and generated:  # not read yet, or deleted since: make a new one
            owner = {**res.ref(), "name": res.name, "uid": res.uid}
            owned = await self.kube.ensure_secret(res.namespace, name, key, make, owner)
            data = owned.data
            if owned.change:
                changes.append(owned.change)
        self.secrets[where] = data
        if data is None:
            raise SecretNotFound(f"Secret {name!r} not found in namespace {res.namespace!r}")
        value = data.get(key)
        if not value:
            raise SecretNotFound(f"Secret {name!r} has no key {key!r}")
        return value

    async def _register(
        self,
        res: Resource,
        values: dict[SecretRef, str],
        now: float,
        links: Links,
        changes: list[str],
    ) -> st.Condition:
        """Write the endpoint's record; its Ready condition."""
        signing = values[SIGNING]
        existing = await self.registry.get(res.id)
        previous: list[SigningSecret] = []
        for s in existing.signing_secrets if existing else ():
            if s.secret == signing:
                continue
            if s.not_after is None:  # the secret signing until now: rotated out
                previous.append(SigningSecret(s.secret, now + self.config.signing_grace))
            elif s.valid(now):
                previous.append(s)
        record = endpoint_from_spec(
            res.id,
            res.spec,
            [values[KEY]],
            [SigningSecret(signing), *previous],
            self.config,
            generation=res.generation,
        )
        if record != existing:
            await self.registry.put(record)
            changes.append(
                _written(existing, record, self.config.signing_grace, _lost(res, existing))
            )
        if existing is not None and existing.generation < res.generation:
            # A changed spec is the user's answer to a dispatcher's disable (410 Gone).
            if res.id in await self.registry.disabled():
                await self.registry.enable(res.id)
                changes.append("enabled again (its spec changed since a dispatcher disabled it)")
        if res.source_id is None:
            return st.Condition(st.READY, True, st.REGISTERED, f"registered as {res.id}")
        if res.source_id not in links.sources:
            return st.Condition(
                st.READY,
                False,
                st.SOURCE_NOT_FOUND,
                f"WebhookSource {res.spec['source']!r} not found in namespace "
                f"{res.namespace!r}: the endpoint is registered (its own key works) but "
                "receives none of that source's events until the source exists",
            )
        return st.Condition(
            st.READY, True, st.REGISTERED, f"registered as {res.id}, subscribed to {res.source_id}"
        )

    async def _register_source(self, res: Resource, key: str, changes: list[str]) -> st.Condition:
        """Write the source's record; its Ready condition."""
        record = source_from_spec(res.id, res.spec, [key], res.generation)
        existing = await self.registry.get_source(res.id)
        if record != existing:
            await self.registry.put_source(record)
            if existing is None:
                again = "; written again, Redis had lost it" if _lost(res, existing) else ""
                changes.append(f"registered (generation {record.generation}{again})")
            else:
                what = []
                if existing.generation != record.generation:
                    what.append(f"generation {existing.generation} → {record.generation}")
                if existing.key_hashes != record.key_hashes:
                    what.append("new ingest key")
                if existing.event_types != record.event_types:
                    what.append(f"{len(record.event_types)} event types")
                detail = ", ".join(what) or "it differed from the resource"
                changes.append(f"registry record updated ({detail})")
        return st.Condition(st.READY, True, st.REGISTERED, f"registered as source {res.id}")

    async def _delivery(self, res: Resource) -> tuple[st.Condition, dict[str, Any]]:
        disabled = (await self.registry.disabled()).get(res.id)
        if disabled:
            delivering = st.Condition(
                st.DELIVERING, False, st.DISABLED, str(disabled.get("reason", "disabled"))
            )
        elif res.spec.get("paused"):
            delivering = st.Condition(
                st.DELIVERING, False, st.PAUSED, "spec.paused: webhooks are queued, not sent"
            )
        else:
            delivering = st.Condition(st.DELIVERING, True, st.ACTIVE, "webhooks are delivered")
        stats = await self.figures.stats(res.id)
        backlog = await self.figures.backlog(str(res.spec.get("pool", "default")))
        pending = int(backlog["stream"]) + int(backlog["retry_scheduled"])
        return delivering, st.figures(stats, pending)

    async def forget(self, res: Resource) -> bool:
        """The resource is being deleted: remove its record (a missing one counts as
        removed). Raises StoreUnavailable while Redis cannot be reached."""
        lock = self._locks.setdefault(res.key, asyncio.Lock())
        async with lock:
            if res.kind is SOURCES:
                removed = await self.registry.remove_source(res.id)
            else:
                removed = await self.registry.remove(res.id)
            self.resources.pop(res.key, None)
            self._locks.pop(res.key, None)
            still_used = {
                (r.namespace, n) for r in self.resources.values() for n in r.secret_names()
            }
            for where in list(self.secrets):
                if where not in still_used:
                    del self.secrets[where]
            return removed


def _lost(res: Resource, existing: object | None) -> bool:
    """Whether a record missing from Redis was there before (its status says registered):
    Redis lost it."""
    ready = st.condition(res.status, st.READY) or {}
    return existing is None and ready.get("reason") in (st.REGISTERED, st.SOURCE_NOT_FOUND)


class Conditions(Collector):
    """``hookline_endpoint_condition{endpoint, type, status, reason}`` = 1 for the
    ``Ready`` and ``Delivering`` condition of each WebhookEndpoint this operator has
    reconciled, as it last computed them. Read from memory at each scrape; an endpoint
    deleted is forgotten with its series. Registered into the operator's registry by
    :func:`hookline.operator.main.operate`."""

    NAME = "hookline_endpoint_condition"
    HELP = (
        "1 for each WebhookEndpoint's Ready and Delivering condition (status, reason) "
        "as the operator last reconciled it"
    )
    LABELS = ("endpoint", "type", "status", "reason")

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=self.LABELS)
        for res in list(self.reconciler.resources.values()):
            if res.kind is not ENDPOINTS:
                continue  # a source's Ready is in its own status, not an endpoint's series
            for kind in (st.READY, st.DELIVERING):
                c = st.condition(res.status, kind)
                if c:
                    labels = [res.id, kind, str(c.get("status", "")), str(c.get("reason", ""))]
                    family.add_metric(labels, 1)
        yield family

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=self.LABELS)


def _written(existing: Endpoint | None, record: Endpoint, grace: float, lost: bool) -> str:
    """The registry write, said in a phrase for the log."""
    if existing is None:
        again = "; written again, Redis had lost it" if lost else ""
        return f"registered (generation {record.generation}{again})"
    what = []
    if existing.generation != record.generation:
        what.append(f"generation {existing.generation} → {record.generation}")
    if existing.key_hashes != record.key_hashes:
        what.append("new ingest key")
    if existing.signing_secrets[:1] != record.signing_secrets[:1]:
        what.append(f"new signing secret, the previous one signs for {grace:g} s more")
    elif existing.signing_secrets != record.signing_secrets:
        what.append("a rotated-out signing secret expired")
    return f"registry record updated ({', '.join(what) or 'it differed from the resource'})"
