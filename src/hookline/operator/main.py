"""``hookline operator``: builds the operator's dependencies and runs kopf until SIGTERM.

Called by :func:`hookline.cli.main` through :func:`hookline.operator.run`. The cluster
is found the standard way (in-cluster service account, else ``KUBECONFIG``); probes and
metrics are served on ``HOOKLINE_OPERATOR_PORT`` (``/healthz``, ``/readyz``, ``/metrics``).
Beside kopf runs the :class:`~hookline.operator.scaler.Scaler` of the dispatcher
Deployments, until kopf stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import kopf
from lightkube import AsyncClient, ConfigError, KubeConfig

from hookline.cli import redis_client
from hookline.config import Config
from hookline.http import serve_probes
from hookline.metrics import Metrics
from hookline.operator.handlers import build, settings
from hookline.operator.kube import Kube
from hookline.operator.reconcile import Reconciler
from hookline.operator.scaler import Scaler, ScalerMetrics
from hookline.queue import Queue
from hookline.registry import Registry

log = logging.getLogger(__name__)


def run(config: Config) -> int:
    """Run the operator until SIGTERM or SIGINT; returns the process exit code."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(operate(config))


async def operate(config: Config, stop_flag: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (kopf installs the handlers) or until ``stop_flag`` is set."""
    stop = asyncio.Event()  # stops the probe server once kopf has finished
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request otherwise
    try:
        kubeconfig = KubeConfig.from_env()
    except ConfigError as exc:
        log.error("no Kubernetes cluster configured (in-cluster or KUBECONFIG): %s", exc)
        return 2
    redis = redis_client(config)
    client = AsyncClient(kubeconfig, field_manager="hookline-operator")
    kube = Kube(client)
    queue = Queue(redis, config.prefix)
    reconciler = Reconciler(config, kube, Registry(redis, config.prefix), queue)
    metrics = Metrics()
    namespaces = [n.strip() for n in config.operator_namespaces.split(",") if n.strip()]
    scaler = Scaler(config, kube, queue, ScalerMetrics(metrics.registry), namespaces)
    ready = asyncio.Event()

    async def readiness() -> str | None:
        if not ready.is_set():
            return "watching the cluster has not started"
        try:
            await redis.ping()  # type: ignore[misc]
        except Exception as exc:  # any failure to answer means not ready
            return f"redis: {exc}"
        return None

    tasks = [asyncio.create_task(scaler.run(stop), name="scaler")]
    if config.operator_port:
        tasks.append(
            asyncio.create_task(
                serve_probes(metrics, readiness, config.operator_host, config.operator_port, stop)
            )
        )
    try:
        await kopf.operator(
            registry=build(config, reconciler, kube),
            settings=settings(config),
            standalone=not config.operator_peering,
            peering_name=config.operator_peering or None,
            clusterwide=not namespaces,
            namespaces=namespaces,
            stop_flag=stop_flag,
            ready_flag=ready,
        )
    except Exception:
        log.exception("the operator stopped on an error")
        return 1
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        await queue.aclose()
        await redis.aclose()
    return 0
