"""The body stores' shared rules (hookline.bodies): a body is held to its cap and to its
declared length, and the filesystem store keeps nothing of a body it refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hookline.bodies import BodyLength, FilesystemBodyStore
from hookline.errors import BodyLengthMismatch, BodyTooLarge


async def pieces(size: int, piece: int = 1000) -> AsyncIterator[bytes]:
    for at in range(0, size, piece):
        yield b"x" * min(piece, size - at)


def files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_a_body_is_held_to_its_declared_length_and_its_cap() -> None:
    exact = BodyLength(limit=100, declared=10)
    exact.add(b"x" * 10)
    exact.end()
    assert exact.size == 10

    short = BodyLength(limit=100, declared=10)
    short.add(b"x" * 9)
    with pytest.raises(BodyLengthMismatch, match="declared as 10 bytes but 9 arrived"):
        short.end()

    long = BodyLength(limit=100, declared=10)
    with pytest.raises(BodyLengthMismatch, match="but more arrived"):
        long.add(b"x" * 11)

    with pytest.raises(BodyTooLarge):
        BodyLength(limit=100, declared=101)  # refused before a byte is read
    undeclared = BodyLength(limit=100, declared=None)
    undeclared.add(b"x" * 100)
    undeclared.end()
    with pytest.raises(BodyTooLarge):
        undeclared.add(b"x")


@pytest.mark.parametrize(("declared", "sent"), [(5000, 4999), (5000, 5001)])
async def test_filesystem_store_keeps_nothing_of_a_body_not_matching_its_length(
    tmp_path: Path, declared: int, sent: int
) -> None:
    store = FilesystemBodyStore(tmp_path)
    with pytest.raises(BodyLengthMismatch):
        await store.put("msg_liar", pieces(sent), 1 << 20, declared)
    assert files(tmp_path) == {}
    ref, size = await store.put("msg_true", pieces(5000), 1 << 20, 5000)
    assert size == 5000
    assert files(tmp_path) == {ref: 5000}
