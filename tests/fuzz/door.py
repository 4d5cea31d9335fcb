"""The receiver under hostile input, and what must hold after every request (issue 16).

:class:`FrontDoor` is a real receiver over real Redis (``tests.stack.Stack`` with no
dispatcher, so the pool's stream grows only by accepted webhooks) with three
endpoints: one that takes webhooks, one paused, one disabled. :meth:`FrontDoor.check`
sends one request over a raw socket and returns every property it broke:

- the answer's status is in :data:`ANSWERS`, the documented set — never a 500, and a
  503 only as the documented JSON ``store_unavailable`` with ``Retry-After``;
- every answer but a 202 is ``application/json`` ``{"error": code, "reason": text}``;
- the stream grows by exactly one entry per 202 (none for a repeated Idempotency-Key),
  and that entry carries the id the 202 gave;
- a good request right after still gets its 202;
- no stored body file is left without a stream entry referencing it (and every
  entry's body is there);
- the ``hookline`` and ``aiohttp`` loggers logged no traceback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hookline.config import Config
from hookline.store.queue import unpack
from tests.fuzz.hostile import Hostile, Keys, good_request
from tests.fuzz.raw import Exchange, exchange
from tests.stack import Stack

# The answers receiver/README.md and issue 16 document for POST /webhooks/send, and what
# HTTP itself calls each refusal the receiver must be able to make: 400 a malformed
# request, 404/405 another path or method, 408 the deadline, 413 the body cap, 414 a
# request line too long, 417 an Expect it cannot meet, 431 header fields too large.
# 415 is not among them: the receiver relays any content type.
ANSWERS = frozenset({202, 400, 401, 404, 405, 408, 409, 413, 414, 417, 431, 503})

# Small limits make bodies over the inline limit and over the cap cheap to send.
LIMITS = {"inline_limit": 1024, "max_body_bytes": 8192}

# Seconds on top of the request deadline before a missing answer counts as none: enough
# for a loaded two-core machine, far below what a connection without a deadline lasts.
MARGIN = 1.5


@dataclass(frozen=True)
class Violation:
    rule: str  # which property, in words
    detail: str  # what was seen
    kind: str = ""  # what sort of breach, to group a fuzz run's findings by cause

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


@dataclass(repr=False)
class FrontDoor:
    stack: Stack
    keys: Keys
    records: Callable[[], list[logging.LogRecord]]  # what the loggers logged so far
    requests: int = 0  # requests sent, good ones included
    statuses: dict[str, int] = field(default_factory=dict)  # hostile answers by status
    _ids: set[str] = field(default_factory=set)  # webhook ids the stream holds
    _refs: set[str] = field(default_factory=set)  # body references the stream holds
    _orphans: set[str] = field(default_factory=set)  # body files already reported
    _last_entry: str = "-"  # the stream id read up to
    _logged: int = 0  # records already looked at

    @classmethod
    async def open(
        cls, config: Config, records: Callable[[], list[logging.LogRecord]], **settings: Any
    ) -> FrontDoor:
        stack = await Stack(replace(config, **settings)).start(dispatchers=0)
        try:
            url = "http://127.0.0.1:9/never-delivered"  # no dispatcher runs
            _, good = await stack.add_endpoint(url, "good", forwardHeaders=["X-Event-Type"])
            _, paused = await stack.add_endpoint(url, "paused", paused=True)
            disabled_ep, disabled = await stack.add_endpoint(url, "disabled")
            await stack.registry.disable(disabled_ep.id, "fuzz: disabled on purpose")
            await stack.propagated(
                lambda c: c.disabled_reason(disabled_ep.id) is not None, "the disabled endpoint"
            )
        except BaseException:
            await stack.stop()
            raise
        return cls(stack, Keys(good, paused, disabled), records)

    async def close(self) -> None:
        await self.stack.stop()

    def __repr__(self) -> str:
        return f"<FrontDoor {self.stack.url} deadline {self.config.request_timeout} s>"

    @property
    def config(self) -> Config:
        return self.stack.config

    @property
    def port(self) -> int:
        return self.config.receiver_port

    @property
    def wait(self) -> float:
        """How long an answer may take: the request deadline and a margin."""
        return self.config.request_timeout + MARGIN

    async def send(self, request: Hostile) -> Exchange:
        self.requests += 1
        return await exchange(self.port, request.pieces(), self.wait)

    async def _new_entries(self) -> list[tuple[str, str | None]]:
        """(webhook id, body reference) of the entries added since the last call."""
        stream = self.stack.queue.stream("default")
        start = "-" if self._last_entry == "-" else "(" + self._last_entry
        found = []
        for entry_id, fields in await self.stack.redis.xrange(stream, start, "+"):
            self._last_entry = entry_id.decode()
            webhook = unpack(fields)
            found.append((webhook.id, webhook.body_ref))
        return found

    def _stored_bodies(self) -> set[str]:
        root = Path(self.config.body_dir)
        return {
            str(Path(folder, name).relative_to(root))
            for folder, _, names in os.walk(root)
            for name in names
        }

    def tracebacks(self) -> list[Violation]:
        """Tracebacks the receiver's loggers logged since the last call."""
        records = self.records()
        new, self._logged = records[self._logged :], len(records)
        return [
            Violation(
                "a refusal logged a traceback",
                f"{r.name} {r.levelname} {r.getMessage()!r}: {_exc_name(r)}: {r.exc_info[1]}",
                f"{_exc_cause(r)} ({r.name})",
            )
            for r in new
            if r.exc_info and r.name.split(".")[0] in ("hookline", "aiohttp")
        ]

    async def _accounted(self, accepted: list[str], what: str) -> list[Violation]:
        """The stream grew by exactly the entries of ``accepted`` (202 ids) that are new."""
        entries = await self._new_entries()
        expected = [i for i in dict.fromkeys(accepted) if i not in self._ids]
        got = [i for i, _ in entries]
        self._ids.update(got)
        self._refs.update(ref for _, ref in entries if ref)
        if got != expected:
            return [
                Violation(
                    "the stream grows by exactly one entry per 202",
                    f"{what}: {len(got)} new entries {got} for the accepted ids {expected}",
                )
            ]
        return []

    def _answer_violations(self, ex: Exchange) -> list[Violation]:
        if ex.response is None:
            kind = "unparseable" if ex.error else "closed" if ex.closed else "still open"
            return [Violation("every request gets an answer", str(ex), kind)]
        r = ex.response
        kind = f"{r.status} {r.media_type or '(none)'}"
        found = []
        if r.status not in ANSWERS:
            found.append(Violation("the status is in the documented set", str(r), kind))
        if r.status == 202:
            body = r.json()
            if not (isinstance(body, dict) and isinstance(body.get("id"), str)):
                found.append(Violation("a 202 carries the webhook's id", str(r)))
            return found
        body = r.json()
        if r.media_type != "application/json" or not (
            isinstance(body, dict)
            and isinstance(body.get("error"), str)
            and isinstance(body.get("reason"), str)
        ):
            found.append(Violation('every refusal is JSON {"error", "reason"}', str(r), kind))
        if r.status == 503 and (
            r.header("Retry-After") is None
            or not isinstance(body, dict)
            or body.get("error") not in ("store_unavailable", "registry_unavailable")
        ):
            found.append(Violation("a 503 is the documented store_unavailable", str(r), kind))
        return found

    async def check(self, request: Hostile, right: frozenset[int] | None = None) -> list[Violation]:
        """Send ``request``, then a good one; every property either of them broke (and,
        with ``right``, whether the answer's status is one of those)."""
        ex = await self.send(request)
        status = str(ex.response.status) if ex.response else "none"
        self.statuses[status] = self.statuses.get(status, 0) + 1
        found = self._answer_violations(ex)
        if right is not None and ex.response is not None and ex.response.status not in right:
            found.append(
                Violation(f"the answer is one of {sorted(right)}", str(ex.response), status)
            )
        accepted = []
        if ex.response is not None and ex.response.status == 202:
            body = ex.response.json()
            if isinstance(body, dict) and isinstance(body.get("id"), str):
                accepted.append(body["id"])
        found += await self._accounted(accepted, f"after a {status}")

        good = await self.send(good_request(self.keys.good))
        if good.response is None or good.response.status != 202:
            found.append(Violation("a good request still gets 202 after any request", str(good)))
        else:
            found += await self._accounted([good.response.json()["id"]], "after the good request")

        stored = self._stored_bodies()
        if orphans := stored - self._refs - self._orphans:
            self._orphans |= orphans  # each one is reported once, with the request that left it
            found.append(
                Violation(
                    "no stored body without an entry", f"{len(orphans)} left: {sorted(orphans)}"
                )
            )
        if missing := self._refs - stored:
            found.append(Violation("every entry's body is stored", f"missing: {sorted(missing)}"))
        self._refs -= self._refs - stored  # report each missing one once
        return found + self.tracebacks()


def _exc_name(record: logging.LogRecord) -> str:
    exc = record.exc_info[0] if record.exc_info else None
    return exc.__name__ if exc else "?"


def _exc_cause(record: logging.LogRecord) -> str:
    """The exception's type, and for aiohttp's parser errors the first line of their
    message ("Duplicate Content-Length"), which tells one refusal from another."""
    exc = record.exc_info[1] if record.exc_info else None
    message = getattr(exc, "message", None)
    if isinstance(message, str) and message.strip():
        first = message.strip().splitlines()[0].rstrip(":")
        return f"{_exc_name(record)}: {first[:60]}"
    return _exc_name(record)


def report(violations: list[Violation], request: Hostile | None = None) -> str:
    head = f"{request}\n" if request is not None else ""
    return head + "\n".join(f"  - {v}" for v in violations)
