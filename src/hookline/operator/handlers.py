"""The kopf handlers: which events of the cluster lead to which reconciliation.

Built into their own ``kopf.OperatorRegistry`` by :func:`build` (called by
:func:`hookline.operator.run`), so nothing registers at import time.

The same handlers serve WebhookEndpoints and WebhookSources (:func:`_serve`, once per
kind):

* create, update, resume → reconcile with fresh Secrets; an invalid spec is a permanent
  error, a missing Secret or an unreachable Redis or API a temporary one (kopf retries),
  each shown in the ``Ready`` condition;
* a timer per resource (``HOOKLINE_OPERATOR_INTERVAL``) → reconcile from the cached
  Secrets: refreshes the figures and rewrites a record Redis lost or that drifted;
* a change of a Secret a resource refers to → reconcile those resources at once (a new
  signing secret signs, the previous one keeps signing for the grace period);
* delete → the record is removed; a missing record counts as removed, so the finalizer
  goes as soon as Redis answers;
* after any of these, the resources of the other kind that it made out of date are
  reconciled at once: a source created or deleted turns its subscribers ``Ready`` or
  ``Ready=False/SourceNotFound``; an endpoint that subscribes, unsubscribes or goes
  changes its source's ``subscribers``. Which sources exist and which endpoints subscribe
  to each are two kopf indexes (:data:`SOURCE_INDEX`, :data:`SUBSCRIBER_INDEX`), complete
  before the first handler runs.

What is logged: a line at INFO per change made (a Secret generated or adopted, a record
written or removed, an endpoint enabled again), a WARNING when an endpoint or a source
stops being ready or a dispatcher disabled an endpoint, and kopf's own errors. Routine
success — a timer tick, a resume or a Secret event that changed nothing, and kopf's
"Handler ... succeeded" lines — is logged at DEBUG (:class:`RoutineAtDebug`): at 300
endpoints and a 30 s interval the ticks alone would be 600 lines a minute.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import kopf

from hookline.config import Config
from hookline.errors import (
    ApiUnavailable,
    HooklineError,
    PermanentError,
    SecretConflict,
    SecretNotFound,
    StoreUnavailable,
)
from hookline.operator import status as st
from hookline.operator.kinds import ENDPOINTS, GROUP, SOURCES, VERSION, Kind
from hookline.operator.kube import Kube, secret_data
from hookline.operator.reconcile import (
    Links,
    Reconciler,
    Resource,
    Result,
    source_entry,
    subscription_entry,
)

log = logging.getLogger(__name__)

FINALIZER = "hookline.dev/registry"
# kopf's indexes, passed to every handler as keyword arguments of these names.
SOURCE_INDEX = "live_sources"
SUBSCRIBER_INDEX = "subscribers"


class Backoffs:
    """kopf's delays between the attempts of a failed API request: 1, 1, 2, 3 s, then every
    5 s for as long as it fails. kopf's default (1, 1, 2, 3, 5, 8, 13, 21) gives up after
    54 s, and a watch that gives up on a 5xx (an API server behind a load balancer, down
    for longer than that) is never started again: the operator would live on and reconcile
    nothing. Every 5 s also bounds how long a watch takes to come back after an outage."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1.0, 1.0, 2.0, 3.0), itertools.repeat(5.0))


def settings(config: Config) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    # Handler progress and the last handled spec go to annotations: the status belongs to
    # the schema (a structural schema would prune kopf's own status fields anyway).
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    s.persistence.finalizer = FINALIZER
    s.posting.level = logging.WARNING  # Events for what a user must act on, not chatter
    s.watching.server_timeout = 300
    s.watching.client_timeout = 330
    s.networking.request_timeout = 30
    s.networking.error_backoffs = Backoffs()
    if config.operator_peering:
        s.peering.name = config.operator_peering
        s.peering.standalone = False
        # Replicas of one Deployment share their settings; equal priorities would make
        # kopf pause them all, so each draws its own unless one is given.
        s.peering.priority = config.operator_priority or secrets.randbelow(1 << 30) + 1
    else:
        s.peering.standalone = True
    return s


def _raise(error: HooklineError | None, config: Config) -> None:
    """The retry decision of a handler: permanent for bad input, temporary otherwise."""
    if error is None:
        return
    if isinstance(error, PermanentError):
        raise kopf.PermanentError(str(error))
    if isinstance(error, SecretNotFound | SecretConflict):
        # Resolved by a user (who creates, deletes or names a Secret); the Secret watch
        # reconciles at once when that happens.
        raise kopf.TemporaryError(str(error), delay=config.operator_interval)
    raise kopf.TemporaryError(str(error), delay=min(5.0, config.operator_interval))


