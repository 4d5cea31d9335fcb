"""``make dev TRACING=1`` as a user runs it: ``hookline dev --tracing`` starts its own
Jaeger, the webhook sent with the line it prints is traced from the sender to the demo
sink, and the link it prints after the first delivery names that trace in that Jaeger.

The stack runs as a subprocess with the repository's demo endpoint manifest; only its
ports differ from the defaults (a free set each run), and its Redis is the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from tests.peers import REPO, RedisServer, free_port, tool_binary
from tests.tracing.jaeger import Span, spans

LINK = re.compile(
    r"first webhook delivered; its trace: (http://127\.0\.0\.1:(\d+)/trace/([0-9a-f]{32}))"
)


def free_pair() -> int:
    """A free port whose predecessor is free too (Jaeger's gRPC listeners take N-1)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port - 1))
            except OSError:
                continue
        return port
    pytest.fail("no two adjacent free ports on 127.0.0.1", pytrace=False)


@dataclass
class DevStack:
    """A running ``hookline dev`` and what it printed so far."""

    proc: asyncio.subprocess.Process
    folder: Path
    jaeger_port: int
    lines: list[str] = field(default_factory=list)

    async def line_matching(
        self, pattern: re.Pattern[str], seconds: float, what: str
    ) -> re.Match[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + seconds
        while True:
            for line in self.lines:
                if found := pattern.search(line):
                    return found
            left = deadline - time.monotonic()
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), max(left, 0.01))
            except TimeoutError:
                raw = b""
            if not raw:
                log = (self.folder / "stderr.log").read_text(errors="replace")[-3000:]
                pytest.fail(
                    f"hookline dev printed no {what} within {seconds} s; it printed:\n"
                    + "\n".join(self.lines)
                    + f"\nits log:\n{log}",
                    pytrace=False,
                )
            self.lines.append(raw.decode().rstrip("\n"))

    def jaeger_processes(self) -> list[int]:
        """Processes running this stack's Jaeger config (in its own session, so found by
        their command line, which names the stack's folder)."""
        config = str(self.folder / "var" / "jaeger" / "jaeger.yaml")
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if config in (entry / "cmdline").read_bytes().decode(errors="replace"):
                        found.append(int(entry.name))
        return found


@pytest.fixture
async def dev_stack(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[DevStack]:
    sink_port, jaeger_port, otlp_port = free_port(), free_pair(), free_pair()
    endpoints = tmp_path / "endpoints"
    endpoints.mkdir()
    manifest = (REPO / "examples" / "endpoints" / "demo.yaml").read_text()
    assert "http://127.0.0.1:9000/" in manifest
    (endpoints / "demo.yaml").write_text(manifest.replace(":9000/", f":{sink_port}/"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        PYTHONUNBUFFERED="1",
        HOOKLINE_REDIS_URL=redis_server.url,
        HOOKLINE_PREFIX=f"dev{uuid.uuid4().hex[:8]}",
        HOOKLINE_RECEIVER_PORT=str(free_port()),
        HOOKLINE_DISPATCHER_PORT=str(free_port()),
        HOOKLINE_JAEGER_BINARY=tool_binary("jaeger"),
    )
    command = [sys.executable, "-m", "hookline", "dev", "--tracing", "--endpoints", str(endpoints)]
    command += ["--sink-port", str(sink_port)]
    command += ["--jaeger-port", str(jaeger_port), "--otlp-port", str(otlp_port)]
    with log_file(tmp_path / "stderr.log") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr
        )
    stack = DevStack(proc, tmp_path, jaeger_port)
    try:
        yield stack
    finally:
        if proc.returncode is None:  # the test failed: Ctrl-C, then kill
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for pid in stack.jaeger_processes():  # left behind only if the stack was killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def log_file(path: Path) -> BinaryIO:
    return path.open("wb")


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def get_json(url: str) -> Any:
    return json.loads(get_text(url))


def only(found: list[Span], service: str, kind: str, name: str) -> Span:
    matches = [s for s in found if (s.service, s.kind, s.name) == (service, kind, name)]
    assert len(matches) == 1, f"expected one {service} {kind} {name!r} span in {found}"
    return matches[0]


async def test_make_dev_tracing_prints_the_first_webhooks_trace_link_in_its_own_jaeger(
    dev_stack: DevStack,
) -> None:
    await dev_stack.line_matching(re.compile(r"^started jaeger at "), 60, "'started jaeger'")
    await dev_stack.line_matching(re.compile(r"^or, traced from the sender on:$"), 30, "send")
    send = re.compile(r"^  (OTEL_EXPORTER_OTLP_ENDPOINT=\S+ \S+ send --url http://\S+ .*)$")
    send_line = (await dev_stack.line_matching(send, 10, "a hookline send line")).group(1)
    assert "--key dev-demo-key" in send_line

    # the printed line, run by a shell as a user pastes it
    sent = await asyncio.create_subprocess_shell(
        send_line, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(sent.communicate(), 30)
    assert sent.returncode == 0, output.decode()
    assert output.startswith(b"202 "), output.decode()

    delivered = re.compile(r"^sink /hooks/demo .*signature=valid")
    await dev_stack.line_matching(delivered, 30, "the delivery")
    link = await dev_stack.line_matching(LINK, 30, "trace link")
    url, port, trace_id = link.groups()
    assert int(port) == dev_stack.jaeger_port
    if os.environ.get("HOOKLINE_JAEGER_UI"):
        page = await asyncio.to_thread(get_text, url)
        assert "<title>Jaeger UI</title>" in page, page[:500]
    else:
        needs = re.compile(r"^  the UI page needs HOOKLINE_JAEGER_UI .*the API has it: (\S+)$")
        api = (await dev_stack.line_matching(needs, 5, "the UI's note")).group(1)
        assert api == f"http://127.0.0.1:{port}/api/traces/{trace_id}"

    # the link names a trace the stack's Jaeger holds, sender to endpoint
    answer = await asyncio.to_thread(get_json, url.replace("/trace/", "/api/traces/"))
    found = spans(answer["data"][0])
    producers = [s for s in found if s.kind == "producer"]
    assert len(producers) == 1, found
    stream = producers[0].name.removeprefix("send ")
    sender = only(found, "hookline-send", "client", "POST")
    server = only(found, "hookline-receiver", "server", "POST /webhooks/send")
    enqueue = only(found, "hookline-receiver", "producer", f"send {stream}")
    attempt = only(found, "hookline-dispatcher", "consumer", f"process {stream}")
    delivery = only(found, "hookline-dispatcher", "client", "POST")
    endpoint = only(found, "hookline-sink", "server", "POST /hooks/demo")
    assert len(found) == 6, found
    assert sender.parent is None
    assert server.parent == sender.id
    assert enqueue.parent == server.id
    assert attempt.parent == enqueue.id
    assert delivery.parent == attempt.id
    assert endpoint.parent == delivery.id
    assert attempt.tags["hookline.outcome"] == "delivered"
    assert delivery.tags["http.response.status_code"] == 200
    assert endpoint.tags["http.response.status_code"] == 200

    # Ctrl-C stops the stack and its Jaeger
    assert dev_stack.jaeger_processes()
    dev_stack.proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(dev_stack.proc.wait(), 40) == 0
    assert dev_stack.jaeger_processes() == []
