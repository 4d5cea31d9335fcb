"""The delivery policy (hookline.dispatcher.policy): what an answer means, the backoff
schedule, Retry-After, when a delivery is given up, the circuit's state and auto-disable;
pure functions of the outcome, the webhook, the spec and the time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from hookline.dispatcher.policy import (
    GiveUp,
    Retry,
    backoff,
    circuit_open,
    classify,
    decide,
    failing_too_long,
    parse_retry_after,
)
from hookline.models import Delivered, Failed, Rejected, RetryPolicy, Webhook

POLICY = RetryPolicy(attempts=5, base_seconds=2.0, max_backoff_seconds=30.0, max_age_seconds=3600)
NOW = 1_700_000_000.0


def webhook(attempt: int, age: float = 0.0) -> Webhook:
    """A webhook after ``attempt`` attempts, accepted ``age`` seconds before NOW."""
    return Webhook("msg_1", "shop/orders", {}, attempt=attempt, created_ms=int((NOW - age) * 1000))


@pytest.mark.parametrize(
    ("attempt", "delay"), [(0, 2), (1, 2), (2, 4), (3, 8), (4, 16), (5, 30), (20, 30)]
)
def test_backoff_doubles_from_the_base_up_to_the_cap_with_a_quarter_of_jitter(
    attempt: int, delay: float
) -> None:
    rng = random.Random(attempt)
    delays = [backoff(POLICY, attempt, rng) for _ in range(200)]
    assert all(0.75 * delay <= d <= 1.25 * delay for d in delays)
    # spread over the whole band, so a burst of failures does not come back as a burst
    assert min(delays) < 0.8 * delay and max(delays) > 1.2 * delay


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120
    when = datetime.now(UTC) + timedelta(seconds=90)
    assert parse_retry_after(when.strftime("%a, %d %b %Y %H:%M:%S GMT")) == pytest.approx(90, abs=2)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_retry_after_of_a_date_already_past_means_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 0
    assert parse_retry_after(" 30 ", now=NOW) == 30
    assert parse_retry_after("-5", now=NOW) is None
    assert parse_retry_after("", now=NOW) is None


def test_a_failure_is_retried_after_the_backoff_until_the_attempts_run_out() -> None:
    failed = Failed("HTTP 500", status=500)
    for attempt in range(1, POLICY.attempts):
        outcome = decide(failed, webhook(attempt), POLICY, 3600.0, NOW)
        assert isinstance(outcome, Retry), attempt
        expected = min(30.0, 2.0 * 2 ** (attempt - 1))
        assert 0.75 * expected <= outcome.delay <= 1.25 * expected
    assert decide(failed, webhook(POLICY.attempts), POLICY, 3600.0, NOW) == GiveUp(
        "gave up after 5 attempts: HTTP 500"
    )


def test_the_endpoints_retry_after_replaces_the_backoff_up_to_the_configured_maximum() -> None:
    def asked(seconds: float) -> Retry | GiveUp:
        return decide(Failed("HTTP 429", 429, retry_after=seconds), webhook(1), POLICY, 600.0, NOW)

    assert asked(45) == Retry(45)  # longer than the backoff of 2 s: the endpoint's wish
    assert asked(0.5) == Retry(0.5)  # shorter too
    assert asked(86400) == Retry(600)  # bounded by retry_after_max
    assert asked(-3) == Retry(0)


def test_a_retry_that_would_come_after_the_maximum_age_gives_up_now() -> None:
    # the fourth backoff is 16 s ± 25 %: at least 12 s, past the hour
    outcome = decide(Failed("timeout"), webhook(4, age=3590), POLICY, 3600.0, NOW)
    assert outcome == GiveUp("gave up at age 3590 s (max 3600 s): timeout")
    # a Retry-After that still fits within the age is honoured
    fits = decide(Failed("HTTP 503", 503, retry_after=5), webhook(4, age=3590), POLICY, 3600, NOW)
    assert fits == Retry(5)


def test_an_endpoints_answer_is_classified_as_a_user_of_standard_webhooks_expects() -> None:
    assert isinstance(classify(204, None, 0.01), Delivered)
    gone = classify(410, None, 0.01)
    assert isinstance(gone, Rejected) and gone.disable, "410 Gone disables the endpoint"
    moved = classify(301, None, 0.01)
    assert isinstance(moved, Failed) and "not followed" in moved.reason
    throttled = classify(429, "7", 0.01)
    assert isinstance(throttled, Failed) and throttled.retry_after == 7.0
    # Retry-After counts only where the status says "come back later".
    assert isinstance(failed := classify(500, "7", 0.01), Failed) and failed.retry_after is None


def test_the_circuit_is_open_from_the_threshold_until_its_cooldown_ends() -> None:
    assert not circuit_open(streak=9, open_until=NOW + 30, threshold=10, now=NOW)
    assert circuit_open(streak=10, open_until=NOW + 30, threshold=10, now=NOW)
    assert not circuit_open(streak=12, open_until=NOW + 30, threshold=10, now=NOW + 30), "half-open"


def test_an_endpoint_is_disabled_only_after_failing_longer_than_disable_after() -> None:
    assert not failing_too_long(0.0, 3600, now=NOW), "not failing"
    assert not failing_too_long(NOW - 3600, 3600, now=NOW)
    assert failing_too_long(NOW - 3601, 3600, now=NOW)
