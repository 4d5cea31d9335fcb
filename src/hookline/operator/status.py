"""What the ``status`` of a WebhookEndpoint or a WebhookSource says, computed from what
the operator found.

Pure functions, called by :mod:`hookline.operator.reconcile`: conditions in the
Kubernetes convention (``type``, ``status``, ``reason`` in CamelCase, a message,
``lastTransitionTime`` kept while the status stays the same), an endpoint's delivery
figures from :meth:`hookline.store.figures.Figures.stats`, a source's from
:meth:`~hookline.store.figures.Figures.source_stats`, and :func:`changes`, the merge
patch of only the fields that differ, so an idle resource is never written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

READY = "Ready"
DELIVERING = "Delivering"

# Ready reasons
REGISTERED = "Registered"
INVALID_SPEC = "InvalidSpec"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_CONFLICT = "SecretConflict"
REGISTRY_UNAVAILABLE = "RegistryUnavailable"
API_UNAVAILABLE = "ApiUnavailable"
SOURCE_NOT_FOUND = "SourceNotFound"  # an endpoint's spec.source names no WebhookSource

# Delivering reasons
ACTIVE = "Active"
PAUSED = "Paused"
DISABLED = "Disabled"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def rfc3339(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def conditions(
    current: list[dict[str, Any]], wanted: list[Condition], generation: int, now: float
) -> list[dict[str, Any]]:
    """The new ``conditions`` list: ``wanted`` replace conditions of the same type, a
    transition time changes only when the status does, other types are kept."""
    by_type = {c.get("type"): c for c in current}
    out = {t: c for t, c in by_type.items() if t not in {w.type for w in wanted}}
    for w in wanted:
        status = "True" if w.status else "False"
        old = by_type.get(w.type) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        out[w.type] = {
            "type": w.type,
            "status": status,
            "observedGeneration": generation,
            "lastTransitionTime": since or rfc3339(now),
            "reason": w.reason,
            "message": w.message[:32768],
        }
    order = {READY: 0, DELIVERING: 1}
    return sorted(out.values(), key=lambda c: (order.get(str(c["type"]), 9), str(c["type"])))


def figures(stats: dict[str, str], pending: int) -> dict[str, Any]:
    """The delivery figures shown by ``kubectl get whe`` from the queue's per-endpoint stats."""
    out: dict[str, Any] = {
        "delivered": int(stats.get("delivered", 0)),
        "failed": int(stats.get("failed", 0)),
        "deadLettered": int(stats.get("dead", 0)),
        "duplicates": int(stats.get("duplicates", 0)),
        "pending": pending,
    }
    if stats.get("last_success"):
        out["lastSuccess"] = rfc3339(int(stats["last_success"]) / 1000)
    if stats.get("last_failure"):
        try:
            failure = json.loads(stats["last_failure"])
            last: dict[str, Any] = {
                "time": rfc3339(float(failure["at"])),
                "reason": str(failure.get("reason", ""))[:1024],
            }
            if failure.get("status") is not None:
                last["status"] = int(failure["status"])
            out["lastFailure"] = last
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable record is not worth failing a reconciliation for
    return out


def source_figures(stats: dict[str, int], subscribers: int) -> dict[str, Any]:
    """A source's status figures (``kubectl get whs``) from its stored counters and the
    number of endpoints that subscribe to it."""
    return {
        "subscribers": subscribers,
        "events": stats.get("events", 0),
        "unmatched": stats.get("unmatched", 0),
        "deliveries": stats.get("deliveries", 0),
        "delivered": stats.get("delivered", 0),
        "failed": stats.get("failed", 0),
        "deadLettered": stats.get("dead", 0),
    }


def changes(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The top-level status fields of ``wanted`` that differ from ``current``."""
    return {k: v for k, v in wanted.items() if current.get(k) != v}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None
