"""A real Jaeger for the tracing tests and the tracing benchmark.

Runs the Jaeger v2 all-in-one built by ``make tools`` (``.cache/bin/jaeger``) with
a config file written here: every listener on 127.0.0.1 and a free port (OTLP
gRPC and HTTP, the legacy agent's UDP port for compact Thrift, which the
``jaeger-client`` library reports to, and the query API), in-memory storage,
no self-tracing and no metrics listener. Traces are read back through the HTTP
API the Jaeger UI uses: ``/api/traces/{id}`` and ``/api/traces?service=``.

With ``HOOKLINE_JAEGER_UI`` naming a built Jaeger UI (tools/README.md), Jaeger serves
it (``jaeger_query``'s ``ui.assets_path``) at :attr:`JaegerServer.base`; the browser
tier (tests/browser) needs it, the API does not.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hookline.local.jaeger import ui_problem
from tests.peers import free_port, tool_binary

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp, jaeger]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
{metrics}
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
      endpoint: 127.0.0.1:{query_http}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
{ui}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
  jaeger:
    protocols:
      thrift_compact:
        endpoint: 127.0.0.1:{agent_compact}

processors:
  batch:
    timeout: 50ms

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


_NO_METRICS = "      level: none"
_METRICS = """\
      level: basic
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: {port}"""


class JaegerFailed(RuntimeError):
    """Jaeger did not start or did not answer: the test fails with this message."""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _udp_bound(port: int) -> bool:
    """Whether some socket is bound to 127.0.0.1:``port`` (UDP answers no probe)."""
    needle = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        if line.split()[1] == needle:
            return True
    return False


def ui_assets(required: bool = False) -> str:
    """The built Jaeger UI that ``HOOKLINE_JAEGER_UI`` names ("" when unset and not
    ``required``); a wrong folder, or none when ``required``, is a :class:`JaegerFailed`."""
    assets = os.environ.get("HOOKLINE_JAEGER_UI", "")
    if assets or required:
        problem = ui_problem(assets)
        if problem:
            raise JaegerFailed(problem)
    return assets


class JaegerServer:
    """``metrics``: also serve Jaeger's own Prometheus metrics (for :meth:`accepted_spans`);
    ``wrap``: a command the binary runs under (``taskset -c 1`` in the benchmark);
    ``ui``: a built Jaeger UI to serve (default: ``HOOKLINE_JAEGER_UI``, if set)."""

    def __init__(
        self,
        folder: Path,
        metrics: bool = False,
        wrap: tuple[str, ...] = (),
        ui: str | None = None,
    ) -> None:
        self.exe = tool_binary("jaeger")
        self.ui_assets = ui_assets() if ui is None else ui
        self.folder = folder
        self.wrap = wrap
        self.metrics_port = free_port() if metrics else 0
        self.ports = {
            "otlp_grpc": free_port(),
            "otlp_http": free_port(),
            "query_http": free_port(),
            "query_grpc": free_port(),
            "agent_compact": free_udp_port(),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "jaeger.log"

    @property
    def otlp_http(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp_http']}"

    @property
    def otlp_grpc(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp_grpc']}"

    @property
    def agent_port(self) -> int:
        return self.ports["agent_compact"]

    @property
    def base(self) -> str:
        """The UI's address (a placeholder page without :attr:`ui_assets`)."""
        return f"http://127.0.0.1:{self.ports['query_http']}"

    @property
    def api(self) -> str:
        return f"{self.base}/api"

    def start(self, seconds: float = 30.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "jaeger.yaml"
        metrics = _METRICS.format(port=self.metrics_port) if self.metrics_port else _NO_METRICS
        ui = ""
        if self.ui_assets:
            assets = json.dumps(str(Path(self.ui_assets).resolve()))
            ui = f"    ui:\n      assets_path: {assets}\n"
        config.write_text(CONFIG.format(metrics=metrics, ui=ui, **self.ports))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.wrap, self.exe, "--config", f"file:{config}"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise JaegerFailed(f"jaeger exited with {self.proc.returncode}: {self._log_tail()}")
            if self._listening():
                return
            time.sleep(0.05)
        self.stop()
        raise JaegerFailed(f"jaeger did not listen within {seconds} s: {self._log_tail()}")

    def _listening(self) -> bool:
        for name in ("otlp_grpc", "otlp_http", "query_http"):
            try:
                socket.create_connection(("127.0.0.1", self.ports[name]), 0.2).close()
            except OSError:
                return False
        if not _udp_bound(self.agent_port):
            return False
        try:
            self.get("/services")
        except (OSError, JaegerFailed):
            return False
        return True

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    # -- the query API

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.api + path, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise JaegerFailed(f"GET {path}: {exc.code} {exc.read()[:300]!r}") from exc

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace with this id (hex, as Jaeger prints it), or None while Jaeger has none."""
        answer = self.get(f"/traces/{trace_id}")
        if not answer or not answer.get("data"):
            return None
        data: list[dict[str, Any]] = answer["data"]
        if len(data) != 1:
            raise JaegerFailed(f"trace {trace_id}: Jaeger returned {len(data)} traces")
        return data[0]

    def traces(self, service: str, limit: int = 100) -> list[dict[str, Any]]:
        answer = self.get(f"/traces?service={service}&lookback=1h&limit={limit}")
        return list(answer.get("data") or []) if answer else []

    def accepted_spans(self) -> int:
        """Spans Jaeger's receivers have taken so far (needs ``metrics=True``)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("otelcol_receiver_accepted_spans"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def services(self) -> list[str]:
        answer = self.get("/services")
        return list(answer.get("data") or []) if answer else []


def jaeger_id(trace_id: int) -> str:
    """A trace id as Jaeger's API prints it: 16 hex digits for a 64-bit id, else 32."""
    return f"{trace_id:016x}" if trace_id < 1 << 64 else f"{trace_id:032x}"


# -- reading a trace


class Span:
    """One span of a Jaeger API trace, with its service, kind, tags and parent."""

    def __init__(self, raw: dict[str, Any], processes: dict[str, Any]) -> None:
        self.raw = raw
        self.id: str = raw["spanID"]
        self.name: str = raw["operationName"]
        self.service: str = processes[raw["processID"]]["serviceName"]
        self.tags: dict[str, Any] = {t["key"]: t["value"] for t in raw.get("tags", [])}
        self.kind: str | None = self.tags.get("span.kind")
        parents = [r for r in raw.get("references", []) if r["refType"] == "CHILD_OF"]
        self.parent: str | None = parents[0]["spanID"] if parents else None
        self.start: int = raw["startTime"]

    def __repr__(self) -> str:
        return f"<{self.service} {self.kind or '-'} {self.name!r} {self.id}<-{self.parent}>"


def spans(trace: dict[str, Any]) -> list[Span]:
    """The trace's spans, in start order."""
    found = [Span(raw, trace["processes"]) for raw in trace["spans"]]
    return sorted(found, key=lambda s: s.start)
