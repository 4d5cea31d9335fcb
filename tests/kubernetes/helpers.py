"""Manifests and bounded waits shared by the Kubernetes tests."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from hookline.models import Endpoint
from hookline.store import Registry
from tests.kubernetes.cluster import ControlPlane, OperatorProcess, manifest
from tests.peers import Samples, eventually, scrape


def endpoint_doc(name: str, namespace: str, url: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hookline.dev/v1alpha1",
        "kind": "WebhookEndpoint",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"url": url, **spec},
    }


def dispatcher_doc(
    name: str,
    namespace: str,
    pool: str,
    replicas: int = 1,
    labelled: bool = True,
    labels: dict[str, str] | None = None,
    **policy: str | int,
) -> dict[str, Any]:
    """A dispatcher Deployment; ``policy`` keys are annotation names after ``hookline.dev/``
    with ``_`` for ``-`` (``min_replicas=0``)."""
    annotations = {"hookline.dev/pool": pool}
    annotations.update({f"hookline.dev/{k.replace('_', '-')}": str(v) for k, v in policy.items()})
    meta_labels = dict(labels or ({"hookline.dev/component": "dispatcher"} if labelled else {}))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta_labels,
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "dispatcher",
                            "image": "ghcr.io/hookline/hookline:0.1.0",
                            "args": ["dispatcher"],
                            "env": [{"name": "HOOKLINE_POOL", "value": pool}],
                        }
                    ]
                },
            },
        },
    }


def source_doc(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hookline.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def secret_doc(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": data,
    }


async def apply(cluster: ControlPlane, *docs: dict[str, Any]) -> str:
    done = await cluster.akubectl("apply", "-f", "-", input=manifest(docs))
    return done.stdout


async def registered(
    registry: Registry,
    endpoint_id: str,
    op: OperatorProcess,
    check: Callable[[Endpoint], bool] = lambda _: True,
    seconds: float = 5.0,
    what: str = "",
) -> Endpoint:
    """The registry record of ``endpoint_id`` once ``check`` holds, within ``seconds``."""
    found: list[Endpoint] = []

    async def present() -> bool:
        ep = await registry.get(endpoint_id)
        if ep is not None and check(ep):
            found.append(ep)
            return True
        return False

    try:
        await eventually(present, seconds, what or f"{endpoint_id} in the registry")
    except pytest.fail.Exception:
        pytest.fail(
            f"{endpoint_id}: {what or 'no registry record'} after {seconds} s; "
            f"record: {await registry.get(endpoint_id)}\noperator log:\n{op.tail()}",
            pytrace=False,
        )
    return found[-1]


async def status_of(
    cluster: ControlPlane, name: str, namespace: str, kind: str = "webhookendpoint"
) -> dict[str, Any]:
    obj = await cluster.get(kind, name, namespace)
    return dict((obj or {}).get("status") or {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


async def until_status(
    cluster: ControlPlane,
    name: str,
    namespace: str,
    check: Callable[[dict[str, Any]], bool],
    seconds: float,
    what: str,
    op: OperatorProcess,
    kind: str = "webhookendpoint",
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = await status_of(cluster, name, namespace, kind)
        if check(status):
            return status
        await asyncio.sleep(0.2)
    pytest.fail(
        f"timed out after {seconds} s waiting for {what}; status: {status}\n"
        f"operator log:\n{op.tail()}",
        pytrace=False,
    )


async def secret_value(cluster: ControlPlane, name: str, namespace: str, key: str) -> str:
    """A Secret's value, read with kubectl as a user would."""
    done = await cluster.akubectl(
        "get", "secret", name, "-n", namespace, "-o", f"jsonpath={{.data.{key}}}"
    )
    return base64.b64decode(done.stdout).decode()


def refusals(op: OperatorProcess) -> list[str]:
    """The operator log's lines that say the API server refused it: a status 403 or
    "Forbidden" -- not a port number such as 40385, nor the milliseconds of a line's time
    stamp ("13:41:26,403"), so only the message after the stamp is searched."""
    return [
        ln
        for ln in op.log.read_text().splitlines()
        if re.search(r"\b403\b|[Ff]orbidden", ln.split(" ", 2)[-1])
    ]


def metrics(op: OperatorProcess) -> Samples:
    """The operator's ``/metrics``, parsed."""
    return scrape(op.port)


def sample(op: OperatorProcess, name: str, **labels: str) -> float | None:
    """One sample of the operator's ``/metrics`` (None: not served)."""
    return metrics(op).get((name, frozenset(labels.items())))


def probe(op: OperatorProcess, path: str) -> tuple[int, str]:
    """GET one of the operator's probe or metrics paths: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def until_probe(
    op: OperatorProcess, path: str, status: int, seconds: float, what: str
) -> dict[str, Any]:
    """The JSON answer of ``path`` once it answers ``status``, within ``seconds``."""
    deadline = time.monotonic() + seconds
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(probe, op, path)
        if last[0] == status:
            answer: dict[str, Any] = json.loads(last[1])
            return answer
        await asyncio.sleep(0.2)
    pytest.fail(
        f"{path} did not answer {status} within {seconds} s ({what}); last: {last}\n"
        f"operator log:\n{op.tail()}",
        pytrace=False,
    )
