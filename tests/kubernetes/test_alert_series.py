"""The alert rules (``helm/hookline/files/alerts.yaml``) only read series hookline serves.

A real ``hookline receiver``, ``hookline dispatcher`` and ``hookline operator`` run against
a real Redis and API server; WebhookEndpoints are applied with kubectl — one healthy, one
that answers 500, one that answers 410 Gone (disabled, its webhook dead-lettered), one whose
key Secret is missing — and webhooks are sent, one with a wrong key. Then every metric name
the rules' expressions select is looked up on the three processes' ``/metrics``, with the
labels its matchers and the ``by``/``on`` lists name, and the values its ``=`` matchers
want. Metric names are read from the PromQL by :mod:`tests.promql` (after ``promtool check
rules`` parsed it, in ``tests/test_alerts.py``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from hookline.config import Config
from hookline.store import Registry
from tests.kubernetes.cluster import ControlPlane, OperatorProcess
from tests.kubernetes.conftest import operator_env
from tests.kubernetes.helpers import (
    apply,
    dispatcher_doc,
    endpoint_doc,
    registered,
    secret_value,
)
from tests.peers import REPO, Endpoint, Samples, eventually, free_port, ok, scrape, status
from tests.peers import wait_ready as until_ready
from tests.promql import dashboard_queries, select
from tests.stack import dispatcher_env

RULES = REPO / "helm" / "hookline" / "files" / "alerts.yaml"


def served(samples: Samples) -> dict[str, list[dict[str, str]]]:
    """Sample name → the label sets it is served with."""
    out: dict[str, list[dict[str, str]]] = {}
    for (name, labels), _ in samples.items():
        out.setdefault(name, []).append(dict(labels))
    return out


class Running:
    """Receiver and dispatcher processes on ports of their own, stopped at the end."""

    def __init__(self, config: Config, folder: Path) -> None:
        self.receiver_port = free_port()
        self.dispatcher_port = free_port()
        env = dispatcher_env(config)
        env.update(
            HOOKLINE_RECEIVER_HOST="127.0.0.1",
            HOOKLINE_RECEIVER_PORT=str(self.receiver_port),
            HOOKLINE_DISPATCHER_HOST="127.0.0.1",
            HOOKLINE_DISPATCHER_PORT=str(self.dispatcher_port),
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for role in ("receiver", "dispatcher"):
            with (folder / f"{role}.log").open("ab") as log:
                self.procs[role] = subprocess.Popen(
                    [sys.executable, "-m", "hookline", "--log-level", "WARNING", role],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(20)


@pytest.fixture
def running(config: Config, tmp_path: Path) -> Iterator[Running]:
    r = Running(config, tmp_path)
    yield r
    r.stop()


async def test_alert_rules_read_only_series_the_components_serve(
    cluster: ControlPlane,
    namespace: str,
    config: Config,
    registry: Registry,
    endpoint: Endpoint,
    running: Running,
    tmp_path: Path,
) -> None:
    op = OperatorProcess(
        cluster,
        operator_env(config, namespace, HOOKLINE_SCALE_INTERVAL="0.5"),
        tmp_path / "operator.log",
    )
    op.start()
    try:
        await until_ready(running.receiver_port, "receiver", running.procs["receiver"])
        await until_ready(running.dispatcher_port, "dispatcher", running.procs["dispatcher"])
        urls = {
            "healthy": endpoint.on("/ok", ok),
            "failing": endpoint.on("/fail", status(500)),
            "gone": endpoint.on("/gone", status(410)),
        }
        await apply(
            cluster,
            dispatcher_doc("hookline-dispatcher-default", namespace, "default"),
            *(endpoint_doc(name, namespace, url) for name, url in urls.items()),
            endpoint_doc("late", namespace, urls["healthy"], keySecretRef={"name": "late-key"}),
        )
        keys = {}
        for name in urls:
            await registered(registry, f"{namespace}/{name}", op)
            keys[name] = await secret_value(cluster, f"{name}-key", namespace, "key")

        async def send(key: str) -> int:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://127.0.0.1:{running.receiver_port}/webhooks/send",
                    data=b'{"type":"test"}',
                    headers={"X-WH-Endpoint-Key": key, "Content-Type": "application/json"},
                ) as resp,
            ):
                return resp.status

        for name in urls:

            async def sent(key: str = keys[name]) -> bool:  # the receiver's cache may lag
                return await send(key) == 202

            await eventually(sent, 5, f"a webhook for {name} accepted")
        assert await send("not-a-key") == 401

        ports = {
            "receiver": running.receiver_port,
            "dispatcher": running.dispatcher_port,
            "operator": op.port,
        }
        gone, failing = f"{namespace}/gone", f"{namespace}/failing"

        def now() -> dict[str, dict[str, list[dict[str, str]]]]:
            return {role: served(scrape(port)) for role, port in ports.items()}

        async def everything_happened() -> bool:
            s = await asyncio.to_thread(now)
            d, o = s["dispatcher"], s["operator"]
            conditions = o.get("hookline_endpoint_condition", [])
            disabled = {"endpoint": gone, "type": "Delivering", "status": "False"}
            return (
                any(c.get("endpoint") == failing for c in d.get("hookline_circuit_open", []))
                and "hookline_queue_backlog" in d
                and "hookline_dead_letters_total" in d
                and any(c.items() >= {**disabled, "reason": "Disabled"}.items() for c in conditions)
                and any(c.get("reason") == "SecretNotFound" for c in conditions)
                and "hookline_pool_oldest_unread_age_seconds" in o
                and "hookline_scaler_replicas" in o
                and "hookline_delivery_latency_seconds_bucket" in d
            )

        try:
            await eventually(everything_happened, 20, "the series of every alert")
        except pytest.fail.Exception:
            pytest.fail(f"not every series is served yet: {now()}\n{op.tail()}", pytrace=False)

        samples = now()
        everywhere: dict[str, list[dict[str, str]]] = {}
        for by_name in samples.values():
            for name, label_sets in by_name.items():
                everywhere.setdefault(name, []).extend(label_sets)
        # The joins of the pool alerts read each side from the process that serves it.
        assert "hookline_queue_backlog" in samples["dispatcher"]
        assert "hookline_pool_oldest_age_seconds" in samples["operator"]
        dead = scrape(ports["dispatcher"])[("hookline_dead_letters_total", frozenset())]
        assert dead >= 1  # the 410's webhook (the 500's too, once its retries run out)

        doc = yaml.safe_load(RULES.read_text())
        checked = set()
        for group in doc["groups"]:
            for rule in group["rules"]:
                selection = select(rule["expr"])
                for metric, matchers in selection.metrics.items():
                    assert metric in everywhere, f"{rule['alert']}: {metric} is not served"
                    label_sets = everywhere[metric]
                    for m in matchers:
                        assert any(m.label in ls for ls in label_sets), (
                            f"{rule['alert']}: {metric} has no label {m.label}"
                        )
                        if m.op == "=":
                            assert any(ls.get(m.label) == m.value for ls in label_sets), (
                                f"{rule['alert']}: no {metric}{{{m.label}={m.value!r}}} served"
                            )
                    checked.add(metric)
                for label in selection.grouping:
                    assert any(
                        label in ls for metric in selection.metrics for ls in everywhere[metric]
                    ), f"{rule['alert']}: groups by {label}, which none of its series has"
        assert len(checked) == 9, sorted(checked)
        # So do the dashboard queries of docs/operating.md.
        queries = dashboard_queries()
        assert len(queries) == 16, queries
        for expr in queries:
            for metric in select(expr).metrics:
                assert metric in everywhere, f"docs/operating.md: {metric} is not served"
    finally:
        op.stop()
