"""The user's journey of docs/kubernetes.md on a real node, step by step, in order.

Each test is one step and runs the commands the doc shows (``helm install hookline
helm/hookline``, ``kubectl apply``, ``kubectl wait``, ``kubectl port-forward``, ``curl``'s
POST, ``kubectl get whe``, ``helm upgrade``, ``helm uninstall``) against pods started
from the image built in the same run. Where the doc uses a public image, a locally
built one with the same role stands in: ``localhost/redis:7`` (Debian's redis-server)
for ``redis:7``, ``hookline sink`` in the hookline image for a first endpoint,
``localhost/jaeger`` (the Jaeger built by tools/) for ``jaegertracing/jaeger``.

The later steps go beyond the doc, as an operator would: a backlog that makes the
scaler start dispatcher pods, pods killed with ``--force`` while webhooks flow, a
``helm upgrade`` while senders post. Their webhooks go to a sink on the node (pods
reach it on the bridge address), which records every delivery for the history checker.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from tests.history import History
from tests.kubernetes.test_helm import CHART
from tests.node.cluster import POD_CIDR, SERVICE_CIDR, Node
from tests.node.journey import Sink, User, printer_column, send_many, wait_for
from tests.peers import REPO

# A step waits on real pods (images pulled from the node's store, probes, rollouts): minutes,
# not the suite's default 120 s.
pytestmark = pytest.mark.timeout(600)

NS = "hookline"
RECEIVER = "hookline-receiver"
DISPATCHER = "hookline-dispatcher-default"
INSTANCE = "app.kubernetes.io/instance=hookline"
# The pool of the scaling and fault steps: scales on 500 webhooks of lag per replica, and
# back down after 20 s (the chart's defaults: 1000 and 300 s).
POOL = {"name": "default", "targetLagPerReplica": 500, "scaleDownWindowSeconds": 20}
FIGURES: dict[str, Any] = {}
FIGURES_FILE = REPO / ".cache" / "node-journey.json"  # measured along the way, printed at the end


@pytest.fixture(scope="module")
def user(node: Node, tmp_path_factory: pytest.TempPathFactory) -> User:
    FIGURES["cluster_s"] = {k: round(v, 1) for k, v in node.timings.items()}
    return User(node, tmp_path_factory.mktemp("helm"), NS)


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()
    # For the closing notes of whoever runs it (pytest captures the print without -s).
    FIGURES_FILE.write_text(json.dumps(FIGURES, indent=1) + "\n")
    print(f"\njourney figures ({FIGURES_FILE}): {json.dumps(FIGURES, indent=1)}")


def endpoint(name: str, url: str, **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "hookline.dev/v1alpha1",
            "kind": "WebhookEndpoint",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"url": url, **spec},
        }
    )


def ready_endpoint(user: User, name: str) -> str:
    """``kubectl wait`` for the endpoint, then its ingest key, read as the doc reads it."""
    user.kubectl("wait", "--for=condition=Ready", "-n", NS, f"whe/{name}", "--timeout=60s")
    return user.secret(f"{name}-key", "key")


def test_helm_install_brings_every_pod_to_ready(user: User, image_refs: dict[str, str]) -> None:
    """``helm install hookline`` — the release name the docs use, whose Service
    ``hookline-receiver`` once made the kubelet inject ``HOOKLINE_RECEIVER_PORT=tcp://…``
    into every pod and crash-looped the dispatcher and the operator."""
    user.kubectl("create", "namespace", NS)
    user.kubectl(
        "create", "deployment", "redis", "-n", NS, f"--image={image_refs['redis']}",
        "--", "redis-server", "--appendonly", "yes",
    )  # fmt: skip
    user.kubectl("expose", "deployment", "redis", "-n", NS, "--port", "6379")
    repository, tag = image_refs["hookline"].rsplit(":", 1)
    started = time.monotonic()
    user.helm(
        "install", "hookline", str(CHART), "-n", NS,
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
        "--set", "redis.url=redis://redis.hookline:6379/0",
        "--wait", "--timeout", "120s",
    )  # fmt: skip
    FIGURES["install_to_ready_s"] = round(time.monotonic() - started, 1)
    pods = user.pods(INSTANCE)
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods} == {
        "receiver",
        "dispatcher",
        "operator",
    }
    for pod in pods:
        name = pod["metadata"]["name"]
        assert pod["status"]["phase"] == "Running", name
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"], f"{name} is not ready"
            assert status["restartCount"] == 0, f"{name} restarted:\n{user.logs('pod/' + name)}"
        env = user.kubectl("exec", "-n", NS, name, "--", "env")
        assert "HOOKLINE_RECEIVER_PORT=tcp://" not in env, "service links reached the pod"
    # The image as the chart runs it: uid 10001, a read-only root, /tmp writable, the CLI.
    pod = pods[0]["metadata"]["name"]
    probe = "import os; print(os.getuid()); open('/tmp/x', 'w'); open('/x', 'w')"
    done = user.node.kubectl("exec", "-n", NS, pod, "--", "python3", "-c", probe, check=False)
    assert done.stdout.split() == ["10001"], done.stdout
    assert "Read-only file system: '/x'" in done.stderr, done.stderr
    assert "usage: hookline" in user.kubectl("exec", "-n", NS, pod, "--", "hookline", "--help")


def test_an_endpoint_goes_ready_with_its_key_in_a_generated_secret(user: User) -> None:
    user.helm(
        "upgrade", "hookline", str(CHART), "-n", NS, "--reuse-values",
        "--set-json", f'dispatcher.allowCidrs=["{SERVICE_CIDR}"]', "--wait",
    )  # fmt: skip
    user.kubectl(
        "apply", "-f", "-", input=endpoint("first", "http://sink.hookline.svc.cluster.local/hooks")
    )
    key = ready_endpoint(user, "first")
    assert len(key) >= 32
    assert user.secret("first-signing", "secret").startswith("whsec_")


def test_a_webhook_reaches_a_sink_pod_signed_and_is_counted(
    user: User, image_refs: dict[str, str]
) -> None:
    user.kubectl(
        "create", "deployment", "sink", "-n", NS, f"--image={image_refs['hookline']}",
        "--", "hookline", "sink", "--port", "8080",
    )  # fmt: skip
    user.kubectl(
        "set", "env", "deployment/sink", "-n", NS, "--from=secret/first-signing",
        "--prefix=HOOKLINE_SINK_",
    )  # fmt: skip
    user.kubectl("expose", "deployment", "sink", "-n", NS, "--port", "80", "--target-port", "8080")
    user.kubectl("rollout", "status", "deployment/sink", "-n", NS, "--timeout=90s")
    key = user.secret("first-key", "key")
    with user.port_forward(f"svc/{RECEIVER}", 80) as port:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhooks/send",
            data=b'{"type":"order.created","id":42}',
            headers={"X-WH-Endpoint-Key": key, "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                wid = json.load(resp)["id"]
        except urllib.error.HTTPError as exc:  # say why, with what the receiver logged
            logs = user.logs(f"deployment/{RECEIVER}")
            raise AssertionError(f"{exc.code} {exc.read()!r}; receiver:\n{logs}") from exc
        assert resp.status == 202
    line = wait_for(
        lambda: [ln for ln in user.logs("deployment/sink").splitlines() if wid in ln],
        60,
        f"the sink pod to print webhook {wid}",
    )
    assert "signature=valid" in line[0], line
    assert '"order.created"' in line[0]
    wait_for(
        lambda: printer_column(user.kubectl("get", "whe", "-n", NS), "first", "DELIVERED") == "1",
        90,
        "kubectl get whe to show DELIVERED 1",
        every=3,
    )


def jaeger_traces(port: int) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/traces?service=hookline-receiver&lookback=1h&limit=50"
    with urllib.request.urlopen(url, timeout=10) as resp:
        data: list[dict[str, Any]] = json.load(resp)["data"]
        return data


def test_with_tracing_on_jaeger_holds_one_trace_across_the_pods(
    user: User, image_refs: dict[str, str]
) -> None:
    user.kubectl("create", "deployment", "jaeger", "-n", NS, f"--image={image_refs['jaeger']}")
    user.kubectl(
        "expose", "deployment", "jaeger", "-n", NS, "--port", "4317", "--name", "jaeger-otlp"
    )
    user.kubectl(
        "expose", "deployment", "jaeger", "-n", NS, "--port", "16686", "--name", "jaeger-ui"
    )
    user.kubectl("rollout", "status", "deployment/jaeger", "-n", NS, "--timeout=90s")
    user.helm(
        "upgrade", "hookline", str(CHART), "-n", NS, "--reuse-values",
        "--set", "tracing.enabled=true",
        "--set", "tracing.otlpEndpoint=http://jaeger-otlp.hookline:4317", "--wait",
    )  # fmt: skip
    key = user.secret("first-key", "key")
    history = History()
    with user.port_forward(f"svc/{RECEIVER}", 80) as port:
        asyncio.run(send_many(f"http://127.0.0.1:{port}", key, 1, history, concurrency=1))
    assert len(history.accepted) == 1
    receivers, dispatchers = user.pod_names("receiver"), user.pod_names("dispatcher")

    def whole_trace() -> dict[str, Any] | None:
        for trace in jaeger_traces(ui):
            services = {p["serviceName"] for p in trace["processes"].values()}
            if {"hookline-receiver", "hookline-dispatcher"} <= services:
                return trace
        return None

    with user.port_forward("svc/jaeger-ui", 16686) as ui:
        trace = wait_for(whole_trace, 60, "a trace with the receiver's and dispatcher's spans")
    hosts = {
        tag["value"]
        for process in trace["processes"].values()
        for tag in process.get("tags", [])
        if tag["key"] == "k8s.pod.name"
    }
    assert hosts & receivers and hosts & dispatchers, (hosts, receivers, dispatchers)
    assert len({s["traceID"] for s in trace["spans"]}) == 1


def test_a_backlog_makes_the_scaler_start_dispatcher_pods_that_drain_it(
    user: User, sink: Sink
) -> None:
    """Scale to zero, then a burst: the pool has no dispatcher at rest (``minReplicas:
    0``), a few thousand webhooks arrive, the operator raises the Deployment's replicas
    from the stream's lag, the new pods become Ready and drain it, and the replicas come
    back down after the scale-down window. (A paused endpoint refuses ingest with 409, so
    a backlog is made this way instead of by pausing.)"""
    pools = [{**POOL, "minReplicas": 0, "maxReplicas": 4}]
    user.helm(
        "upgrade", "hookline", str(CHART), "-n", NS, "--reuse-values",
        "--set-json", f"pools={json.dumps(pools)}",
        "--set-json", f'dispatcher.allowCidrs=["{SERVICE_CIDR}","{POD_CIDR}"]',
        "--set", "operator.config.HOOKLINE_SCALE_INTERVAL=2",
        "--set", "tracing.enabled=false", "--wait",
    )  # fmt: skip
    wait_for(lambda: user.replicas(DISPATCHER) == (0, 0), 120, "the pool to scale to zero")
    sink.secrets["/bulk"] = ""
    user.kubectl("apply", "-f", "-", input=endpoint("bulk", sink.url("/bulk")))
    key = ready_endpoint(user, "bulk")
    sink.secrets["/bulk"] = user.secret("bulk-signing", "secret")

    seen: list[tuple[float, int, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append((time.monotonic(), *user.replicas(DISPATCHER)))
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    history = History()
    started = time.monotonic()
    receiver = f"http://{user.service_ip(RECEIVER)}"
    asyncio.run(send_many(receiver, key, 3000, history, concurrency=32))
    assert len(history.accepted) == 3000, history.refused
    wait_for(lambda: sink.delivered(history.accepted) == 3000, 300, "the backlog to be delivered")
    FIGURES["backlog"] = 3000
    FIGURES["backlog_drain_s"] = round(time.monotonic() - started, 1)
    wait_for(lambda: seen[-1][1] == 0, 120, "the replicas to come back to 0 after the window")
    done.set()
    watcher.join()
    FIGURES["replicas_reached"] = max(r for _, r, _ in seen)
    FIGURES["ready_replicas_reached"] = max(r for _, _, r in seen)
    assert FIGURES["replicas_reached"] >= 2, seen
    assert FIGURES["ready_replicas_reached"] >= 2, seen
    assert not sink.bad, f"{len(sink.bad)} deliveries with a bad signature"


def send_during(
    user: User, sink: Sink, count: int, disruption: Coroutine[Any, Any, None], what: str
) -> tuple[History, Counter[int]]:
    """Post ``count`` webhooks through the receiver Service while ``disruption`` runs; wait
    until every accepted one is delivered, then check the history: nothing lost."""
    key = user.secret("bulk-key", "key")
    history, statuses = History(), Counter[int]()
    receiver = f"http://{user.service_ip(RECEIVER)}"

    async def both() -> None:
        await asyncio.gather(
            send_many(receiver, key, count, history, concurrency=8, pace=0.02, statuses=statuses),
            disruption,
        )

    asyncio.run(both())
    wait_for(
        lambda: sink.delivered(history.accepted) == len(history.accepted),
        180,
        "every accepted webhook to be delivered",
    )
    FIGURES[f"{what}_statuses"] = dict(statuses)
    for wid, n in sink.deliveries.items():
        if wid in history.accepted:
            history.deliveries[wid] = n
    report = history.check()
    FIGURES[f"{what}_history"] = str(report)
    assert report.valid, report
    return history, statuses


def test_force_deleted_pods_lose_no_accepted_webhook(user: User, sink: Sink) -> None:
    """``kubectl delete pod --grace-period=0 --force`` of a dispatcher pod while it
    delivers, and of a receiver pod while senders post: every 202 ends delivered."""
    user.helm(
        "upgrade", "hookline", str(CHART), "-n", NS, "--reuse-values",
        "--set-json", f"pools={json.dumps([{**POOL, 'minReplicas': 2, 'maxReplicas': 2}])}",
        # A crashed dispatcher's entries are reclaimed after this idle time.
        "--set", "dispatcher.config.HOOKLINE_CLAIM_IDLE=10", "--wait",
    )  # fmt: skip
    wait_for(lambda: user.replicas(DISPATCHER) == (2, 2), 120, "two ready dispatchers")

    async def kill_a_dispatcher_then_a_receiver() -> None:
        for component in ("dispatcher", "receiver"):
            await asyncio.sleep(4)
            victim = sorted(user.pod_names(component))[0]
            await asyncio.to_thread(
                user.kubectl, "delete", "pod", victim, "-n", NS, "--grace-period=0", "--force"
            )

    history, statuses = send_during(user, sink, 3000, kill_a_dispatcher_then_a_receiver(), "fault")
    assert len(history.accepted) > 1000, statuses
    assert set(statuses) <= {202, 503, 0}, statuses


def test_helm_upgrade_while_senders_post_loses_nothing(user: User, sink: Sink) -> None:
    """A changed dispatcher value rolls the dispatcher pods while webhooks flow."""
    before = user.pod_names("dispatcher")

    async def upgrade() -> None:
        await asyncio.sleep(3)
        await asyncio.to_thread(
            user.helm,
            "upgrade", "hookline", str(CHART), "-n", NS, "--reuse-values",
            "--set", "dispatcher.deliveryTimeout=8", "--wait",
        )  # fmt: skip

    _, statuses = send_during(user, sink, 2000, upgrade(), "upgrade")
    # --wait returns once the new pods are ready; the old ones may still be draining.
    wait_for(lambda: not before & user.pod_names("dispatcher"), 60, "the old dispatcher pods to go")
    assert len(user.pod_names("dispatcher")) == 2
    assert set(statuses) <= {202, 503}, statuses


def test_a_re_applied_endpoint_owns_its_secrets_past_the_garbage_collector(user: User) -> None:
    """``kubectl delete`` and ``apply`` of an endpoint under the same name (a GitOps
    replace), with the garbage collector really running: whichever comes first — the
    collector deleting the old endpoint's generated Secrets (then new ones are generated)
    or the new endpoint adopting them — the live endpoint ends up owning Secrets that
    stay, and the key read from them is accepted."""
    old = user.json("whe", "first")
    key = user.secret("first-key", "key")
    # A Secret owned only by the endpoint being deleted: the collector must take it, which
    # shows that it runs (and would take the generated ones if nobody owned them).
    owner = {
        "apiVersion": "hookline.dev/v1alpha1",
        "kind": "WebhookEndpoint",
        "name": "first",
        "uid": old["metadata"]["uid"],
    }
    user.kubectl(
        "apply", "-f", "-",
        input=json.dumps({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "first-extra", "namespace": NS, "ownerReferences": [owner]},
            "stringData": {"note": "owned by the old endpoint only"},
        }),
    )  # fmt: skip
    user.kubectl("delete", "whe", "first", "-n", NS, "--wait=true", "--timeout=60s")
    user.kubectl(
        "apply", "-f", "-", input=endpoint("first", "http://sink.hookline.svc.cluster.local/hooks")
    )
    ready_endpoint(user, "first")
    uid = user.json("whe", "first")["metadata"]["uid"]
    assert uid != old["metadata"]["uid"]
    wait_for(
        lambda: user.kubectl("get", "secret", "first-extra", "-n", NS, check=False) == "",
        60,
        "the garbage collector to delete the Secret owned by the deleted endpoint",
    )

    def owned_by_the_live_endpoint() -> bool:
        for name in ("first-key", "first-signing"):
            got = user.kubectl("get", "secret", name, "-n", NS, "-o", "json", check=False)
            owners = json.loads(got)["metadata"].get("ownerReferences", []) if got else []
            if [o["uid"] for o in owners] != [uid]:
                return False
        return True

    wait_for(owned_by_the_live_endpoint, 60, "both generated Secrets owned by the live endpoint")
    time.sleep(5)  # the collector had its chance at them: they must still be there
    assert owned_by_the_live_endpoint()
    now = user.secret("first-key", "key")
    FIGURES["reapplied_key"] = "adopted" if now == key else "generated anew"

    def accepted() -> bool:
        history = History()
        with user.port_forward(f"svc/{RECEIVER}", 80) as port:
            asyncio.run(send_many(f"http://127.0.0.1:{port}", now, 1, history, concurrency=1))
        return len(history.accepted) == 1

    wait_for(accepted, 30, "the live endpoint's key to be accepted", every=2)


def test_the_operator_is_unready_while_the_api_server_is_down(user: User, node: Node) -> None:
    """A 60 s API-server outage (a crash, longer than kopf's default give-up of 54 s):
    the operator pod's ``/readyz`` says 503 during it and 200 after, and an endpoint
    applied after it is reconciled."""
    pod = user.pods("app.kubernetes.io/component=operator")[0]
    readyz = f"http://{pod['status']['podIP']}:8082/readyz"

    def status() -> int:
        try:
            with urllib.request.urlopen(readyz, timeout=3) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    assert status() == 200
    node.stop_apiserver()
    try:
        down = time.monotonic()
        wait_for(lambda: status() == 503, 30, "the operator's /readyz to say 503", every=0.5)
        FIGURES["operator_unready_after_s"] = round(time.monotonic() - down, 1)
        time.sleep(max(0.0, 60 - (time.monotonic() - down)))
        assert status() == 503
    finally:
        node.start_apiserver()
    up = time.monotonic()
    wait_for(lambda: status() == 200, 120, "the operator's /readyz to say 200 again", every=0.5)
    FIGURES["operator_ready_again_after_s"] = round(time.monotonic() - up, 1)
    user.kubectl(
        "apply", "-f", "-", input=endpoint("after-outage", "http://sink.hookline.svc/after")
    )
    ready_endpoint(user, "after-outage")
    user.kubectl("delete", "whe", "after-outage", "-n", NS, "--wait=true", "--timeout=60s")


def test_the_operator_pod_logs_no_routine_success(user: User) -> None:
    """Minutes of timer ticks over the journey's endpoints: the operator pod's log holds
    the changes it made, not a line per endpoint per tick (kopf's ``Timer 'refresh'
    succeeded`` once made 600 lines a minute at 300 endpoints)."""
    log = user.logs("deployment/hookline-operator").splitlines()
    # kopf.objects is kopf's logger of what it does per resource (handlers, timers).
    routine = [ln for ln in log if "kopf.objects" in ln and "succeeded" in ln]
    assert not routine, routine[:3]
    assert any("registered (generation" in ln for ln in log)  # the changes are there


def test_helm_uninstall_leaves_the_crd_the_endpoints_and_their_secrets(user: User) -> None:
    def left() -> str:
        """The pods still there: whether they are terminating (the kubelet's part) or
        not yet deleted (the garbage collector's), and why."""
        return "left: " + "; ".join(
            f"{p['metadata']['name']} phase={p['status'].get('phase')} "
            f"deleting_since={p['metadata'].get('deletionTimestamp')} "
            f"owners={[o['kind'] for o in p['metadata'].get('ownerReferences', [])]} "
            f"containers={[s.get('state') for s in p['status'].get('containerStatuses', [])]}"
            for p in user.pods(INSTANCE)
        )

    user.helm("uninstall", "hookline", "-n", NS, "--wait")
    wait_for(lambda: not user.pods(INSTANCE), 90, "every hookline pod to be gone", state=left)
    user.kubectl("get", "crd", "webhookendpoints.hookline.dev")
    names = {e["metadata"]["name"] for e in user.json("whe")["items"]}
    assert names == {"first", "bulk"}
    for name in ("first-key", "first-signing", "bulk-key", "bulk-signing"):
        user.kubectl("get", "secret", name, "-n", NS)
