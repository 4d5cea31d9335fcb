"""The operator's deployment files against the real API server: the Deployment is valid,
and the operator does its whole job with nothing but the permissions of ``rbac.yaml``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from hookline.config import Config
from hookline.store import Registry
from tests.kubernetes.cluster import ControlPlane, OperatorProcess, manifest
from tests.kubernetes.conftest import operator_env
from tests.kubernetes.helpers import (
    apply,
    condition,
    endpoint_doc,
    refusals,
    registered,
    until_status,
)
from tests.peers import REPO, eventually

OPERATOR = REPO / "operator"


def test_deployment_is_valid_with_one_recreated_replica(cluster: ControlPlane) -> None:
    _ensure_namespace(cluster, "hookline")
    done = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-o",
        "jsonpath={.spec.replicas} {.spec.strategy.type}",
        "-f",
        str(OPERATOR / "deployment.yaml"),
    )
    assert done.stdout == "1 Recreate"


async def test_operator_works_with_only_its_rbac_permissions(
    cluster: ControlPlane, namespace: str, config: Config, registry: Registry, tmp_path: Path
) -> None:
    _ensure_namespace(cluster, "hookline")
    cluster.kubectl("apply", "-f", str(OPERATOR / "rbac.yaml"))
    token = cluster.kubectl("create", "token", "hookline-operator", "-n", "hookline").stdout
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig_for(token.strip()))
    op = OperatorProcess(
        cluster, operator_env(config, namespace), tmp_path / "operator.log", kubeconfig
    )
    try:
        op.start()
        await apply(cluster, endpoint_doc("scoped", namespace, "https://example.com/hook"))
        await cluster.akubectl(
            "wait", "--for=condition=Ready", "--timeout=10s", "-n", namespace, "whe/scoped"
        )
        ep = await registered(registry, f"{namespace}/scoped", op)
        # An Event (a dispatcher disabled the endpoint) and a status patch.
        await registry.disable(ep.id, "endpoint answered 410 Gone")
        await until_status(
            cluster,
            "scoped",
            namespace,
            lambda s: condition(s, "Delivering").get("reason") == "Disabled",
            5,
            "Delivering=False Disabled",
            op,
        )
        events = await cluster.akubectl(
            "get", "events", "-n", namespace, "--field-selector", "reason=Disabled", "-o", "name"
        )
        assert events.stdout.strip(), "no Disabled event"
        # The finalizer comes off.
        await cluster.akubectl("delete", "whe", "scoped", "-n", namespace, "--timeout=10s")
        assert await registry.get(ep.id) is None
    finally:
        op.stop()
    denied = refusals(op)
    assert denied == [], "\n".join(denied)


def _ensure_namespace(cluster: ControlPlane, name: str) -> None:
    if cluster.kubectl("get", "namespace", name, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", name)


async def test_peered_replicas_take_turns_and_hand_over(
    cluster: ControlPlane, namespace: str, config: Config, registry: Registry, tmp_path: Path
) -> None:
    # The CRDs and the cluster-wide object are the documented files; a namespaced operator needs a
    # KopfPeering of the same name in its namespace.
    cluster.kubectl("apply", "-f", str(OPERATOR / "peering-crds.yaml"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    cluster.kubectl("apply", "-f", str(OPERATOR / "peering.yaml"))
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=manifest(
            [
                {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "KopfPeering",
                    "metadata": {"name": "hookline", "namespace": namespace},
                }
            ]
        ),
    )
    replicas = {
        name: OperatorProcess(
            cluster,
            operator_env(
                config,
                namespace,
                HOOKLINE_OPERATOR_PEERING="hookline",
                HOOKLINE_OPERATOR_PRIORITY=str(priority),
            ),
            tmp_path / f"{name}.log",
        )
        for name, priority in (("low", 10), ("high", 20))
    }
    try:
        for op in replicas.values():
            op.start()
        await eventually(
            _logged(replicas["low"], "Pausing operations in favour of"),
            10,
            "the lower-priority replica to stand by",
        )
        await apply(cluster, endpoint_doc("first", namespace, "https://example.com/1"))
        await registered(registry, f"{namespace}/first", replicas["high"])
        await eventually(
            _logged(replicas["high"], f"{namespace}/first: "), 5, "the worker's log line"
        )
        assert not replicas["low"].handled(f"{namespace}/first: ")

        assert replicas["high"].stop() == 0
        await eventually(
            _logged(replicas["low"], "Resuming operations"), 15, "the standby to take over"
        )
        await apply(cluster, endpoint_doc("second", namespace, "https://example.com/2"))
        await registered(registry, f"{namespace}/second", replicas["low"])
    finally:
        for op in replicas.values():
            op.stop()


def _logged(op: OperatorProcess, phrase: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(op.handled(phrase))

    return check
