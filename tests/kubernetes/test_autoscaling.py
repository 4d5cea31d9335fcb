"""The operator scales dispatcher Deployments on their pool's work, against a real API server
and a real Redis. No controller-manager runs, so the Deployments have no pods: what the
scaler sets is ``spec.replicas``, through the ``scale`` subresource, which is all these
tests read. The backlog is made of real entries written with ``Queue.enqueue``."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hookline.config import Config
from hookline.models import Webhook, endpoint_from_spec, new_id
from hookline.store import Figures, Queue, Store
from tests.kubernetes.cluster import ControlPlane, OperatorProcess
from tests.kubernetes.conftest import operator_env
from tests.kubernetes.helpers import apply, dispatcher_doc, metrics, refusals, sample
from tests.peers import REPO, RedisServer, eventually
from tests.stack import stack_config

TICK = 0.5  # HOOKLINE_SCALE_INTERVAL in these tests


def scaling_operator(
    cluster: ControlPlane,
    config: Config,
    namespace: str,
    log: Path,
    kubeconfig: Path | None = None,
) -> OperatorProcess:
    env = operator_env(config, namespace, HOOKLINE_SCALE_INTERVAL=str(TICK))
    return OperatorProcess(cluster, env, log, kubeconfig)


@pytest.fixture
def scaler(
    cluster: ControlPlane, config: Config, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = scaling_operator(cluster, config, namespace, tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()


async def enqueue(queue: Queue, pool: str, n: int) -> None:
    await asyncio.gather(
        *(queue.enqueue(pool, Webhook(new_id(), "ns/ep", {}, b"{}")) for _ in range(n))
    )


async def drain(queue: Queue, pool: str) -> None:
    """What the pool's dispatchers do: read every entry and settle it as delivered."""
    await queue.ensure_group(pool)
    while entries := await queue.read(pool, "test-consumer", 100, block_ms=10):
        for msg_id, webhook in entries:
            await queue.delivered(pool, msg_id, webhook)
    assert (await Figures(queue.conn).backlog(pool))["stream"] == 0


# -- reading the cluster and the operator


async def ticks_pass(op: OperatorProcess, n: int = 2) -> None:
    """Return once ``n`` more scaling rounds have started: with n=2 the first round that
    started after the call has finished (rounds run one after the other)."""
    start = sample(op, "hookline_scaler_ticks_total") or 0.0

    async def counted() -> bool:
        return (sample(op, "hookline_scaler_ticks_total") or 0.0) >= start + n

    await eventually(counted, 10 + n * TICK * 4, f"{n} scaling rounds\n{op.tail()}")


async def deployment(cluster: ControlPlane, name: str, namespace: str) -> dict[str, Any]:
    obj = await cluster.get("deployment", name, namespace)
    assert obj is not None, f"deployment {name} is gone"
    return obj


async def replicas(cluster: ControlPlane, name: str, namespace: str) -> int:
    return int((await deployment(cluster, name, namespace))["spec"]["replicas"])


async def until_replicas(
    cluster: ControlPlane,
    name: str,
    namespace: str,
    wanted: int,
    op: OperatorProcess,
    seconds: float = 15,
) -> None:
    deadline = time.monotonic() + seconds
    seen = -1
    while time.monotonic() < deadline:
        seen = await replicas(cluster, name, namespace)
        if seen == wanted:
            return
        await asyncio.sleep(0.1)
    pytest.fail(
        f"{name}: replicas {seen}, not {wanted}, after {seconds} s\noperator log:\n{op.tail()}",
        pytrace=False,
    )


async def events(
    cluster: ControlPlane, namespace: str, name: str, reason: str | None = None
) -> list[dict[str, Any]]:
    selector = f"involvedObject.name={name}" + (f",reason={reason}" if reason else "")
    done = await cluster.akubectl(
        "get", "events", "-n", namespace, "--field-selector", selector, "-o", "json"
    )
    items: list[dict[str, Any]] = json.loads(done.stdout)["items"]
    return items


async def started(op: OperatorProcess, name: str, pool: str, namespace: str) -> None:
    """The scaler has measured ``name`` once (its replicas gauge exists)."""

    async def seen() -> bool:
        labels = {"namespace": namespace, "deployment": name, "pool": pool}
        return sample(op, "hookline_scaler_replicas", **labels) is not None

    await eventually(seen, 10, f"the scaler to see {name}\n{op.tail()}")


# -- the behaviour


