"""Where bodies larger than the inline limit live while their webhook is queued.

A :class:`BodyStore` takes a body as a stream of chunks and gives back a
reference that travels in the queue entry; the dispatcher streams it back by
that reference and deletes it after the webhook's final outcome. Object names
start with the UTC date (``YYYY/MM/DD/``), so a bucket lifecycle rule or a
``find -mtime`` can expire whatever a crash left behind.

:class:`FilesystemBodyStore` is the local stack's store and the first
implementation; the GCS store lives in ``hookline.gcs``. A body is only
visible under its final name once it is complete: a crash mid-upload never
leaves a reference pointing at a partial body.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from hookline.errors import BodyMissing, BodyTooLarge, StoreUnavailable

CHUNK = 256 * 1024


def object_name(webhook_id: str, now: float | None = None) -> str:
    return time.strftime("%Y/%m/%d/", time.gmtime(now)) + webhook_id


class BodyStore(Protocol):
    async def put(
        self, webhook_id: str, chunks: AsyncIterator[bytes], limit: int
    ) -> tuple[str, int]:
        """Store the chunks; returns (reference, size). Raises BodyTooLarge past ``limit``
        (nothing is left behind) and StoreUnavailable when the store cannot take it."""
        ...

    def open(self, ref: str) -> AsyncIterator[bytes]:
        """The body's chunks, in order. Raises BodyMissing when there is no such body and
        StoreUnavailable when it cannot be read now."""
        ...

    async def delete(self, ref: str) -> None:
        """Remove a body; a missing one counts as removed."""
        ...

    async def check(self) -> None:
        """Raise StoreUnavailable when the store cannot be used (for /readyz)."""
        ...

    async def close(self) -> None: ...


class FilesystemBodyStore:
    """Bodies as files under one folder; writes go to a temporary name, then are renamed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, ref: str) -> Path:
        path = (self.root / ref).resolve()
        if self.root.resolve() not in path.parents:
            raise StoreUnavailable(f"bodies: reference {ref!r} is outside the store")
        return path

    async def put(
        self, webhook_id: str, chunks: AsyncIterator[bytes], limit: int
    ) -> tuple[str, int]:
        ref = object_name(webhook_id)
        final = self._path(ref)
        tmp = final.with_name(final.name + ".part")
        size = 0
        try:
            await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
            f = await asyncio.to_thread(open, tmp, "wb")
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise BodyTooLarge(limit)
                    await asyncio.to_thread(f.write, chunk)
                await asyncio.to_thread(f.flush)
                await asyncio.to_thread(os.fsync, f.fileno())
            finally:
                await asyncio.to_thread(f.close)
            await asyncio.to_thread(os.replace, tmp, final)
        except OSError as exc:
            await asyncio.to_thread(_unlink, tmp)
            raise StoreUnavailable(f"bodies: {exc}") from exc
        except BaseException:
            await asyncio.to_thread(_unlink, tmp)
            raise
        return ref, size

    async def open(self, ref: str) -> AsyncIterator[bytes]:
        path = self._path(ref)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as exc:
            raise BodyMissing(f"bodies: {ref} is gone") from exc
        except OSError as exc:
            raise StoreUnavailable(f"bodies: {exc}") from exc
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()

    async def delete(self, ref: str) -> None:
        try:
            await asyncio.to_thread(_unlink, self._path(ref))
        except OSError as exc:
            raise StoreUnavailable(f"bodies: {exc}") from exc

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"bodies: {exc}") from exc

    async def close(self) -> None:
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