def build(config: Config, reconciler: Reconciler, kube: Kube) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    def report(res: Resource, result: Result, patch: kopf.Patch | None) -> None:
        if patch is not None:
            for k, v in result.status.items():
                patch.status[k] = v
        reconciler.remember_status(res, result.status)
        _log(res, result)
        if result.newly_disabled:
            kopf.warn(
                kopf.Body(cast(kopf.RawBody, res.ref())),
                reason="Disabled",
                message=f"a dispatcher disabled the endpoint: {result.newly_disabled}",
            )

    async def follow_up(resources: list[Resource], links: Links) -> None:
        """Reconcile resources other than the one a handler was called for (from the
        cached Secrets) and patch their status."""
        for res in resources:
            result = await reconciler.reconcile(res, fresh=False, links=links)
            try:
                if result.status and not await kube.patch_status(
                    res.namespace, res.name, result.status, res.kind
                ):
                    continue  # the resource is gone
            except ApiUnavailable as exc:
                log.warning("%s: %s (the next timer tick repeats it)", res.logged_as, exc)
                continue
            report(res, result, None)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    # kopf fills both indexes from the watches before it runs any handler, and updates
    # them before the handlers of each event: a handler sees the cluster as it is.
    @kopf.index(GROUP, VERSION, SOURCES.plural, registry=registry, id=SOURCE_INDEX)
    def live_sources(body: kopf.Body, **_: Any) -> dict[str, str]:
        return source_entry(body)

    @kopf.index(GROUP, VERSION, ENDPOINTS.plural, registry=registry, id=SUBSCRIBER_INDEX)
    def subscribers(body: kopf.Body, **_: Any) -> dict[str, str]:
        return subscription_entry(body)

    def links(kwargs: dict[str, Any]) -> Links:
        return Links(kwargs[SOURCE_INDEX], kwargs[SUBSCRIBER_INDEX])

    for kind in (ENDPOINTS, SOURCES):
        _serve(kind, registry, config, reconciler, report, follow_up, links)

    def referenced(namespace: str | None, name: str | None, **_: Any) -> bool:
        # Only the Secrets of known resources; the rest of the cluster's pass unhandled.
        return bool(namespace and name and reconciler.referencing(namespace, name))

    @kopf.on.event("v1", "secrets", registry=registry, id="secrets", when=referenced)
    async def secret_changed(
        event: kopf.RawEvent,
        body: kopf.Body,
        namespace: str | None,
        name: str | None,
        **kwargs: Any,
    ) -> None:
        if namespace is None or name is None:
            return
        data = None if event.get("type") == "DELETED" else secret_data(dict(body))
        await follow_up(reconciler.secret_seen(namespace, name, data), links(kwargs))

    return registry


def _serve(
    kind: Kind,
    registry: kopf.OperatorRegistry,
    config: Config,
    reconciler: Reconciler,
    report: Callable[[Resource, Result, kopf.Patch | None], None],
    follow_up: Callable[[list[Resource], Links], Awaitable[None]],
    links: Callable[[dict[str, Any]], Links],
) -> None:
    """The handlers of one kind: reconcile on create, update, resume and every timer tick;
    remove the record on delete. After a change, the resources of the other kind whose
    status it made stale (an endpoint's source appeared or went, a source's subscribers
    changed) are reconciled at once."""

    @kopf.on.resume(GROUP, VERSION, kind.plural, registry=registry, id="resume")
    @kopf.on.create(GROUP, VERSION, kind.plural, registry=registry, id="create")
    @kopf.on.update(GROUP, VERSION, kind.plural, registry=registry, id="update")
    async def register(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        res = Resource.from_body(body, kind)
        seen = links(kwargs)
        result = await reconciler.reconcile(res, fresh=True, links=seen)
        report(res, result, patch)
        await follow_up(reconciler.out_of_date(seen), seen)
        _raise(result.error, config)

    @kopf.on.timer(
        GROUP,
        VERSION,
        kind.plural,
        registry=registry,
        id="refresh",
        interval=config.operator_interval,
        initial_delay=config.operator_interval,
    )
    async def refresh(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        res = Resource.from_body(body, kind)
        result = await reconciler.reconcile(res, fresh=False, links=links(kwargs))
        report(res, result, patch)  # errors are in the status; the next tick tries again

    @kopf.on.delete(GROUP, VERSION, kind.plural, registry=registry, id="unregister")
    async def unregister(body: kopf.Body, **kwargs: Any) -> None:
        res = Resource.from_body(body, kind)
        try:
            removed = await reconciler.forget(res)
        except StoreUnavailable as exc:
            raise kopf.TemporaryError(str(exc), delay=min(5.0, config.operator_interval)) from exc
        log.info(
            "%s: %s",
            res.logged_as,
            "removed from the registry" if removed else "deleted (no record)",
        )
        seen = links(kwargs)
        await follow_up(reconciler.out_of_date(seen), seen)


def _log(res: Resource, result: Result) -> None:
    """One line per reconciliation that changed something or changed the endpoint's state;
    none for one that found everything as it should be."""
    if result.changes:
        log.info("%s: %s", res.logged_as, "; ".join(result.changes))
    if result.newly_disabled:
        log.warning("%s: a dispatcher disabled it: %s", res.logged_as, result.newly_disabled)
    if "conditions" not in result.status:
        return
    before = st.condition(res.status, st.READY) or {}
    after = st.condition(result.status, st.READY) or {}
    if (before.get("status"), before.get("reason")) == (after.get("status"), after.get("reason")):
        return
    if after.get("status") == "False":
        log.warning(
            "%s: not ready: %s: %s", res.logged_as, after.get("reason"), after.get("message")
        )
    elif before.get("status") == "False":
        log.info("%s: ready again", res.logged_as)


class RoutineAtDebug(logging.Filter):
    """Moves kopf's per-object success lines ("Timer 'refresh' succeeded.", "Handler
    'secrets' succeeded.", "Creation is processed: 1 succeeded; 0 failed.") from INFO to
    DEBUG: shown with ``--log-level debug``, dropped otherwise. Installed on the
    ``kopf.objects`` logger by :func:`hookline.operator.main.operate`; failures, retries
    and everything else kopf says keep their level."""

    ROUTINE = re.compile(
        r"(Handler|Timer|Daemon) '[^']*' succeeded\.|\w+ is processed: \d+ succeeded; 0 failed\."
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not self.ROUTINE.fullmatch(record.getMessage()):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