async def test_backlog_raises_replicas_at_the_next_tick(
    cluster: ControlPlane, namespace: str, scaler: OperatorProcess, queue: Queue
) -> None:
    await apply(cluster, dispatcher_doc("orders", namespace, "orders", target_lag_per_replica=10))
    await started(scaler, "orders", "orders", namespace)
    assert await replicas(cluster, "orders", namespace) == 1

    await enqueue(queue, "orders", 45)
    await ticks_pass(scaler, 2)  # the first round that began after the backlog is done
    assert await replicas(cluster, "orders", namespace) == 5  # ceil(45 / 10)

    [event] = await events(cluster, namespace, "orders", "ScaledUp")
    assert event["type"] == "Normal"
    assert "1 → 5 replicas" in event["message"]
    assert "work 45 (stream 45: lag 45, in flight 0" in event["message"]
    assert "target 10 per replica, bounds [1, 10]" in event["message"]
    labels = {"namespace": namespace, "deployment": "orders", "pool": "orders"}
    assert sample(scaler, "hookline_scaler_replicas", **labels) == 5
    assert sample(scaler, "hookline_scaler_rescales_total", **labels, direction="up") == 1
    assert sample(scaler, "hookline_scaler_work", pool="orders") == 45


async def test_drained_backlog_keeps_replicas_until_the_window_passes(
    cluster: ControlPlane, namespace: str, scaler: OperatorProcess, queue: Queue
) -> None:
    window = 4.0
    await apply(
        cluster,
        dispatcher_doc(
            "bulk",
            namespace,
            "bulk",
            target_lag_per_replica=10,
            scale_down_window_seconds=int(window),
        ),
    )
    await started(scaler, "bulk", "bulk", namespace)
    await enqueue(queue, "bulk", 40)
    await until_replicas(cluster, "bulk", namespace, 4, scaler)

    drain_started = time.monotonic()
    await drain(queue, "bulk")
    # The last recommendation of 4 was made at most one tick before the drain began, so
    # the window ends no earlier than this:
    window_ends = drain_started - TICK + window
    last_up = drain_started
    while (now := time.monotonic()) < drain_started + window + 10:
        if await replicas(cluster, "bulk", namespace) != 4:
            break
        last_up = now  # 4 replicas at some moment after `now`
        await asyncio.sleep(0.1)
    assert last_up >= window_ends - 0.2, (
        f"scaled down {window_ends - last_up:.1f} s before the window passed"
    )
    assert await replicas(cluster, "bulk", namespace) == 1, scaler.tail()
    [event] = await events(cluster, namespace, "bulk", "ScaledDown")
    assert "4 → 1 replicas" in event["message"] and "work 0" in event["message"]


async def test_replicas_stay_within_min_and_max(
    cluster: ControlPlane, namespace: str, scaler: OperatorProcess, queue: Queue
) -> None:
    await apply(
        cluster,
        dispatcher_doc("capped", namespace, "capped", max_replicas=3, target_lag_per_replica=10),
        dispatcher_doc("floored", namespace, "floored", replicas=1, min_replicas=2),
    )
    await enqueue(queue, "capped", 100)  # ceil(100 / 10) = 10 wanted
    await until_replicas(cluster, "capped", namespace, 3, scaler)
    await until_replicas(cluster, "floored", namespace, 2, scaler)  # no work, raised to min
    await ticks_pass(scaler, 4)
    assert await replicas(cluster, "capped", namespace) == 3
    assert await replicas(cluster, "floored", namespace) == 2
    [event] = await events(cluster, namespace, "capped", "ScaledUp")
    assert "held at max 3" in event["message"]


async def test_idle_pool_goes_to_zero_after_the_window_and_wakes_on_work(
    cluster: ControlPlane, namespace: str, scaler: OperatorProcess, queue: Queue
) -> None:
    await apply(
        cluster,
        dispatcher_doc(
            "nightly",
            namespace,
            "nightly",
            replicas=2,
            min_replicas=0,
            target_lag_per_replica=10,
            scale_down_window_seconds=2,
        ),
    )
    applied = time.monotonic()
    await until_replicas(cluster, "nightly", namespace, 0, scaler)
    # Seen with 2 replicas at its first tick: not idle for a window before that.
    assert time.monotonic() - applied >= 1.9
    await enqueue(queue, "nightly", 3)
    await until_replicas(cluster, "nightly", namespace, 1, scaler)  # ceil(3 / 10)
    # Two delivered, one failed and due again in a while: scheduled retries are not work,
    # so the pool goes back to zero; the retry coming due wakes it, since only a running
    # dispatcher moves due retries back to the stream.
    await queue.ensure_group("nightly")
    entries = await queue.read("nightly", "test-consumer", 10, block_ms=10)
    assert len(entries) == 3
    for msg_id, webhook in entries[:2]:
        await queue.delivered("nightly", msg_id, webhook)
    msg_id, webhook = entries[2]
    await queue.reschedule("nightly", msg_id, webhook, delay=8.0)
    await until_replicas(cluster, "nightly", namespace, 0, scaler, seconds=7)
    await until_replicas(cluster, "nightly", namespace, 1, scaler)
    woken = await events(cluster, namespace, "nightly", "ScaledUp")
    assert len(woken) == 2
    assert any("retries due 1 of 1 scheduled" in e["message"] for e in woken), woken


