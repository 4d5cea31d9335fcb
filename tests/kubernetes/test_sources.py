"""WebhookSources and subscriptions with the operator, a real API server and a real Redis:
a source becomes a registry record with its own generated key, an endpoint's
``spec.source`` is Ready only while that source exists, and a source's status counts its
subscribers and shows its figures in ``kubectl get whs``.

Tests of what follows from a change elsewhere (a source applied or deleted, an endpoint
subscribing) run an operator whose timer ticks once a minute: what they see within
seconds comes from the handlers reacting to the change, not from a periodic refresh."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hookline.config import Config
from hookline.models import key_hash
from hookline.store import Registry, Store
from tests.kubernetes.cluster import ControlPlane, OperatorProcess
from tests.kubernetes.conftest import INTERVAL, operator_env
from tests.kubernetes.helpers import (
    apply,
    condition,
    endpoint_doc,
    registered,
    secret_doc,
    secret_value,
    source_doc,
    status_of,
    until_status,
)
from tests.peers import REPO, eventually

URL = "https://hooks.example.com/in"
REACTS_WITHIN = 5.0  # a change's follow-ups, well under the slow operator's minute


@pytest.fixture
def slow_operator(
    cluster: ControlPlane, config: Config, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """``hookline operator`` whose timers tick once a minute."""
    op = OperatorProcess(
        cluster,
        operator_env(config, namespace, HOOKLINE_OPERATOR_INTERVAL="60"),
        tmp_path / "operator.log",
    )
    op.start()
    yield op
    op.stop()


async def source_record(
    registry: Registry, source_id: str, op: OperatorProcess, seconds: float = 5.0
) -> Any:
    found: list[Any] = []

    async def present() -> bool:
        found.append(await registry.get_source(source_id))
        return found[-1] is not None

    try:
        await eventually(present, seconds, f"{source_id} in the registry")
    except pytest.fail.Exception:
        pytest.fail(
            f"no registry record of {source_id} after {seconds} s\noperator log:\n{op.tail()}",
            pytrace=False,
        )
    return found[-1]


async def ready(cluster: ControlPlane, namespace: str, *objects: str, seconds: float = 10) -> None:
    """``kubectl wait --for=condition=Ready`` on ``objects`` (``whs/NAME``, ``whe/NAME``)."""
    await cluster.akubectl(
        "wait", "--for=condition=Ready", f"--timeout={seconds:g}s", "-n", namespace, *objects
    )


def ready_is(status: str, reason: str) -> Any:
    def check(s: dict[str, Any]) -> bool:
        ready = condition(s, "Ready")
        return (ready.get("status"), ready.get("reason")) == (status, reason)

    return check


async def test_applied_source_is_registered_and_ready_with_a_generated_key(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    registry: Registry,
    store: Store,
) -> None:
    started = time.monotonic()
    await apply(cluster, source_doc("feed", namespace, eventTypes=["invoice.paid", "order.paid"]))
    await ready(cluster, namespace, "whs/feed")
    record = await source_record(registry, f"{namespace}/feed", operator)
    assert time.monotonic() - started < 10
    assert record.event_types == ("invoice.paid", "order.paid")
    obj = await cluster.get("whs", "feed", namespace)
    assert obj is not None
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["keySecretName"] == "feed-key"
    assert condition(status, "Ready")["reason"] == "Registered"
    assert status["subscribers"] == 0
    # The generated key: owned by the source, labelled for it, and in Redis as a hash only.
    key = await secret_value(cluster, "feed-key", namespace, "key")
    assert record.key_hashes == (key_hash(key),)
    found = await store.redis.hget(registry.keys.source_key_index, key_hash(key))  # type: ignore[misc]
    assert found == f"{namespace}/feed".encode()
    secret = await cluster.get("secret", "feed-key", namespace)
    assert secret is not None
    owners = [(o["kind"], o["name"], o["uid"]) for o in secret["metadata"]["ownerReferences"]]
    assert owners == [("WebhookSource", "feed", obj["metadata"]["uid"])]
    assert secret["metadata"]["labels"]["hookline.dev/source"] == "feed"
    # no signing secret: a source signs nothing, its subscribers do
    assert await cluster.get("secret", "feed-signing", namespace) is None

    # A Redis that lost the record gets it back at the next tick.
    await store.redis.delete(registry.keys.sources, registry.keys.source_key_index)
    again = await source_record(registry, f"{namespace}/feed", operator, seconds=INTERVAL + 3)
    assert again == record


async def test_kubectl_get_whs_shows_readiness_subscribers_and_figures(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    store: Store,
) -> None:
    await apply(
        cluster,
        source_doc("feed", namespace),
        endpoint_doc("billing", namespace, URL, source="feed", eventTypes=["invoice.*"]),
    )
    figures = {"events": 7, "unmatched": 2, "deliveries": 5, "delivered": 4, "failed": 3}
    figures["dead"] = 1
    stats = store.keys.source_stats(f"{namespace}/feed")
    await store.redis.hset(stats, mapping=figures)  # type: ignore[misc]
    status = await until_status(
        cluster,
        "feed",
        namespace,
        lambda s: s.get("events") == 7 and s.get("subscribers") == 1,
        INTERVAL + 5,
        "the figures and one subscriber in the status",
        operator,
        kind="whs",
    )
    assert {k: status[k] for k in ("unmatched", "deliveries", "delivered", "failed")} == {
        "unmatched": 2,
        "deliveries": 5,
        "delivered": 4,
        "failed": 3,
    }
    assert status["deadLettered"] == 1

    table = (await cluster.akubectl("get", "whs", "-n", namespace)).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "READY",
        "SUBSCRIBERS",
        "EVENTS",
        "DELIVERED",
        "FAILED",
        "AGE",
    ]
    assert table[1].split()[:6] == ["feed", "True", "1", "7", "4", "3"]
    wide = (await cluster.akubectl("get", "whs", "-n", namespace, "-o", "wide")).stdout
    header, row = (line.split() for line in wide.splitlines()[:2])
    assert dict(zip(header, row, strict=False))["UNMATCHED"] == "2"
    assert dict(zip(header, row, strict=False))["DEAD"] == "1"
    endpoints = (await cluster.akubectl("get", "whe", "-n", namespace, "-o", "wide")).stdout
    header, row = (line.split() for line in endpoints.splitlines()[:2])
    assert dict(zip(header, row, strict=False))["SOURCE"] == "feed"


async def test_subscription_to_a_missing_source_is_not_ready_until_the_source_is_applied(
    cluster: ControlPlane, namespace: str, slow_operator: OperatorProcess, registry: Registry
) -> None:
    await apply(
        cluster, endpoint_doc("billing", namespace, URL, source="feed", eventTypes=["invoice.*"])
    )
    status = await until_status(
        cluster,
        "billing",
        namespace,
        ready_is("False", "SourceNotFound"),
        10,
        "Ready=False SourceNotFound",
        slow_operator,
    )
    message = condition(status, "Ready")["message"]
    assert "WebhookSource 'feed' not found" in message and repr(namespace) in message
    # Registered all the same: its own key works, and the subscription is in the record.
    ep = await registered(registry, f"{namespace}/billing", slow_operator)
    assert (ep.source, ep.event_types) == (f"{namespace}/feed", ("invoice.*",))
    key = await secret_value(cluster, "billing-key", namespace, "key")
    assert ep.key_hashes == (key_hash(key),)

    applied = time.monotonic()
    await apply(cluster, source_doc("feed", namespace))
    await ready(cluster, namespace, "whe/billing", seconds=REACTS_WITHIN)
    assert time.monotonic() - applied < REACTS_WITHIN
    now = condition(await status_of(cluster, "billing", namespace), "Ready")
    assert now["message"] == f"registered as {namespace}/billing, subscribed to {namespace}/feed"
    assert slow_operator.handled(f"{namespace}/billing: ready again")


async def test_deleting_a_source_removes_it_from_redis_and_flips_its_subscribers(
    cluster: ControlPlane,
    namespace: str,
    slow_operator: OperatorProcess,
    registry: Registry,
    store: Store,
) -> None:
    await apply(
        cluster,
        source_doc("feed", namespace),
        endpoint_doc("billing", namespace, URL, source="feed", eventTypes=["invoice.*"]),
        endpoint_doc("audit", namespace, "https://audit.example.com/", source="feed"),
    )
    await ready(cluster, namespace, "whs/feed", "whe/billing", "whe/audit")
    record = await source_record(registry, f"{namespace}/feed", slow_operator)

    await cluster.akubectl("delete", "whs", "feed", "-n", namespace, "--timeout=10s")
    assert await cluster.get("whs", "feed", namespace) is None
    assert await registry.get_source(f"{namespace}/feed") is None
    (key,) = record.key_hashes
    assert await store.redis.hget(registry.keys.source_key_index, key) is None  # type: ignore[misc]
    for name in ("billing", "audit"):
        status = await until_status(
            cluster,
            name,
            namespace,
            ready_is("False", "SourceNotFound"),
            REACTS_WITHIN,
            f"{name}: Ready=False SourceNotFound once its source is gone",
            slow_operator,
        )
        assert "'feed'" in condition(status, "Ready")["message"]
        assert await registry.get(f"{namespace}/{name}") is not None  # still registered


async def test_status_subscribers_counts_the_endpoints_that_subscribe(
    cluster: ControlPlane, namespace: str, slow_operator: OperatorProcess
) -> None:
    async def subscribers(count: int, what: str) -> None:
        await until_status(
            cluster,
            "feed",
            namespace,
            lambda s: s.get("subscribers") == count,
            REACTS_WITHIN,
            what,
            slow_operator,
            kind="whs",
        )

    await apply(cluster, source_doc("feed", namespace), source_doc("other", namespace))
    await subscribers(0, "no subscriber")
    await apply(cluster, endpoint_doc("a", namespace, URL, source="feed"))
    await subscribers(1, "a subscribes")
    await apply(cluster, endpoint_doc("b", namespace, URL, source="feed", eventTypes=["x.*"]))
    await apply(cluster, endpoint_doc("direct", namespace, URL))  # subscribes to nothing
    await subscribers(2, "b subscribes too")
    await apply(cluster, endpoint_doc("a", namespace, URL, source="other"))
    await subscribers(1, "a moved to the source 'other'")
    other = await status_of(cluster, "other", namespace, "whs")
    assert other.get("subscribers") == 1
    await cluster.akubectl("delete", "whe", "b", "-n", namespace, "--timeout=10s")
    await subscribers(0, "b deleted")


async def test_source_applied_again_after_delete_adopts_its_generated_key(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    """Delete and apply again, as GitOps tools do: the key senders hold keeps working."""
    await apply(cluster, source_doc("feed", namespace))
    await ready(cluster, namespace, "whs/feed")
    first = await cluster.get("whs", "feed", namespace)
    key = await secret_value(cluster, "feed-key", namespace, "key")
    await cluster.akubectl("delete", "whs", "feed", "-n", namespace, "--timeout=10s")
    assert await registry.get_source(f"{namespace}/feed") is None

    await apply(cluster, source_doc("feed", namespace))
    await ready(cluster, namespace, "whs/feed")
    second = await cluster.get("whs", "feed", namespace)
    assert first is not None and second is not None
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    secret = await cluster.get("secret", "feed-key", namespace)
    assert secret is not None
    owners = [(o["kind"], o["name"], o["uid"]) for o in secret["metadata"]["ownerReferences"]]
    assert owners == [("WebhookSource", "feed", second["metadata"]["uid"])]
    assert await secret_value(cluster, "feed-key", namespace, "key") == key
    record = await source_record(registry, f"{namespace}/feed", operator)
    assert record.key_hashes == (key_hash(key),)
    adopted = operator.handled(
        f"source {namespace}/feed: Secret feed-key adopted from a deleted source of this name"
    )
    assert len(adopted) == 1 and " INFO " in adopted[0], operator.tail()


async def test_a_source_named_like_an_endpoint_does_not_take_its_key(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    """Both would generate NAME-key: the second one finds it generated for the first, and
    never uses nor changes it."""
    await apply(cluster, endpoint_doc("orders", namespace, URL))
    await ready(cluster, namespace, "whe/orders")
    before = await cluster.get("secret", "orders-key", namespace)
    await apply(cluster, source_doc("orders", namespace))
    status = await until_status(
        cluster,
        "orders",
        namespace,
        ready_is("False", "SecretConflict"),
        10,
        "Ready=False SecretConflict",
        operator,
        kind="whs",
    )
    message = condition(status, "Ready")["message"]
    assert "'orders-key'" in message and "generated for the endpoint 'orders'" in message
    assert await registry.get_source(f"{namespace}/orders") is None
    after = await cluster.get("secret", "orders-key", namespace)
    assert before is not None and after is not None
    assert after["metadata"] == before["metadata"], "the source changed the endpoint's Secret"

    # Its own Secret named in the spec: Ready, and the endpoint keeps its key.
    await apply(cluster, secret_doc("orders-feed-key", namespace, key="feed-key-value"))
    await apply(cluster, source_doc("orders", namespace, keySecretRef={"name": "orders-feed-key"}))
    await ready(cluster, namespace, "whs/orders")
    record = await source_record(registry, f"{namespace}/orders", operator)
    assert record.key_hashes == (key_hash("feed-key-value"),)
    await ready(cluster, namespace, "whe/orders", seconds=1)


async def test_restarted_operator_rewrites_no_source_and_flips_no_subscriber(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    """kopf's indexes are complete before the first handler runs: a restarted operator
    never reconciles a subscriber while it does not know its source yet."""
    await apply(
        cluster,
        endpoint_doc("billing", namespace, URL, source="feed"),
        source_doc("feed", namespace),
    )
    await ready(cluster, namespace, "whs/feed", "whe/billing")
    await until_status(
        cluster,
        "feed",
        namespace,
        lambda s: s.get("subscribers") == 1,
        INTERVAL + 5,
        "one subscriber",
        operator,
        kind="whs",
    )
    before = {
        (k, n): await cluster.get(k, n, namespace) for k, n in (("whs", "feed"), ("whe", "billing"))
    }
    async with registry.conn.redis.pubsub() as pubsub:
        await pubsub.subscribe(registry.channel)
        assert operator.stop() == 0
        resumed = len(operator.handled("Handler 'resume' succeeded"))
        operator.log_level = "DEBUG"
        operator.start()

        async def both_resumed() -> bool:
            return len(operator.handled("Handler 'resume' succeeded")) >= resumed + 2

        await eventually(both_resumed, 10, "both resumed")
        ticks = len(operator.handled("Timer 'refresh' succeeded"))

        async def ticked() -> bool:
            return len(operator.handled("Timer 'refresh' succeeded")) >= ticks + 4

        await eventually(ticked, 10, "two timer ticks each")
        writes = []
        while msg := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1):
            writes.append(msg)
    assert writes == [], "the restarted operator rewrote the registry"
    assert not operator.handled("SourceNotFound"), operator.tail()
    for (kind, name), obj in before.items():
        after = await cluster.get(kind, name, namespace)
        assert obj is not None and after is not None
        assert after["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"], (
            f"{kind}/{name} was written by the restarted operator: "
            f"{json.dumps(after.get('status'))}"
        )


async def test_operator_serves_endpoints_on_a_cluster_without_the_source_crd(
    tmp_path_factory: pytest.TempPathFactory, config: Config, registry: Registry, tmp_path: Path
) -> None:
    """A helm upgrade installs no new CRD (docs/kubernetes.md): until ``kubectl apply -f
    crds/``, the new operator must go on serving endpoints, without WebhookSources."""
    plane = ControlPlane(tmp_path_factory.mktemp("no-source-crd"))
    try:
        plane.start()
        plane.install_crd(REPO / "crds" / "webhookendpoints.yaml")
        plane.kubectl("create", "namespace", "upgrade")
        op = OperatorProcess(plane, operator_env(config, "upgrade"), tmp_path / "operator.log")
        try:
            op.start()  # ready: it waits for no index of a resource the cluster lacks
            await apply(
                plane,
                endpoint_doc("plain", "upgrade", URL),
                endpoint_doc("subscriber", "upgrade", URL, source="feed"),
            )
            await ready(plane, "upgrade", "whe/plain")
            await registered(registry, "upgrade/plain", op)
            await until_status(
                plane,
                "subscriber",
                "upgrade",
                ready_is("False", "SourceNotFound"),
                10,
                "Ready=False SourceNotFound",
                op,
            )
        finally:
            op.stop()
    finally:
        plane.stop()
