"""From ``kubectl apply`` to a delivered webhook: the operator on a real API server, the
receiver and dispatcher of :class:`tests.stack.Stack`, and a real HTTP endpoint."""

from __future__ import annotations

import json
import time

from standardwebhooks import Webhook

from hookline.signing import new_secret
from hookline.store import Registry
from tests.kubernetes.cluster import ControlPlane, OperatorProcess
from tests.kubernetes.conftest import INTERVAL
from tests.kubernetes.helpers import (
    apply,
    condition,
    endpoint_doc,
    registered,
    secret_doc,
    secret_value,
    until_status,
)
from tests.peers import Endpoint, status
from tests.stack import Stack


def table(output: str) -> list[dict[str, str]]:
    lines = output.splitlines()
    header = lines[0].split()
    return [dict(zip(header, line.split(), strict=True)) for line in lines[1:]]


async def test_applied_endpoint_receives_a_webhook_sent_with_its_generated_key(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    registry: Registry,
    stack: Stack,
    endpoint: Endpoint,
) -> None:
    url = endpoint.on("/hooks/orders", status(200))
    await apply(cluster, endpoint_doc("orders", namespace, url))
    await cluster.akubectl(
        "wait", "--for=condition=Ready", "--timeout=10s", "-n", namespace, "whe/orders"
    )
    key = await secret_value(cluster, "orders-key", namespace, "key")
    signing = await secret_value(cluster, "orders-signing", namespace, "secret")
    ep = await registered(registry, f"{namespace}/orders", operator)
    await stack.propagated(lambda c: c.get(ep.id) == ep, "the endpoint in every cache")

    code, body = await stack.send(key, b'{"type":"order.created"}')
    assert code == 202, body
    await endpoint.wait_for(lambda: body["id"] in endpoint.ids(), 5, "the webhook at the sink")
    got = endpoint.received[-1]
    assert got.body == b'{"type":"order.created"}'
    Webhook(signing).verify(got.body, got.headers)

    # The figures reach the resource, and `kubectl get whe` shows them.
    await until_status(
        cluster,
        "orders",
        namespace,
        lambda s: s.get("delivered") == 1,
        INTERVAL + 5,
        "delivered=1 in the status",
        operator,
    )
    row = table((await cluster.akubectl("get", "whe", "-n", namespace)).stdout)[0]
    assert row["NAME"] == "orders" and row["URL"] == url
    assert (row["READY"], row["DELIVERED"], row["FAILED"], row["PENDING"]) == (
        "True",
        "1",
        "0",
        "0",
    )
    assert "lastSuccess" in await _status(cluster, "orders", namespace)


async def test_rotated_signing_secret_signs_alongside_the_previous_one(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    registry: Registry,
    stack: Stack,
    endpoint: Endpoint,
) -> None:
    old, new = new_secret(), new_secret()
    url = endpoint.on("/hooks/rot", status(200))
    await apply(
        cluster,
        secret_doc("rot-signing", namespace, secret=old),
        endpoint_doc("rot", namespace, url, signingSecretRef={"name": "rot-signing"}),
    )
    await registered(registry, f"{namespace}/rot", operator)

    rotated_at = time.time()
    await apply(cluster, secret_doc("rot-signing", namespace, secret=new))
    ep = await registered(
        registry,
        f"{namespace}/rot",
        operator,
        lambda e: [s.secret for s in e.signing_secrets] == [new, old],
        what="the new and the previous signing secret",
    )
    current, previous = ep.signing_secrets
    assert current.not_after is None
    assert previous.not_after is not None
    assert abs(previous.not_after - (rotated_at + 86400)) < 10  # the default grace: 24 h

    await stack.propagated(lambda c: c.get(ep.id) == ep, "the rotation in every cache")
    key = await secret_value(cluster, "rot-key", namespace, "key")
    code, body = await stack.send(key)
    assert code == 202, body
    await endpoint.wait_for(lambda: body["id"] in endpoint.ids(), 5, "the webhook at the sink")
    got = endpoint.received[-1]
    assert len(got.headers["webhook-signature"].split()) == 2
    Webhook(new).verify(got.body, got.headers)
    Webhook(old).verify(got.body, got.headers)


async def test_endpoint_disabled_by_the_dispatcher_shows_in_status_and_events(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    registry: Registry,
    stack: Stack,
    endpoint: Endpoint,
) -> None:
    url = endpoint.on("/hooks/gone", status(410))
    await apply(cluster, endpoint_doc("retired", namespace, url))
    ep = await registered(registry, f"{namespace}/retired", operator)
    await stack.propagated(lambda c: c.get(ep.id) == ep, "the endpoint in every cache")
    key = await secret_value(cluster, "retired-key", namespace, "key")
    code, _ = await stack.send(key)
    assert code == 202

    status_ = await until_status(
        cluster,
        "retired",
        namespace,
        lambda s: condition(s, "Delivering").get("status") == "False",
        INTERVAL + 5,
        "Delivering=False",
        operator,
    )
    delivering = condition(status_, "Delivering")
    assert delivering["reason"] == "Disabled"
    assert "410" in delivering["message"]
    assert condition(status_, "Ready")["status"] == "True"
    assert status_["deadLettered"] == 1
    events = json.loads(
        (
            await cluster.akubectl(
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector",
                "involvedObject.name=retired,reason=Disabled",
                "-o",
                "json",
            )
        ).stdout
    )["items"]
    assert len(events) == 1, events
    assert events[0]["type"] == "Warning" and "410" in events[0]["message"]


async def _status(cluster: ControlPlane, name: str, namespace: str) -> dict[str, object]:
    obj = await cluster.get("whe", name, namespace)
    return dict((obj or {}).get("status") or {})