async def test_two_pools_are_scaled_independently(
    cluster: ControlPlane, namespace: str, scaler: OperatorProcess, queue: Queue
) -> None:
    await apply(
        cluster,
        dispatcher_doc("fast", namespace, "fast", target_lag_per_replica=10),
        dispatcher_doc("slow", namespace, "slow", target_lag_per_replica=10),
    )
    await started(scaler, "slow", "slow", namespace)
    slow_version = (await deployment(cluster, "slow", namespace))["metadata"]["resourceVersion"]
    await enqueue(queue, "fast", 30)
    await until_replicas(cluster, "fast", namespace, 3, scaler)
    await ticks_pass(scaler, 2)
    slow = await deployment(cluster, "slow", namespace)
    assert slow["spec"]["replicas"] == 1
    assert slow["metadata"]["resourceVersion"] == slow_version, "the idle pool was written"

    await enqueue(queue, "slow", 70)
    await until_replicas(cluster, "slow", namespace, 7, scaler)
    steps = [e["message"].split(";")[0] for e in await events(cluster, namespace, "slow")]
    assert sorted(steps) == ["pool 'slow': 1 → 5 replicas", "pool 'slow': 5 → 7 replicas"]
    assert await replicas(cluster, "fast", namespace) == 3


async def test_every_pool_shows_how_long_its_entries_wait_served_or_not(
    cluster: ControlPlane, namespace: str, scaler: OperatorProcess, store: Store, config: Config
) -> None:
    """The ``hookline_pool_*`` gauges the alert rules read: measured for a pool with a
    Deployment and for one only an endpoint names, which no dispatcher serves."""
    await apply(cluster, dispatcher_doc("orders", namespace, "orders"))
    stray = endpoint_from_spec(
        "shop/stray", {"url": "https://hooks.example.com/in", "pool": "nowhere"}, ["k"], [], config
    )
    await store.registry.put(stray)
    await enqueue(store.queue, "nowhere", 3)
    [(first, _)] = await store.conn.redis.xrange(store.queue.stream("nowhere"), count=1)
    added = int(first.decode().partition("-")[0]) / 1000
    await asyncio.sleep(1.0)
    await ticks_pass(scaler, 2)
    served = metrics(scaler)  # one scrape: the gauges of one tick
    gauges = {
        (name, pool): served.get((f"hookline_pool_{name}_seconds", frozenset({("pool", pool)})))
        for name in ("oldest_age", "oldest_unread_age")
        for pool in ("orders", "nowhere")
    }
    assert gauges[("oldest_age", "orders")] == gauges[("oldest_unread_age", "orders")] == 0
    oldest = gauges[("oldest_age", "nowhere")]
    assert oldest is not None and 1.0 <= oldest <= time.time() - added
    assert gauges[("oldest_unread_age", "nowhere")] == oldest  # no dispatcher read any

    await drain(store.queue, "nowhere")
    await ticks_pass(scaler, 2)
    assert sample(scaler, "hookline_pool_oldest_age_seconds", pool="nowhere") == 0
    assert sample(scaler, "hookline_pool_oldest_unread_age_seconds", pool="nowhere") == 0
    # An endpoint deleted takes its pool's gauges with it at the next tick.
    await store.registry.remove(stray.id)
    await ticks_pass(scaler, 2)
    assert sample(scaler, "hookline_pool_oldest_age_seconds", pool="nowhere") is None
    assert sample(scaler, "hookline_pool_oldest_age_seconds", pool="orders") == 0


