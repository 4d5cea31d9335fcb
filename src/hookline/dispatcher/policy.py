"""The delivery policy: what an answer means and what follows from it.

Pure functions, each rule in one place:

* :func:`classify` — an endpoint's answer as an outcome: 2xx delivered, **410 Gone
  rejected and the endpoint disabled**, 3xx not followed, ``Retry-After`` honoured on
  429/502/503/504;
* :func:`decide` and :func:`backoff` — **the retry schedule**: exponential with jitter,
  bounded by the endpoint's ``retry`` spec (data, ``RetryPolicy``, not code);
* :func:`circuit_open` — **the circuit breaker's state** from an endpoint's failure
  streak (the settle scripts count it across dispatchers; the gates and ``hookline
  endpoints`` read it through this one function);
* :func:`failing_too_long` — **auto-disable** after continuous failure.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

from hookline.models import Delivered, Failed, Outcome, Rejected, RetryPolicy, Webhook

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


def classify(status: int, retry_after: str | None, latency: float) -> Outcome:
    """The outcome of an answered request, as the Standard Webhooks guidance has it."""
    if 200 <= status < 300:
        return Delivered(status, latency)
    if status == 410:
        return Rejected("endpoint answered 410 Gone", status, latency, disable=True)
    if 300 <= status < 400:
        return Failed(f"redirect ({status}) not followed", status, latency)
    wait = parse_retry_after(retry_after) if status in RETRY_AFTER_STATUSES else None
    return Failed(f"endpoint answered {status}", status, latency, retry_after=wait)


def circuit_open(streak: int, open_until: float, threshold: int, now: float) -> bool:
    """Whether an endpoint's circuit is open: ``threshold`` consecutive failed attempts
    opened it until ``open_until``. After that it is half-open: one probe decides."""
    return streak >= threshold and now < open_until


def failing_too_long(failing_since: float, disable_after: float, now: float) -> bool:
    """Whether an endpoint that has failed continuously since ``failing_since`` (0: it is
    not failing) is disabled."""
    return bool(failing_since) and now - failing_since > disable_after
