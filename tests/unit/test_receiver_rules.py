"""The receiver's rule for header values it stores and forwards."""

from __future__ import annotations

import pytest

from hookline.receiver.app import _printable


@pytest.mark.parametrize("value", ["", "whk_abc-123", "a b", "a\tb", "\t", " ~!", "x" * 300])
def test_visible_ascii_space_and_tab_are_taken(value: str) -> None:
    assert _printable(value)


@pytest.mark.parametrize(
    "value", ["a\x7fb", "a\x00", "line\nbreak", "\r", "\x1f", "café", "\udc80", "a\u2028"]
)
def test_control_and_non_ascii_characters_are_refused(value: str) -> None:
    assert not _printable(value)
