"""Where bodies larger than the inline limit live while their webhook is queued.

A :class:`BodyStore` takes a body as a stream of chunks and gives back a
reference that travels in the queue entry; the dispatcher streams it back by
that reference and deletes it after the webhook's final outcome. Whatever a crash
or an outage left behind, the dispatchers' body reaper finds by :meth:`BodyStore.older`
and removes when nothing in Redis references it (:mod:`hookline.dispatcher.reaper`).
Object names start with the UTC date (``YYYY/MM/DD/<webhook id>``); the reaper
considers nothing else in the folder or bucket.

:class:`FilesystemBodyStore` is the local stack's store and the first
implementation; the GCS store lives in ``hookline.gcs``. A body is only
visible under its final name once it is complete: a crash mid-upload never
leaves a reference pointing at a partial body.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from hookline.errors import BodyLengthMismatch, BodyMissing, BodyTooLarge, StoreUnavailable

CHUNK = 256 * 1024


def object_name(webhook_id: str, now: float | None = None) -> str:
    return time.strftime("%Y/%m/%d/", time.gmtime(now)) + webhook_id


# What object_name makes (and, in the filesystem store, a body still being written:
# ``<name>.part``). Anything else in the folder or bucket is not hookline's to remove.
_BODY_NAME = re.compile(r"\d{4}/\d{2}/\d{2}/[^/]+")


def is_body_name(name: str) -> bool:
    return _BODY_NAME.fullmatch(name) is not None


class BodyLength:
    """The bytes of a body so far, held to its cap and to its declared length."""

    def __init__(self, limit: int, declared: int | None) -> None:
        if declared is not None and declared > limit:
            raise BodyTooLarge(limit)
        self.limit = limit
        self.declared = declared
        self.size = 0

    def add(self, chunk: bytes) -> None:
        """Count a chunk before it is stored."""
        self.size += len(chunk)
        if self.size > self.limit:
            raise BodyTooLarge(self.limit)
        if self.declared is not None and self.size > self.declared:
            raise BodyLengthMismatch(self.declared, self.size)

    def end(self) -> None:
        """The body ended: before the step that makes it visible."""
        if self.declared is not None and self.size != self.declared:
            raise BodyLengthMismatch(self.declared, self.size)


class BodyStore(Protocol):
    async def put(
        self,
        webhook_id: str,
        chunks: AsyncIterator[bytes],
        limit: int,
        size: int | None = None,
    ) -> tuple[str, int]:
        """Store the chunks; returns (reference, size). ``size`` is the body's declared
        length when the sender gave one (``Content-Length``): a store may choose how to
        upload by it. Raises BodyTooLarge past ``limit``, BodyLengthMismatch when the
        chunks do not add up to ``size`` (nothing is left behind either way), and
        StoreUnavailable when the store cannot take it."""
        ...

    def open(self, ref: str) -> AsyncIterator[bytes]:
        """The body's chunks, in order. Raises BodyMissing when there is no such body and
        StoreUnavailable when it cannot be read now."""
        ...

    async def delete(self, ref: str) -> None:
        """Remove a body; a missing one counts as removed."""
        ...

    def older(self, cutoff: float) -> AsyncIterator[str]:
        """The reference of every body stored before ``cutoff`` (Unix seconds), including
        what a crashed writer left unfinished where the store keeps such a thing; for the
        body reaper. Raises StoreUnavailable when the store cannot be listed now."""
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
        self,
        webhook_id: str,
        chunks: AsyncIterator[bytes],
        limit: int,
        size: int | None = None,
    ) -> tuple[str, int]:
        ref = object_name(webhook_id)
        final = self._path(ref)
        tmp = final.with_name(final.name + ".part")
        length = BodyLength(limit, size)
        try:
            await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
            f = await asyncio.to_thread(open, tmp, "wb")
            try:
                async for chunk in chunks:
                    length.add(chunk)
                    await asyncio.to_thread(f.write, chunk)
                length.end()
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
        return ref, length.size

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

    async def older(self, cutoff: float) -> AsyncIterator[str]:
        """Files last written before ``cutoff``, ``.part`` files of writers that died
        included: a body being written is written to within the request's deadline."""
        try:
            refs = await asyncio.to_thread(_files_older, self.root, cutoff)
        except OSError as exc:
            raise StoreUnavailable(f"bodies: {exc}") from exc
        for ref in refs:
            yield ref

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


def _files_older(root: Path, cutoff: float) -> list[str]:
    refs = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            ref = os.path.relpath(path, root)
            if not is_body_name(ref):
                continue
            with contextlib.suppress(FileNotFoundError):  # delivered and deleted meanwhile
                if os.stat(path).st_mtime < cutoff:
                    refs.append(ref)
    return refs