async def test_deployment_without_the_label_is_never_touched(
    cluster: ControlPlane, namespace: str, scaler: OperatorProcess, queue: Queue
) -> None:
    bystanders = [
        dispatcher_doc("unlabelled", namespace, "shared", labelled=False, target_lag_per_replica=1),
        dispatcher_doc(
            "receiver",
            namespace,
            "shared",
            labels={"hookline.dev/component": "receiver"},
            target_lag_per_replica=1,
        ),
    ]
    await apply(
        cluster,
        *bystanders,
        dispatcher_doc("scaled", namespace, "busy", target_lag_per_replica=10),
    )
    before = {
        d["metadata"]["name"]: await deployment(cluster, d["metadata"]["name"], namespace)
        for d in bystanders
    }
    await enqueue(queue, "shared", 50)
    await enqueue(queue, "busy", 20)
    await until_replicas(cluster, "scaled", namespace, 2, scaler)  # the scaler is at work
    await ticks_pass(scaler, 4)
    for name, old in before.items():
        now = await deployment(cluster, name, namespace)
        assert now["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"], name
        assert now["spec"]["replicas"] == 1
        assert await events(cluster, namespace, name) == []
    # The scaled one got its replicas and nothing else: no finalizer, no kopf annotations.
    scaled = await deployment(cluster, "scaled", namespace)
    assert "finalizers" not in scaled["metadata"]
    assert set(scaled["metadata"]["annotations"]) <= {
        "hookline.dev/pool",
        "hookline.dev/target-lag-per-replica",
        "kubectl.kubernetes.io/last-applied-configuration",
    }


async def test_invalid_policy_is_reported_and_not_scaled(
    cluster: ControlPlane, namespace: str, scaler: OperatorProcess, queue: Queue
) -> None:
    await apply(cluster, dispatcher_doc("typo", namespace, "typo", max_replicas="lots"))
    await enqueue(queue, "typo", 5000)

    async def warned() -> bool:
        return bool(await events(cluster, namespace, "typo", "InvalidPolicy"))

    await eventually(warned, 10, "an InvalidPolicy event")
    [event] = await events(cluster, namespace, "typo", "InvalidPolicy")
    assert event["type"] == "Warning" and "'lots' is not a number" in event["message"]
    await ticks_pass(scaler, 3)
    assert await replicas(cluster, "typo", namespace) == 1
    assert len(await events(cluster, namespace, "typo")) == 1  # reported once, not per tick


async def test_redis_unreachable_leaves_replicas_and_reports_the_reason(
    cluster: ControlPlane, namespace: str, own_redis: RedisServer, tmp_path: Path
) -> None:
    config = stack_config(own_redis.url, "outage", str(tmp_path / "bodies"))
    op = scaling_operator(cluster, config, namespace, tmp_path / "operator.log")
    store = Store.connect(config)
    queue = store.queue
    try:
        op.start()
        await apply(
            cluster, dispatcher_doc("steady", namespace, "steady", target_lag_per_replica=10)
        )
        await enqueue(queue, "steady", 30)
        await until_replicas(cluster, "steady", namespace, 3, op)
        await drain(queue, "steady")  # the work is gone, but nobody can know it now:
        own_redis.stop()

        async def reported() -> bool:
            return bool(await events(cluster, namespace, "steady", "MetricsUnavailable"))

        await eventually(reported, 10, f"a MetricsUnavailable event\n{op.tail()}")
        [event] = await events(cluster, namespace, "steady", "MetricsUnavailable")
        assert event["type"] == "Warning"
        assert "replicas stay at 3" in event["message"]
        assert re.search(
            r"work cannot be measured, replicas stay at 3: (scaler lease|figures): ",
            event["message"],
        ), event["message"]
        assert sample(op, "hookline_scaler_metrics_available", pool="steady") == 0
        await ticks_pass(op, 4)
        assert await replicas(cluster, "steady", namespace) == 3
        assert len(await events(cluster, namespace, "steady", "MetricsUnavailable")) == 1
        assert op.handled("cannot be measured")

        own_redis.start()

        async def measured() -> bool:
            return sample(op, "hookline_scaler_metrics_available", pool="steady") == 1

        await eventually(measured, 15, f"the pool measured again\n{op.tail()}")
    finally:
        op.stop()
        await store.aclose()


async def test_scaler_works_with_only_its_rbac_permissions(
    cluster: ControlPlane, namespace: str, config: Config, queue: Queue, tmp_path: Path
) -> None:
    if cluster.kubectl("get", "namespace", "hookline", check=False).returncode != 0:
        cluster.kubectl("create", "namespace", "hookline")
    cluster.kubectl("apply", "-f", str(REPO / "operator" / "rbac.yaml"))
    token = cluster.kubectl("create", "token", "hookline-operator", "-n", "hookline").stdout
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig_for(token.strip()))
    op = scaling_operator(cluster, config, namespace, tmp_path / "operator.log", kubeconfig)
    try:
        op.start()
        await apply(
            cluster, dispatcher_doc("scoped", namespace, "scoped", target_lag_per_replica=10)
        )
        await enqueue(queue, "scoped", 20)
        await until_replicas(cluster, "scoped", namespace, 2, op)
        assert await events(cluster, namespace, "scoped", "ScaledUp")
    finally:
        op.stop()
    denied = refusals(op)
    assert denied == [], "\n".join(denied)
