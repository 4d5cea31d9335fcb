"""The operator against a real API server and a real Redis: WebhookEndpoints become
registry records, and the status says what happened."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from hookline.config import Config
from hookline.models import key_hash
from hookline.registry import Registry
from tests.kubernetes.cluster import ControlPlane, OperatorProcess
from tests.kubernetes.conftest import INTERVAL, operator_env
from tests.kubernetes.helpers import (
    apply,
    condition,
    endpoint_doc,
    registered,
    secret_doc,
    secret_value,
    until_status,
)
from tests.peers import RedisServer, eventually
from tests.stack import test_config as make_config

URL = "https://hooks.example.com/in"


async def test_applied_endpoint_is_registered_and_ready(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    started = time.monotonic()
    await apply(cluster, endpoint_doc("orders", namespace, URL, forwardHeaders=["X-Event"]))
    ep = await registered(registry, f"{namespace}/orders", operator, seconds=5)
    assert time.monotonic() - started < 5
    assert ep.url == URL
    assert ep.forward_headers == ("x-event",)
    await cluster.akubectl(
        "wait", "--for=condition=Ready", "--timeout=10s", "-n", namespace, "whe/orders"
    )
    obj = await cluster.get("whe", "orders", namespace)
    assert obj is not None
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["keySecretName"] == "orders-key"
    assert condition(status, "Ready")["reason"] == "Registered"
    assert condition(status, "Delivering")["status"] == "True"
    # The generated Secrets belong to the endpoint and hold what the record uses.
    key = await secret_value(cluster, "orders-key", namespace, "key")
    assert ep.key_hashes == (key_hash(key),)
    signing = await secret_value(cluster, "orders-signing", namespace, "secret")
    assert [s.secret for s in ep.signing_secrets] == [signing]
    owner = (await cluster.get("secret", "orders-key", namespace) or {})["metadata"][
        "ownerReferences"
    ][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "WebhookEndpoint",
        "orders",
        obj["metadata"]["uid"],
    )


async def test_changed_url_updates_the_registry(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    await apply(cluster, endpoint_doc("moving", namespace, URL))
    first = await registered(registry, f"{namespace}/moving", operator)
    await apply(cluster, endpoint_doc("moving", namespace, "https://new.example.com/hook"))
    second = await registered(
        registry,
        f"{namespace}/moving",
        operator,
        lambda ep: ep.url == "https://new.example.com/hook",
        what="the new URL in the registry",
    )
    assert second.key_hashes == first.key_hashes  # the key Secret is kept
    assert second.generation == 2
    await until_status(
        cluster,
        "moving",
        namespace,
        lambda s: s.get("observedGeneration") == 2,
        5,
        "observedGeneration 2",
        operator,
    )


async def test_missing_secret_is_reported_then_resolved(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    await apply(cluster, endpoint_doc("later", namespace, URL, keySecretRef={"name": "later-key"}))
    status = await until_status(
        cluster,
        "later",
        namespace,
        lambda s: condition(s, "Ready").get("status") == "False",
        5,
        "Ready=False",
        operator,
    )
    assert condition(status, "Ready")["reason"] == "SecretNotFound"
    assert "later-key" in condition(status, "Ready")["message"]
    assert await registry.get(f"{namespace}/later") is None

    await apply(cluster, secret_doc("later-key", namespace, key="the-key-at-last"))
    await cluster.akubectl(
        "wait", "--for=condition=Ready", "--timeout=5s", "-n", namespace, "whe/later"
    )
    ep = await registered(registry, f"{namespace}/later", operator)
    assert ep.key_hashes == (key_hash("the-key-at-last"),)


async def test_invalid_signing_secret_is_a_permanent_invalid_spec(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    await apply(
        cluster,
        secret_doc("plain", namespace, secret="not-a-whsec-secret"),
        endpoint_doc("badsig", namespace, URL, signingSecretRef={"name": "plain"}),
    )
    status = await until_status(
        cluster,
        "badsig",
        namespace,
        lambda s: condition(s, "Ready").get("reason") == "InvalidSpec",
        5,
        "Ready=False InvalidSpec",
        operator,
    )
    assert condition(status, "Ready")["status"] == "False"
    assert "whsec_" in condition(status, "Ready")["message"]
    assert await registry.get(f"{namespace}/badsig") is None


async def test_deleted_endpoint_leaves_no_record_and_no_finalizer(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    await apply(cluster, endpoint_doc("gone", namespace, URL))
    await registered(registry, f"{namespace}/gone", operator)
    obj = await cluster.get("whe", "gone", namespace)
    assert obj is not None and obj["metadata"]["finalizers"] == ["hookline.dev/registry"]
    await cluster.akubectl("delete", "whe", "gone", "-n", namespace, "--timeout=10s")
    assert await cluster.get("whe", "gone", namespace) is None
    assert await registry.get(f"{namespace}/gone") is None


async def test_delete_when_the_record_is_already_missing_does_not_stick(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    await apply(cluster, endpoint_doc("orphan", namespace, URL))
    await registered(registry, f"{namespace}/orphan", operator)
    await registry.remove(f"{namespace}/orphan")
    await cluster.akubectl("delete", "whe", "orphan", "-n", namespace, "--timeout=10s")
    assert await cluster.get("whe", "orphan", namespace) is None


async def test_flushed_redis_is_refilled_within_one_interval(
    cluster: ControlPlane, namespace: str, own_redis: RedisServer, tmp_path: Path
) -> None:
    config = make_config(own_redis.url, "flush", str(tmp_path / "bodies"))
    op = OperatorProcess(cluster, operator_env(config, namespace), tmp_path / "operator.log")
    client = aioredis.from_url(own_redis.url)
    registry = Registry(client, config.prefix)
    try:
        op.start()
        await apply(
            cluster,
            endpoint_doc("a", namespace, URL),
            endpoint_doc("b", namespace, "https://b.example.com/"),
        )
        before = {n: await registered(registry, f"{namespace}/{n}", op) for n in ("a", "b")}
        await client.flushall()
        flushed = time.monotonic()
        for n, ep in before.items():
            again = await registered(
                registry,
                f"{namespace}/{n}",
                op,
                seconds=INTERVAL + 2,
                what="the record rewritten after FLUSHALL",
            )
            assert again == ep
        assert time.monotonic() - flushed < INTERVAL + 2
        # The key index came back too: a receiver finds the endpoint by its key.
        key = await secret_value(cluster, "a-key", namespace, "key")
        assert await client.hget(registry.keys_key, key_hash(key)) == f"{namespace}/a".encode()
    finally:
        op.stop()
        await client.aclose()


async def test_restarted_operator_handles_nothing_twice(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    registry: Registry,
    config: Config,
) -> None:
    await apply(cluster, endpoint_doc("steady", namespace, URL))
    await cluster.akubectl(
        "wait", "--for=condition=Ready", "--timeout=10s", "-n", namespace, "whe/steady"
    )
    record = await registered(registry, f"{namespace}/steady", operator)
    await until_status(
        cluster,
        "steady",
        namespace,
        lambda s: "delivered" in s,
        INTERVAL + 5,
        "the figures in the status",
        operator,
    )
    endpoint_before = await cluster.get("whe", "steady", namespace)
    secret_before = await cluster.get("secret", "steady-key", namespace)
    events_before = (await cluster.akubectl("get", "events", "-n", namespace, "-o", "json")).stdout

    async with registry.redis.pubsub() as pubsub:
        await pubsub.subscribe(registry.channel)
        assert operator.stop() == 0
        resumed = len(operator.handled("Handler 'resume' succeeded"))
        ticks = len(operator.handled("Timer 'refresh' succeeded"))
        operator.start()
        # Resumed, and three timer ticks gone by: anything it would redo shows by then.
        await eventually(
            _logged(operator, "Handler 'resume' succeeded", resumed + 1), 10, "the resume"
        )
        await eventually(
            _logged(operator, "Timer 'refresh' succeeded", ticks + 3), 10, "three timer ticks"
        )
        writes = []
        while msg := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1):
            writes.append(msg)
    assert writes == [], "the restarted operator rewrote the registry"
    assert await registry.get(f"{namespace}/steady") == record
    assert len(operator.handled("Handler 'create' succeeded")) == 1
    for kind, name, before in (
        ("secret", "steady-key", secret_before),
        ("whe", "steady", endpoint_before),
    ):
        after = await cluster.get(kind, name, namespace)
        assert before is not None and after is not None
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], (
            f"{kind}/{name} was written by the restarted operator"
        )
    events_after = (await cluster.akubectl("get", "events", "-n", namespace, "-o", "json")).stdout
    assert len(json.loads(events_after)["items"]) == len(json.loads(events_before)["items"])


def _logged(op: OperatorProcess, phrase: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(op.handled(phrase)) >= count

    return check


async def test_redis_down_is_reported_and_retried_until_registered(
    cluster: ControlPlane, namespace: str, own_redis: RedisServer, tmp_path: Path
) -> None:
    config = make_config(own_redis.url, "down", str(tmp_path / "bodies"))
    op = OperatorProcess(cluster, operator_env(config, namespace), tmp_path / "operator.log")
    client = aioredis.from_url(own_redis.url)
    registry = Registry(client, config.prefix)
    try:
        op.start()
        own_redis.stop()
        await apply(cluster, endpoint_doc("patient", namespace, URL))
        status = await until_status(
            cluster,
            "patient",
            namespace,
            lambda s: condition(s, "Ready").get("reason") == "RegistryUnavailable",
            10,
            "Ready=False RegistryUnavailable",
            op,
        )
        assert condition(status, "Ready")["status"] == "False"
        assert _probe(op, "/readyz")[0] == 503
        assert _probe(op, "/healthz")[0] == 200  # alive: no restart for a Redis outage
        own_redis.start()
        await cluster.akubectl(
            "wait", "--for=condition=Ready", "--timeout=15s", "-n", namespace, "whe/patient"
        )
        await registered(registry, f"{namespace}/patient", op)
    finally:
        op.stop()
        await client.aclose()


async def test_operator_serves_probes_and_metrics(operator: OperatorProcess) -> None:
    assert _probe(operator, "/healthz") == (200, '{"status": "ok"}')
    assert _probe(operator, "/readyz") == (200, '{"status": "ready"}')
    code, text = _probe(operator, "/metrics")
    assert code == 200 and "# TYPE" in text


def _probe(op: OperatorProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
