"""The OTLP exporter's settings (hookline.export), read without exporting anything;
tests/test_export.py posts real batches to a real HTTP server."""

from __future__ import annotations

import pytest

from hookline.errors import InvalidSpec
from hookline.export import parse_headers


def test_a_bad_header_setting_fails_at_start() -> None:
    with pytest.raises(InvalidSpec, match="OTEL_EXPORTER_OTLP_HEADERS"):
        parse_headers("authorization")


def test_the_header_setting_is_read_as_url_encoded_pairs() -> None:
    raw = "authorization=Bearer%20abc, x-tenant=acme,,"
    assert parse_headers(raw) == {"authorization": "Bearer abc", "x-tenant": "acme"}
