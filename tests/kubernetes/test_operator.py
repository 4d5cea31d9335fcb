"""The operator against a real API server and a real Redis: WebhookEndpoints become
registry records, and the status says what happened."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hookline.config import Config
from hookline.models import key_hash
from hookline.store import Queue, Registry, Store
from tests.kubernetes.cluster import ControlPlane, OperatorProcess
from tests.kubernetes.conftest import INTERVAL, operator_env
from tests.kubernetes.helpers import (
    apply,
    condition,
    endpoint_doc,
    metrics,
    probe,
    registered,
    secret_doc,
    secret_value,
    until_status,
)
from tests.peers import RedisServer, eventually
from tests.stack import stack_config

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
    config = stack_config(own_redis.url, "flush", str(tmp_path / "bodies"))
    op = OperatorProcess(cluster, operator_env(config, namespace), tmp_path / "operator.log")
    store = Store.connect(config)
    registry = store.registry
    try:
        op.start()
        await apply(
            cluster,
            endpoint_doc("a", namespace, URL),
            endpoint_doc("b", namespace, "https://b.example.com/"),
        )
        before = {n: await registered(registry, f"{namespace}/{n}", op) for n in ("a", "b")}
        await store.redis.flushall()
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
        found = await store.redis.hget(registry.keys.key_index, key_hash(key))  # type: ignore[misc]
        assert found == f"{namespace}/a".encode()
    finally:
        op.stop()
        await store.aclose()


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

    async with registry.conn.redis.pubsub() as pubsub:
        await pubsub.subscribe(registry.channel)
        assert operator.stop() == 0
        resumed = len(operator.handled("Handler 'resume' succeeded"))
        ticks = len(operator.handled("Timer 'refresh' succeeded"))
        operator.log_level = "DEBUG"  # kopf's line per handler run, to count them
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
    # One line said what was done, at the creation; the restart did nothing worth a line.
    assert len(operator.handled(f"{namespace}/steady: ")) == 1
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
    config = stack_config(own_redis.url, "down", str(tmp_path / "bodies"))
    op = OperatorProcess(cluster, operator_env(config, namespace), tmp_path / "operator.log")
    store = Store.connect(config)
    registry = store.registry
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
        assert probe(op, "/readyz")[0] == 503
        assert probe(op, "/healthz")[0] == 200  # alive: no restart for a Redis outage
        own_redis.start()
        await cluster.akubectl(
            "wait", "--for=condition=Ready", "--timeout=15s", "-n", namespace, "whe/patient"
        )
        await registered(registry, f"{namespace}/patient", op)
    finally:
        op.stop()
        await store.aclose()


async def test_operator_serves_probes_and_metrics(operator: OperatorProcess) -> None:
    assert probe(operator, "/healthz") == (200, '{"status": "ok"}')
    assert probe(operator, "/readyz") == (200, '{"status": "ready"}')
    code, text = probe(operator, "/metrics")
    assert code == 200 and "# TYPE" in text


async def test_endpoint_conditions_are_served_as_series_for_the_alert_rules(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    """``hookline_endpoint_condition`` says what ``kubectl get whe`` says: the alert rules
    read an endpoint the operator cannot register and one a dispatcher disabled from it."""
    endpoint = f"{namespace}/watched"

    def conditions() -> set[tuple[str, str, str]]:
        return {
            (labels["type"], labels["status"], labels["reason"])
            for (name, pairs), value in metrics(operator).items()
            if name == "hookline_endpoint_condition"
            and (labels := dict(pairs))["endpoint"] == endpoint
            and value == 1
        }

    async def until(wanted: set[tuple[str, str, str]], what: str) -> None:
        async def shown() -> bool:
            return conditions() == wanted

        try:
            await eventually(shown, 5 + 2 * INTERVAL, what)
        except pytest.fail.Exception:
            pytest.fail(f"{what}: served {conditions()}\n{operator.tail()}", pytrace=False)

    await apply(
        cluster, endpoint_doc("watched", namespace, URL, keySecretRef={"name": "watched-key"})
    )
    # (Delivering says whether a dispatcher would deliver: nothing stops it but the record.)
    await until(
        {("Ready", "False", "SecretNotFound"), ("Delivering", "True", "Active")},
        "Ready=False SecretNotFound",
    )

    await apply(cluster, secret_doc("watched-key", namespace, key="k"))
    await until(
        {("Ready", "True", "Registered"), ("Delivering", "True", "Active")}, "registered, active"
    )

    await registry.disable(endpoint, "endpoint answered 410 Gone")  # as a dispatcher does
    await until({("Ready", "True", "Registered"), ("Delivering", "False", "Disabled")}, "disabled")

    await cluster.akubectl("delete", "whe", "watched", "-n", namespace)
    await until(set(), "no series once the endpoint is deleted")


async def test_endpoint_applied_again_after_delete_adopts_its_generated_secrets(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    """Delete and apply again, as GitOps tools do: the Secrets generated for the deleted
    endpoint become the new one's (with a garbage collector they would otherwise go, owned
    by an endpoint that no longer exists), and the key senders hold keeps working."""
    await apply(cluster, endpoint_doc("again", namespace, URL))
    await cluster.akubectl(
        "wait", "--for=condition=Ready", "--timeout=10s", "-n", namespace, "whe/again"
    )
    first = await cluster.get("whe", "again", namespace)
    key = await secret_value(cluster, "again-key", namespace, "key")
    signing = await secret_value(cluster, "again-signing", namespace, "secret")
    await cluster.akubectl("delete", "whe", "again", "-n", namespace, "--timeout=10s")
    assert await registry.get(f"{namespace}/again") is None
    # No garbage collector runs here: the Secrets stay, owned by the deleted endpoint, as
    # they do on a cluster until its collector gets to them.

    await apply(cluster, endpoint_doc("again", namespace, URL))
    await cluster.akubectl(
        "wait", "--for=condition=Ready", "--timeout=10s", "-n", namespace, "whe/again"
    )
    second = await cluster.get("whe", "again", namespace)
    assert first is not None and second is not None
    live = second["metadata"]["uid"]
    assert live != first["metadata"]["uid"]
    for name in ("again-key", "again-signing"):
        secret = await cluster.get("secret", name, namespace)
        assert secret is not None
        owners = [(o["kind"], o["name"], o["uid"]) for o in secret["metadata"]["ownerReferences"]]
        assert owners == [("WebhookEndpoint", "again", live)], name
    assert await secret_value(cluster, "again-key", namespace, "key") == key
    assert await secret_value(cluster, "again-signing", namespace, "secret") == signing
    ep = await registered(registry, f"{namespace}/again", operator)
    assert ep.key_hashes == (key_hash(key),)
    assert [s.secret for s in ep.signing_secrets] == [signing]
    adopted = operator.handled(f"{namespace}/again: Secret again-key adopted")
    assert len(adopted) == 1 and " INFO " in adopted[0], operator.tail()


async def test_secret_of_a_generated_name_that_hookline_did_not_make_is_left_alone(
    cluster: ControlPlane, namespace: str, operator: OperatorProcess, registry: Registry
) -> None:
    """A Secret someone else made under the name hookline would generate is never changed
    nor used: the endpoint says why it is not ready, until the Secret goes or is named."""
    await apply(cluster, secret_doc("theirs-key", namespace, key="someone-elses-key"))
    before = await cluster.get("secret", "theirs-key", namespace)
    await apply(cluster, endpoint_doc("theirs", namespace, URL))
    status = await until_status(
        cluster,
        "theirs",
        namespace,
        lambda s: condition(s, "Ready").get("reason") == "SecretConflict",
        10,
        "Ready=False SecretConflict",
        operator,
    )
    ready = condition(status, "Ready")
    assert ready["status"] == "False"
    assert "'theirs-key'" in ready["message"] and "keySecretRef" in ready["message"]
    assert await registry.get(f"{namespace}/theirs") is None
    after = await cluster.get("secret", "theirs-key", namespace)
    assert before is not None and after is not None
    assert after["metadata"] == before["metadata"], "the operator changed someone else's Secret"

    # Gone: hookline generates its own at once (the Secret watch), owned by the endpoint.
    await cluster.akubectl("delete", "secret", "theirs-key", "-n", namespace)
    await cluster.akubectl(
        "wait", "--for=condition=Ready", "--timeout=10s", "-n", namespace, "whe/theirs"
    )
    key = await secret_value(cluster, "theirs-key", namespace, "key")
    assert key != "someone-elses-key"
    ep = await registered(registry, f"{namespace}/theirs", operator)
    assert ep.key_hashes == (key_hash(key),)


async def test_operator_at_rest_logs_no_line_per_tick_and_one_per_creation(
    cluster: ControlPlane, namespace: str, config: Config, queue: Queue, tmp_path: Path
) -> None:
    """At 300 endpoints a line per endpoint per tick is 600 lines a minute: routine success
    is at DEBUG, what the operator changes stays at INFO."""
    names = [f"quiet-{i:02}" for i in range(20)]
    op = OperatorProcess(
        cluster,
        operator_env(config, namespace, HOOKLINE_OPERATOR_INTERVAL="0.5"),
        tmp_path / "operator.log",
    )

    def lines() -> list[str]:
        return op.log.read_text(errors="replace").splitlines()

    try:
        op.start()
        await apply(cluster, *(endpoint_doc(n, namespace, URL) for n in names))
        await _figures(cluster, namespace, names, 0, op)
        at_rest = len(lines())
        # Three rounds in which every endpoint's timer must have run: a figure of each
        # changes in Redis (as a dispatcher's delivery changes it) and reaches its status.
        for delivered in (1, 2, 3):
            for n in names:
                await queue.conn.redis.hincrby(queue.keys.stats(f"{namespace}/{n}"), "delivered", 1)  # type: ignore[misc]
            await _figures(cluster, namespace, names, delivered, op)
        info = [ln for ln in lines()[at_rest:] if " INFO " in ln]
        assert info == [], "\n".join(info)

        created = len(lines())
        await apply(cluster, endpoint_doc("quiet-new", namespace, URL))
        await _figures(cluster, namespace, ["quiet-new"], 0, op)
        info = [ln for ln in lines()[created:] if " INFO " in ln]
        assert len(info) == 1, "\n".join(info)
        assert f"{namespace}/quiet-new: " in info[0]
        assert "Secret quiet-new-key generated" in info[0] and "registered" in info[0]
    finally:
        op.stop()


async def _figures(
    cluster: ControlPlane, namespace: str, names: list[str], delivered: int, op: OperatorProcess
) -> None:
    """Wait until every endpoint of ``names`` is Ready with ``delivered`` in its status."""
    deadline = time.monotonic() + 30
    behind: list[str] = names
    while time.monotonic() < deadline:
        done = await cluster.akubectl("get", "whe", "-n", namespace, "-o", "json")
        status = {
            o["metadata"]["name"]: o.get("status") or {} for o in json.loads(done.stdout)["items"]
        }
        behind = [
            n
            for n in names
            if condition(status.get(n, {}), "Ready").get("status") != "True"
            or status[n].get("delivered") != delivered
        ]
        if not behind:
            return
        await asyncio.sleep(0.2)
    pytest.fail(
        f"not Ready with delivered={delivered} after 30 s: {behind}\noperator log:\n{op.tail()}",
        pytrace=False,
    )
