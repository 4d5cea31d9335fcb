"""The retry policy: what to do with a delivery outcome.

Pure functions of the outcome, the webhook and the endpoint's retry spec, so
the schedule is data (``RetryPolicy``), not code scattered through the worker.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

from hookline.models import Failed, RetryPolicy, Webhook

RETRY_AFTER_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


def backoff(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before attempt ``attempt + 1``: base * 2^(attempt-1), capped, with ±25% jitter
    so that a burst of failures does not come back as a burst."""
    raw = policy.base_seconds * 2.0 ** max(0, attempt - 1)
    capped = min(policy.max_backoff_seconds, raw)
    jitter: float = (rng or random).uniform(0.75, 1.25)
    return capped * jitter


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def decide(
    outcome: Failed, webhook: Webhook, policy: RetryPolicy, retry_after_max: float, now: float
) -> Retry | GiveUp:
    """``webhook.attempt`` counts the attempts made, this one included."""
    if webhook.attempt >= policy.attempts:
        return GiveUp(f"gave up after {webhook.attempt} attempts: {outcome.reason}")
    delay = backoff(policy, webhook.attempt)
    if outcome.retry_after is not None:
        delay = min(max(outcome.retry_after, 0.0), retry_after_max)
    age = now - webhook.created_ms / 1000
    if age + delay > policy.max_age_seconds:
        return GiveUp(
            f"gave up at age {age:.0f} s (max {policy.max_age_seconds:.0f} s): {outcome.reason}"
        )
    return Retry(delay)
