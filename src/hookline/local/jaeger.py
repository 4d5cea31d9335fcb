"""The local stack's Jaeger: what ``hookline dev --tracing`` traces into.

:class:`LocalJaeger` runs the Jaeger v2 all-in-one that ``make dev TRACING=1`` builds
(``.cache/bin/jaeger``, ``HOOKLINE_JAEGER_BINARY``) on loopback: OTLP on
127.0.0.1:4318 (HTTP) and :4317 (gRPC), the UI and its API on 127.0.0.1:16686,
in-memory storage. Built from its Go module the binary serves a placeholder page,
not the UI: a Jaeger UI built elsewhere (``HOOKLINE_JAEGER_UI``, see
tools/README.md) is served through ``jaeger_query``'s ``ui.assets_path``.
:func:`ui_problem` says whether a folder is such a build; the browser tests use it too.

:meth:`LocalJaeger.wait_for_trace` reads a trace back through the API the UI itself uses, so
the stack prints a trace's link only once the page can show it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from hookline.errors import HooklineError

Trace = dict[str, Any]  # one trace as Jaeger's API returns it

UI_HINT = (
    "it must name a built Jaeger UI, jaeger-ui v1.76.0's packages/jaeger-ui/build "
    "(tools/README.md, 'The Jaeger UI', says how one is built)"
)

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    enable_tracing: false
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{ui_port}
    grpc:
      endpoint: 127.0.0.1:{query_grpc_port}
{ui}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc_port}
      http:
        endpoint: 127.0.0.1:{otlp_port}

processors:
  batch:
    timeout: 100ms

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


def ui_problem(assets: str) -> str | None:
    """What is wrong with ``assets`` as a Jaeger UI build (None: nothing).

    Jaeger exits at start when its assets folder has no ``index.html``, and serves a
    page that never loads when it is some other ``index.html``: both are caught here.
    A build's ``index.html`` has the placeholders Jaeger fills in (``JAEGER_VERSION``)
    and the title ``Jaeger UI``."""
    if not assets:
        return f"HOOKLINE_JAEGER_UI is not set; {UI_HINT}"
    index = Path(assets) / "index.html"
    try:
        page = index.read_text(errors="replace")
    except OSError as exc:
        return f"HOOKLINE_JAEGER_UI={assets!r} has no index.html ({exc}); {UI_HINT}"
    # Jaeger's placeholder page carries the same placeholders, not this title
    if "JAEGER_VERSION" not in page or "<title>Jaeger UI</title>" not in page:
        return f"HOOKLINE_JAEGER_UI={assets!r} holds another index.html; {UI_HINT}"
    return None


def config_text(ui_port: int, otlp_port: int, assets: str = "") -> str:
    """The collector config: every listener on 127.0.0.1, the gRPC ones one port below
    (Jaeger's own pairs: 16685/16686, 4317/4318)."""
    path = json.dumps(str(Path(assets).resolve()))  # a JSON string is a YAML string
    ui = f"    ui:\n      assets_path: {path}\n" if assets else ""
    return CONFIG.format(
        ui_port=ui_port,
        query_grpc_port=ui_port - 1,
        otlp_port=otlp_port,
        otlp_grpc_port=otlp_port - 1,
        ui=ui,
    )


class LocalJaeger:
    """A Jaeger the local stack runs (or one it found already answering at the UI port)."""

    def __init__(
        self, binary: str, folder: Path, ui_port: int, otlp_port: int, assets: str = ""
    ) -> None:
        self.binary = binary
        self.folder = folder
        self.ui_port = ui_port
        self.otlp_port = otlp_port
        self.assets = assets
        self.base = f"http://127.0.0.1:{ui_port}"
        self.log = folder / "jaeger.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))

    def otlp(self, protocol: str) -> str:
        """The OTLP endpoint for ``http/protobuf`` or ``grpc``."""
        port = self.otlp_port - 1 if protocol == "grpc" else self.otlp_port
        return f"http://127.0.0.1:{port}"

    async def start(self) -> bool:
        """Start Jaeger and wait until its API answers; False when one answers already."""
        if await self.answers():
            return False
        proc = self.launch()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HooklineError(f"jaeger exited with {proc.returncode}: {self._tail()}")
            if await self.answers():
                return True
            await asyncio.sleep(0.1)
        self.stop()
        raise HooklineError(f"jaeger did not answer at {self.base} within 30 s: {self._tail()}")

    def launch(self) -> subprocess.Popen[bytes]:
        if not Path(self.binary).is_file():
            raise HooklineError(
                f"{self.binary} is missing: `make dev TRACING=1` builds it (tools/build.sh "
                "jaeger), or HOOKLINE_JAEGER_BINARY names another"
            )
        if self.assets and (problem := ui_problem(self.assets)):
            raise HooklineError(problem)
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "jaeger.yaml"
        config.write_text(config_text(self.ui_port, self.otlp_port, self.assets))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--config", f"file:{config.resolve()}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C stops the stack first, which then stops it
            )
        return self.proc

    async def answers(self) -> bool:
        try:
            async with self.session.get(f"{self.base}/api/services") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    async def aclose(self) -> None:
        self.stop()
        await self.session.close()

    async def wait_for_trace(
        self, trace_id: str, complete: Callable[[Trace], bool], seconds: float = 15.0
    ) -> Trace | None:
        """The trace once Jaeger's API returns it ``complete``; None if not in time."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                async with self.session.get(f"{self.base}/api/traces/{trace_id}") as resp:
                    if resp.status == 200:
                        data = (await resp.json()).get("data") or []
                        if data and complete(data[0]):
                            return dict(data[0])
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
        return None


def delivered(trace: Trace, services: tuple[str, ...]) -> bool:
    """Whether a trace holds spans of every one of ``services`` and a delivery that
    succeeded (a CONSUMER span whose ``hookline.outcome`` is ``delivered``)."""
    found = {p["serviceName"] for p in trace.get("processes", {}).values()}
    outcomes = {
        tag["value"]
        for span in trace.get("spans", [])
        for tag in span.get("tags", [])
        if tag["key"] == "hookline.outcome"
    }
    return found.issuperset(services) and "delivered" in outcomes


def trace_id_of(traceparent: str) -> str | None:
    """The trace id of a W3C ``traceparent`` (32 hex digits), as Jaeger's URLs take it."""
    parts = traceparent.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return parts[1].lower()
