"""Generated hostile requests against the front door: hypothesis over raw bytes.

Each example is one request from :func:`tests.fuzz.hostile.hostile_requests` — request
line, headers as raw bytes, framing, body size and the cuts and pauses it is sent
with — checked by :meth:`FrontDoor.check` against the receiver over real Redis.

The run is reproducible and bounded: derandomized (the same examples every run), no
example database, ``HOOKLINE_FUZZ_EXAMPLES`` examples (1000 by default), no per-example
deadline (every request is bounded by the door's own wait: the 1 s request deadline
here and a margin). A broken property is recorded rather than raised, so one run
reports every kind of breach instead of stopping at the first; hypothesis then has
nothing to shrink, and the report gives the shortest request seen for each breach.
The request count, the answers and the seconds are printed in the terminal summary.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from hookline.config import Config
from tests.fuzz.door import LIMITS, FrontDoor, Violation
from tests.fuzz.hostile import Hostile, hostile_requests

EXAMPLES = int(os.environ.get("HOOKLINE_FUZZ_EXAMPLES", "1000"))

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(240)]

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=False,
)


def findings_report(found: dict[tuple[str, str], list[tuple[Hostile, Violation]]]) -> str:
    lines = []
    for (rule, kind), seen in sorted(found.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        shortest, violation = min(seen, key=lambda hv: len(hv[0].wire))
        lines += [
            f"{rule} [{kind or '-'}]: {len(seen)} requests; the shortest:",
            f"    {shortest}",
            f"    -> {violation.detail}",
        ]
    return "\n".join(lines)


def test_generated_requests_keep_the_front_door_contract(
    config: Config,
    logged: Callable[[], list[logging.LogRecord]],
    summary: list[str],
) -> None:
    # A loop of the test's own: hypothesis runs each example as a plain call, and every
    # example uses the same receiver, which lives in that loop.
    found: dict[tuple[str, str], list[tuple[Hostile, Violation]]] = {}
    with asyncio.Runner() as runner:
        door = runner.run(FrontDoor.open(config, logged, request_timeout=1.0, **LIMITS))
        try:

            @FUZZ_SETTINGS
            @given(data=st.data())
            def one_request(data: st.DataObject) -> None:
                hostile = data.draw(
                    hostile_requests(door.keys, LIMITS["inline_limit"], LIMITS["max_body_bytes"])
                )
                for violation in runner.run(door.check(hostile)):
                    found.setdefault((violation.rule, violation.kind), []).append(
                        (hostile, violation)
                    )

            started = time.monotonic()
            one_request()
            seconds = time.monotonic() - started
        finally:
            runner.run(door.close())
    answers = ", ".join(f"{s}: {n}" for s, n in sorted(door.statuses.items()))
    summary.append(
        f"{sum(door.statuses.values())} generated requests and as many good ones "
        f"({door.requests} in all) in {seconds:.1f} s; answers to the generated ones: {answers}"
    )
    if found:
        pytest.fail("broken properties, by cause:\n" + findings_report(found), pytrace=False)
