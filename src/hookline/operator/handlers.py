"""The kopf handlers: which events of the cluster lead to which reconciliation.

Built into their own ``kopf.OperatorRegistry`` by :func:`build` (called by
:func:`hookline.operator.run`), so nothing registers at import time.

* create, update, resume of a WebhookEndpoint → reconcile with fresh Secrets; an invalid
  spec is a permanent error, a missing Secret or an unreachable Redis or API a temporary
  one (kopf retries), each shown in the ``Ready`` condition;
* a timer per endpoint (``HOOKLINE_OPERATOR_INTERVAL``) → reconcile from the cached
  Secrets: refreshes the delivery figures and rewrites a record Redis lost or that drifted;
* a change of a Secret an endpoint refers to → reconcile those endpoints at once (the new
  signing secret signs, the previous one keeps signing for the grace period);
* delete → the record is removed; a missing record counts as removed, so the finalizer
  goes as soon as Redis answers.

What is logged: a line at INFO per change made (a Secret generated or adopted, a record
written or removed, an endpoint enabled again), a WARNING when an endpoint stops being
ready or a dispatcher disabled it, and kopf's own errors. Routine success — a timer tick,
a resume or a Secret event that changed nothing, and kopf's "Handler ... succeeded" lines
— is logged at DEBUG (:class:`RoutineAtDebug`): at 300 endpoints and a 30 s interval the
ticks alone would be 600 lines a minute.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Iterator
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
from hookline.operator.kube import GROUP, PLURAL, VERSION, Kube, secret_data
from hookline.operator.reconcile import Reconciler, Resource, Result

log = logging.getLogger(__name__)

FINALIZER = "hookline.dev/registry"


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
        reconciler.remember_status(res.id, result.status)
        _log(res, result)
        if result.newly_disabled:
            kopf.warn(
                kopf.Body(cast(kopf.RawBody, res.ref())),
                reason="Disabled",
                message=f"a dispatcher disabled the endpoint: {result.newly_disabled}",
            )

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="resume")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="create")
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="update")
    async def register(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        res = Resource.from_body(body)
        result = await reconciler.reconcile(res, fresh=True)
        report(res, result, patch)
        _raise(result.error, config)

    @kopf.on.timer(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        id="refresh",
        interval=config.operator_interval,
        initial_delay=config.operator_interval,
    )
    async def refresh(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        res = Resource.from_body(body)
        result = await reconciler.reconcile(res, fresh=False)
        report(res, result, patch)  # errors are in the status; the next tick tries again

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="unregister")
    async def unregister(body: kopf.Body, **_: Any) -> None:
        res = Resource.from_body(body)
        try:
            removed = await reconciler.forget(res)
        except StoreUnavailable as exc:
            raise kopf.TemporaryError(str(exc), delay=min(5.0, config.operator_interval)) from exc
        log.info(
            "%s: %s", res.id, "removed from the registry" if removed else "deleted (no record)"
        )

    def referenced(namespace: str | None, name: str | None, **_: Any) -> bool:
        # Only the Secrets of known endpoints; the rest of the cluster's pass unhandled.
        return bool(namespace and name and reconciler.referencing(namespace, name))

    @kopf.on.event("v1", "secrets", registry=registry, id="secrets", when=referenced)
    async def secret_changed(
        event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str | None, **_: Any
    ) -> None:
        if namespace is None or name is None:
            return
        data = None if event.get("type") == "DELETED" else secret_data(dict(body))
        for res in reconciler.secret_seen(namespace, name, data):
            result = await reconciler.reconcile(res, fresh=False)
            try:
                if result.status and not await kube.patch_status(
                    res.namespace, res.name, result.status
                ):
                    continue  # the endpoint is gone
            except ApiUnavailable as exc:
                log.warning("%s: %s (the next timer tick repeats it)", res.id, exc)
                continue
            report(res, result, None)

    return registry


def _log(res: Resource, result: Result) -> None:
    """One line per reconciliation that changed something or changed the endpoint's state;
    none for one that found everything as it should be."""
    if result.changes:
        log.info("%s: %s", res.id, "; ".join(result.changes))
    if result.newly_disabled:
        log.warning("%s: a dispatcher disabled it: %s", res.id, result.newly_disabled)
    if "conditions" not in result.status:
        return
    before = st.condition(res.status, st.READY) or {}
    after = st.condition(result.status, st.READY) or {}
    if (before.get("status"), before.get("reason")) == (after.get("status"), after.get("reason")):
        return
    if after.get("status") == "False":
        log.warning("%s: not ready: %s: %s", res.id, after.get("reason"), after.get("message"))
    elif before.get("status") == "False":
        log.info("%s: ready again", res.id)


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
