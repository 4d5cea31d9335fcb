"""Fixtures of the Kubernetes tier: one control plane per session with the CRDs installed,
a namespace and a ``hookline operator`` process per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from hookline.config import Config
from hookline.store import Queue, Registry, Store
from tests.kubernetes.cluster import ControlPlane, OperatorProcess
from tests.peers import REPO

CRD = REPO / "crds"  # WebhookEndpoint and WebhookSource
INTERVAL = 1.0  # the operator's timer in tests: drift repaired and figures within a second


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("kube"))
    try:
        plane.start()
        plane.install_crd(CRD)
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(cluster: ControlPlane) -> str:
    """A namespace of the test's own (never deleted: without a controller-manager a
    namespace never finishes terminating, and the cluster goes with the session)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    return name


def operator_env(config: Config, namespace: str, **extra: str) -> dict[str, str]:
    return {
        "HOOKLINE_REDIS_URL": config.redis_url,
        "HOOKLINE_PREFIX": config.prefix,
        "HOOKLINE_OPERATOR_NAMESPACES": namespace,
        "HOOKLINE_OPERATOR_INTERVAL": str(INTERVAL),
        **extra,
    }


@pytest.fixture
def operator(
    cluster: ControlPlane, config: Config, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """``hookline operator`` watching the test's namespace, with the test's Redis prefix."""
    op = OperatorProcess(cluster, operator_env(config, namespace), tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture
async def store(config: Config) -> AsyncIterator[Store]:
    client = aioredis.from_url(config.redis_url)
    yield (store := Store(client, config))
    await store.aclose()
    await client.aclose()


@pytest.fixture
def registry(store: Store) -> Registry:
    return store.registry


@pytest.fixture
def queue(store: Store) -> Queue:
    return store.queue
