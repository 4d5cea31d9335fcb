"""Real peers for the tests: redis-server, fake-gcs-server and HTTP endpoints on loopback.

Nothing here is a mock: ``RedisServer`` runs Debian's ``redis-server`` binary,
``GcsServer`` the ``fake-gcs-server`` built from its Go module, ``Endpoint`` is a
real aiohttp server whose behaviour each test programs. A missing binary fails
the test with the reason, it is never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {hint}", pytrace=False)
    return path


REPO = Path(__file__).resolve().parent.parent


def tool_binary(name: str) -> str:
    """A test peer built by ``make tools`` (kube-apiserver, etcd, kubectl, helm, jaeger,
    fake-gcs-server, promtool, ...), from ``HOOKLINE_BIN_DIR`` or the repository's
    ``.cache/bin``."""
    folder = Path(os.environ.get("HOOKLINE_BIN_DIR", REPO / ".cache" / "bin"))
    path = folder / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make tools` (see tools/README.md)", pytrace=False)
    return str(path)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample a hookline process serves on ``/metrics`` at ``port``, parsed as
    Prometheus parses it: (sample name, labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class PeerProcess:
    """A server process on a free loopback port that a test can stop, kill and restart."""

    name = "peer"
    proc: subprocess.Popen[bytes] | None = None

    def answers(self) -> bool:
        raise NotImplementedError

    def wait_until_answering(self, seconds: float = 10) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}", pytrace=False)
            with contextlib.suppress(OSError):
                if self.answers():
                    return
            time.sleep(0.05)
        pytest.fail(f"{self.name} did not answer within {seconds:g} s", pytrace=False)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(10)
        self.proc = None


class RedisServer(PeerProcess):
    """A private redis-server on a free loopback port; restartable with its data (AOF)."""

    name = "redis-server"

    def __init__(self, folder: Path, appendonly: bool = True) -> None:
        self.exe = require_binary("redis-server", "run `make test` (it installs redis-server)")
        self.folder = folder
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.wait_until_answering()

    def answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")


class GcsServer(PeerProcess):
    """A private fake-gcs-server (built by ``make tools``) on a free loopback port.

    Objects live under ``folder`` (the filesystem backend), so a restart on the same
    port brings them back, as GCS would after an outage."""

    name = "fake-gcs-server"

    def __init__(self, folder: Path) -> None:
        self.exe = tool_binary("fake-gcs-server")
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder.parent / f"fake-gcs-server-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.exe,
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    str(self.port),
                    "-backend",
                    "filesystem",
                    "-filesystem-root",
                    str(self.folder),
                    "-log-level",
                    "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_until_answering()

    def answers(self) -> bool:
        self.request("GET", "/storage/v1/b")
        return True

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON API call, for fixtures and assertions (not through hookline's client)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def create_bucket(self, name: str) -> None:
        self.request("POST", "/storage/v1/b?project=test", {"name": name})

    def objects(self, bucket: str) -> dict[str, int]:
        """Every object of ``bucket``: name → size."""
        listing = self.request("GET", f"/storage/v1/b/{bucket}/o")
        return {o["name"]: int(o["size"]) for o in listing.get("items", [])}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


async def ok(_: web.Request, __: int) -> web.StreamResponse:
    return web.json_response({"ok": True})


def status(code: int, headers: dict[str, str] | None = None) -> Behaviour:
    async def answer(_: web.Request, __: int) -> web.StreamResponse:
        return web.Response(status=code, text=f"status {code}", headers=headers)

    return answer


def fail_then_ok(failures: int, code: int = 500) -> Behaviour:
    """The first ``failures`` requests for a webhook id get ``code``, then 200."""

    async def answer(request: web.Request, nth: int) -> web.StreamResponse:
        if nth <= failures:
            return web.Response(status=code, text="not yet")
        return web.json_response({"ok": True})

    return answer


def slow(seconds: float) -> Behaviour:
    async def answer(_: web.Request, __: int) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response({"ok": True})

    return answer


def redirect(location: str) -> Behaviour:
    async def answer(_: web.Request, __: int) -> web.StreamResponse:
        raise web.HTTPFound(location)

    return answer


async def close_connection(request: web.Request, _: int) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(0.1)
    raise ConnectionResetError("closed by the test endpoint")


@dataclass
class Endpoint:
    """A real HTTP server on loopback; each path answers as its behaviour says."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    concurrent: int = 0  # requests being answered now
    max_concurrent: int = 0
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, behaviour: Behaviour) -> str:
        self.behaviours[path] = behaviour
        return self.url(path)

    async def start(self) -> None:
        self._arrived = asyncio.Condition()
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        # per path: a source's event reaches several paths with one webhook-id
        wid = headers.get("webhook-id", "")
        self._counts[request.path, wid] += 1
        nth = self._counts[request.path, wid]
        self.received.append(Received(request.path, headers, body, time.time()))
        assert self._arrived is not None
        async with self._arrived:
            self._arrived.notify_all()
        behaviour = self.behaviours.get(request.path, ok)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            return await behaviour(request, nth)
        finally:
            self.concurrent -= 1

    def reset(self) -> None:
        self.received.clear()
        self._counts.clear()

    def ids(self, path: str | None = None) -> Counter[str]:
        return Counter(
            r.headers.get("webhook-id", "") for r in self.received if path is None or r.path == path
        )

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked after every request."""
        assert self._arrived is not None
        async with self._arrived:
            await self._arrived.wait_for(predicate)

    async def wait_for(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        """Wait until ``predicate()`` holds; fail naming ``what`` after ``seconds`` seconds."""
        try:
            await asyncio.wait_for(self.until(predicate), seconds)
        except TimeoutError:
            pytest.fail(f"timed out after {seconds} s waiting for {what}", pytrace=False)


async def eventually(
    check: Callable[[], Awaitable[bool]], seconds: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``check`` where no event can be awaited; fail with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    pytest.fail(f"timed out after {seconds} s waiting for {what}", pytrace=False)


async def wait_ready(port: int, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until the ``/readyz`` on ``port`` answers 200 (30 s); a process that exits fails."""

    async def ready() -> bool:
        assert proc is None or proc.poll() is None, f"the {what} process exited"
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/readyz") as resp,
            ):
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(ready, 30, f"the {what}'s /readyz")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
