"""``hookline operator``: builds the operator's dependencies and runs kopf until SIGTERM.

Called by :func:`hookline.cli.main` through :func:`hookline.operator.run`. The cluster
is found the standard way (in-cluster service account, else ``KUBECONFIG``); probes and
metrics are served on ``HOOKLINE_OPERATOR_PORT`` (``/healthz``, ``/readyz``, ``/metrics``).
Beside kopf run the :class:`~hookline.operator.scaler.Scaler` of the dispatcher
Deployments and the :class:`ApiCheck` of the readiness probe, until kopf stops.

``/readyz`` means "can reconcile now": kopf has started and none of its watches has
failed, Redis answers a PING, and the API server answered the operator's own list of
WebhookEndpoints within the last :data:`API_STALE_AFTER` seconds (one every
:data:`API_CHECK_INTERVAL`). kopf's started flag alone would say ready through an
API-server outage of any length. A watch kopf gave up on is never started again, so the
operator then stops with exit code 1 (:class:`WatchFailure`): a restart is the way back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import kopf
from lightkube import AsyncClient, ConfigError, KubeConfig

from hookline.config import Config
from hookline.errors import ApiUnavailable, StoreUnavailable
from hookline.http import serve_probes
from hookline.metrics import Metrics
from hookline.operator.handlers import RoutineAtDebug, build, settings
from hookline.operator.kube import Kube
from hookline.operator.reconcile import Conditions, Reconciler
from hookline.operator.scaler import Scaler, ScalerMetrics
from hookline.store import Store

log = logging.getLogger(__name__)

API_CHECK_INTERVAL = 2.0  # seconds between two requests of the readiness check, and its timeout
API_STALE_AFTER = 6.0  # not ready when the API server's last answer is older than this


class WatchFailure(logging.Filter):
    """Notices kopf giving up a watch or another of its never-ending tasks: kopf logs
    "Watcher for ... has failed: ..." (or "Multidimensional multitasker has failed: ...")
    and carries on without it, reconciling nothing of that resource again. Installed on
    kopf's orchestration and reactor loggers; sets ``halt``, which stops kopf, so the
    process exits and its pod is restarted."""

    LOGGERS = ("kopf._core.reactor.orchestration", "kopf._core.reactor.running")

    def __init__(self, halt: asyncio.Event) -> None:
        super().__init__()
        self.halt = halt
        self.failure: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.ERROR and " has failed: " in message:
            self.failure = self.failure or message
            self.halt.set()
        return True


class ApiCheck:
    """Whether the API server answers the operator now: one small request every
    :data:`API_CHECK_INTERVAL` seconds, judged by the age of the last answer (so a probe
    never waits on the API server, and one slow request does not flip readiness)."""

    def __init__(
        self, kube: Kube, namespace: str | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.clock = clock
        self.answered: float | None = None  # clock() of the last answer
        self.error = "not asked yet"
        self.down = False  # said so in the log

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(API_CHECK_INTERVAL):
                    await self.kube.answers(self.namespace)
            except ApiUnavailable as exc:
                self.error = str(exc)
            except TimeoutError:
                self.error = f"no answer within {API_CHECK_INTERVAL:g} s"
            else:
                self.answered = self.clock()
            problem = self.problem()
            if problem and not self.down:
                log.warning("not ready: %s", problem)
            elif self.down and not problem:
                log.info("ready again: the Kubernetes API server answers")
            self.down = problem is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), API_CHECK_INTERVAL)

    def problem(self) -> str | None:
        """Why the operator cannot reconcile now as far as the API server goes, or None."""
        if self.answered is None:
            return f"the Kubernetes API server has served no request yet ({self.error})"
        age = self.clock() - self.answered
        if age > API_STALE_AFTER:
            return f"the Kubernetes API server has served no request for {age:.0f} s ({self.error})"
        return None


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
    store = Store.connect(config)
    client = AsyncClient(kubeconfig, field_manager="hookline-operator")
    kube = Kube(client)
    reconciler = Reconciler(config, kube, store.registry, store.figures)
    metrics = Metrics()
    metrics.registry.register(Conditions(reconciler))
    namespaces = [n.strip() for n in config.operator_namespaces.split(",") if n.strip()]
    scaler = Scaler(config, kube, store, ScalerMetrics(metrics.registry), namespaces)
    api = ApiCheck(kube, namespaces[0] if namespaces else None)
    ready = asyncio.Event()
    halt = asyncio.Event()  # stops kopf: the caller's stop_flag, or a watch kopf gave up
    failure = WatchFailure(halt)

    async def readiness() -> str | None:
        if not ready.is_set():
            return "watching the cluster has not started"
        if failure.failure:
            return f"kopf stopped watching: {failure.failure}"
        if problem := api.problem():
            return problem
        try:
            await store.ping()
        except StoreUnavailable as exc:
            return str(exc)
        return None

    tasks = [
        asyncio.create_task(scaler.run(stop), name="scaler"),
        asyncio.create_task(api.run(stop), name="api-check"),
    ]
    if stop_flag is not None:
        tasks.append(asyncio.create_task(_relay(stop_flag, halt, stop), name="stop-flag"))
    if config.operator_port:
        tasks.append(
            asyncio.create_task(
                serve_probes(metrics, readiness, config.operator_host, config.operator_port, stop)
            )
        )
    routine = RoutineAtDebug()
    logging.getLogger("kopf.objects").addFilter(routine)
    for name in WatchFailure.LOGGERS:
        logging.getLogger(name).addFilter(failure)
    try:
        await kopf.operator(
            registry=build(config, reconciler, kube),
            settings=settings(config),
            standalone=not config.operator_peering,
            peering_name=config.operator_peering or None,
            clusterwide=not namespaces,
            namespaces=namespaces,
            stop_flag=halt,
            ready_flag=ready,
        )
    except Exception:
        log.exception("the operator stopped on an error")
        return 1
    finally:
        logging.getLogger("kopf.objects").removeFilter(routine)
        for name in WatchFailure.LOGGERS:
            logging.getLogger(name).removeFilter(failure)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        await store.aclose()
    if failure.failure:
        log.error("stopped: kopf gave up watching (%s); a restart starts it again", failure.failure)
        return 1
    return 0


async def _relay(source: asyncio.Event, target: asyncio.Event, done: asyncio.Event) -> None:
    """Set ``target`` when ``source`` is set, until ``done`` is."""
    waits = [asyncio.ensure_future(source.wait()), asyncio.ensure_future(done.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    if source.is_set():
        target.set()
