"""Helpers the bench scripts share (run.py, scale.py, gcs.py, tracing.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hookline.config import Config
from hookline.models import Webhook, new_id
from hookline.store import Store

# Pin the process under test and its load generator to different cores when there are two.
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if PINNED else argv


def wait_until(
    check: Callable[[], object],
    seconds: float,
    what: str,
    errors: tuple[type[Exception], ...] = (OSError,),
) -> None:
    """Poll ``check`` until it returns something true; ``errors`` it raises count as no."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(*errors):
            if check():
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not happen within {seconds} s")


SUT_CPU, LOAD_CPU = "0", "1"  # the process under test / everything else
BODY_BYTES = 1024  # the webhooks' body, as bench/loadgen.lua sends it by default


def body(size: int = BODY_BYTES) -> bytes:
    """A JSON body of exactly ``size`` bytes, the same one every generator sends."""
    return b'{"type":"bench","pad":"' + b"x" * (size - 25) + b'"}'


async def preload(
    redis_url: str, prefix: str, count: int, endpoints: tuple[str, ...], pool: str = "default"
) -> None:
    """Enqueue ``count`` webhooks of :func:`body` in ``pool``, taking ``endpoints`` in turn,
    5,000 at a time, as the receiver would write them."""
    store = Store.connect(Config(redis_url=redis_url, prefix=prefix))
    payload = body()
    headers = {"content-type": "application/json", "x-event-type": "bench"}
    try:
        for start in range(0, count, 5000):
            await asyncio.gather(
                *(
                    store.queue.enqueue(
                        pool,
                        Webhook(
                            id=new_id(),
                            endpoint=endpoints[i % len(endpoints)],
                            headers=headers,
                            body=payload,
                            size=len(payload),
                            created_ms=int(time.time() * 1000),
                        ),
                    )
                    for i in range(start, min(start + 5000, count))
                )
            )
    finally:
        await store.aclose()


class Backends:
    """A private redis-server and the processes a script starts, their output in ``folder``;
    :meth:`stop_all` stops every one of them, last started first."""

    script = "bench"
    stop_timeout = 20.0  # seconds a process gets after SIGTERM

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis_port = free_port()

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def spawn(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> Any:
        with open(self.folder / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def start_redis(self) -> None:
        redis = shutil.which("redis-server")
        if redis is None:
            raise SystemExit(f"{self.script}: redis-server is not installed (make deps)")
        args = ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.folder)]
        self.spawn(pinned(LOAD_CPU, [redis, *args]), "redis")
        wait_until(self._redis_answers, 10, "redis-server")

    def _redis_answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.redis_port), 0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def start_hookline(self, role: str, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """``hookline ROLE`` on the process-under-test core, with ``env`` as its environment."""
        argv = pinned(SUT_CPU, [sys.executable, "-m", "hookline.cli", "--log-level", "WARNING"])
        return self.spawn([*argv, role], name, env)  # type: ignore[no-any-return]

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
