"""Helpers the standalone bench scripts share (bench/gcs.py, bench/tracing.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Callable

# Pin the process under test and its load generator to different cores when there are two.
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if PINNED else argv


def wait_until(check: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not happen within {seconds} s")
