"""The fuzz tier: the receiver's front door under hostile and careless senders (issue 16).

Requests go over raw sockets (``raw.py``) so that anything can be sent: header values
that are not UTF-8, broken request lines, contradicting framings, absurd chunk sizes,
a thousand headers, slow trickles. The receiver is the real one over a real Redis, with
no dispatcher (``door.py`` says what is checked after every request). Three kinds of
test use it: scripted requests, one per finding of the issue (``test_hostile.py``); a
hypothesis run over generated requests (``test_fuzz.py``); slow clients against the
request deadline (``test_slow_clients.py``). The whole tier is bounded: under a minute
and a half on two cores, the generated run (1,000 requests) about 25 s of it; each
scripted case starts a receiver of its own, so no case sees another's leftovers.

Every test module here is marked ``fuzz``; ``pytest -m "not fuzz"`` leaves the tier out.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import pytest

from hookline.config import Config
from tests.fuzz.door import LIMITS, FrontDoor

# The fuzz run's figures (request count, answers, seconds), printed in the terminal summary.
SUMMARY = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(SUMMARY, [])
    if lines:
        terminalreporter.write_sep("-", "fuzz tier")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def summary(pytestconfig: pytest.Config) -> list[str]:
    return pytestconfig.stash.setdefault(SUMMARY, [])


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    """What the receiver's loggers (``hookline``, ``aiohttp``) logged at WARNING and above."""
    caplog.set_level(logging.WARNING, logger="aiohttp")
    caplog.set_level(logging.WARNING, logger="hookline")
    return lambda: caplog.records


@pytest.fixture
async def front_door(
    config: Config, logged: Callable[[], list[logging.LogRecord]]
) -> AsyncIterator[FrontDoor]:
    """A receiver with a 2 s request deadline over the session's Redis, no dispatcher."""
    door = await FrontDoor.open(config, logged, request_timeout=2.0, idle_timeout=2.5, **LIMITS)
    yield door
    await door.close()
