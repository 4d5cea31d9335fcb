"""What the journey tests use beside the cluster: the helm and kubectl a user types, a
``kubectl port-forward`` like the docs', a sink on the node that records what pods
deliver, and senders that keep a history of every answer.

The sink is a real HTTP server on the node's bridge address (pods reach it there, as
they would reach any endpoint outside the cluster); it checks each delivery's Standard
Webhooks signature and records its ``webhook-id``, so the history checker of the core
tests (:mod:`tests.history`) can say whether any accepted webhook was lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hookline.local.sink import verify
from tests.history import History
from tests.kubernetes.test_helm import Helm
from tests.node.cluster import NODE_IP, Node
from tests.peers import free_port


def wait_for(
    check: Callable[[], Any],
    seconds: float,
    what: str,
    every: float = 1.0,
    state: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` (and what
    ``state`` says of the cluster then, for a failure to be read from CI's log alone)."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            seen = f"; {state()}" if state is not None else ""
            pytest.fail(f"timed out after {seconds:g} s waiting for {what}{seen}", pytrace=False)
        time.sleep(every)


class User:
    """kubectl and helm as a user types them, in the release's namespace."""

    def __init__(self, node: Node, helm_home: Path, namespace: str) -> None:
        self.node = node
        self.namespace = namespace
        self.helm_bin = Helm(helm_home, node.kubeconfig)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.node.kubectl(*args, input=input, check=check, timeout=180).stdout

    def helm(self, *args: str, timeout: float = 300) -> str:
        return self.helm_bin(*args, timeout=timeout).stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-n", self.namespace, "-o", "json"))

    def secret(self, name: str, key: str) -> str:
        encoded = self.kubectl(
            "get", "secret", name, "-n", self.namespace, "-o", f"jsonpath={{.data.{key}}}"
        )
        return base64.b64decode(encoded).decode()

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.json("pods", "-l", selector)["items"]
        return items

    def pod_names(self, component: str) -> set[str]:
        """The names of the release's pods of one component (receiver, dispatcher, ...)."""
        return {
            p["metadata"]["name"] for p in self.pods(f"app.kubernetes.io/component={component}")
        }

    def service_ip(self, name: str) -> str:
        ip: str = self.json("service", name)["spec"]["clusterIP"]
        return ip

    def replicas(self, deployment: str) -> tuple[int, int]:
        """(spec.replicas, status.readyReplicas) of a Deployment."""
        d = self.json("deployment", deployment)
        return d["spec"].get("replicas", 0), d["status"].get("readyReplicas", 0)

    def logs(self, target: str) -> str:
        return self.kubectl("logs", "-n", self.namespace, target, "--tail=-1")

    @contextlib.contextmanager
    def port_forward(self, target: str, remote: int) -> Iterator[int]:
        """``kubectl port-forward -n NS TARGET LOCAL:REMOTE &``, as the docs run it."""
        local = free_port()
        proc = subprocess.Popen(
            [
                self.node.kubectl_bin, f"--kubeconfig={self.node.kubeconfig}", "port-forward",
                "-n", self.namespace, target, f"{local}:{remote}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            if "Forwarding from" not in line:
                pytest.fail(f"kubectl port-forward {target}: {line}", pytrace=False)
            yield local
        finally:
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()


class Sink:
    """A real HTTP endpoint on the node's address, checking signatures."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.deliveries: Counter[str] = Counter()
        self.bad: list[str] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                wid = headers.get("webhook-id", "")
                secret = sink.secrets.get(self.path)
                with sink.lock:
                    sink.deliveries[wid] += 1
                    if secret is None or not verify(secret, headers, body):
                        sink.bad.append(wid)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((NODE_IP, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://{NODE_IP}:{self.port}{path}"

    def delivered(self, ids: set[str]) -> int:
        with self.lock:
            return sum(1 for i in ids if self.deliveries[i])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def send_many(
    url: str,
    key: str,
    count: int,
    history: History,
    concurrency: int = 16,
    pace: float = 0.0,
    statuses: Counter[int] | None = None,
) -> None:
    """POST ``count`` webhooks; every 2xx id goes into ``history.accepted``. A sender that
    cannot connect (a receiver pod being killed) counts as status 0 and goes on."""
    statuses = Counter() if statuses is None else statuses
    todo = iter(range(count))
    timeout = aiohttp.ClientTimeout(total=30)

    async def worker(session: aiohttp.ClientSession) -> None:
        for n in todo:
            body = json.dumps({"type": "journey", "n": n}).encode()
            try:
                async with session.post(
                    f"{url}/webhooks/send",
                    data=body,
                    headers={"X-WH-Endpoint-Key": key, "Content-Type": "application/json"},
                ) as resp:
                    statuses[resp.status] += 1
                    if resp.status == 202:
                        history.accepted.add((await resp.json())["id"])
                    else:
                        history.refused += 1
            except (aiohttp.ClientError, TimeoutError):
                statuses[0] += 1
                history.refused += 1
            if pace:
                await asyncio.sleep(pace)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def printer_column(table: str, name: str, column: str) -> str:
    """A column of ``kubectl get`` output for the row ``name``."""
    lines = table.strip().splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == name:
            return cells[header.index(column)]
    pytest.fail(f"no row {name} in:\n{table}", pytrace=False)
