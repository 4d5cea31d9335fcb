"""The retry policy (hookline.dispatcher.policy): the backoff schedule, Retry-After, and
when a delivery is given up; pure functions of the outcome, the webhook and the spec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hookline.dispatcher.policy import parse_retry_after


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120
    when = datetime.now(UTC) + timedelta(seconds=90)
    assert parse_retry_after(when.strftime("%a, %d %b %Y %H:%M:%S GMT")) == pytest.approx(90, abs=2)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
