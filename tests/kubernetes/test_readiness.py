"""The operator through API-server outages: ``/readyz`` says whether it can reconcile now,
its watches outlive the outage, and a watch kopf gives up on ends the process.

On a control plane of this module's own: stopping the session's kube-apiserver would fail
every test running beside it. Each test leaves the API server running.

A managed cluster's API server sits behind a load balancer, which answers while the
server is down: :class:`LoadBalancer` stands in for it on the API server's own address
and certificate (a real TLS server on the wire; the operator process and kopf are the
real ones). Its outage lasts longer than kopf's default retries of a failed request
(1+1+2+3+5+8+13+21 = 54 s), as the one seen on a real cluster did (75 s): there kopf's
watch gave up on the 503s, and the operator lived on without it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
from aiohttp import web

from hookline.config import Config
from hookline.operator.main import API_CHECK_INTERVAL, API_STALE_AFTER
from hookline.store import Registry
from tests.kubernetes.cluster import ControlPlane, OperatorProcess
from tests.kubernetes.conftest import CRD, operator_env
from tests.kubernetes.helpers import apply, endpoint_doc, probe, registered, until_probe

URL = "https://hooks.example.com/in"
NAMESPACE = "outage"
# From the API server's stop to /readyz 503: its last answer is at most one check old.
NOT_READY_WITHIN = API_STALE_AFTER + 2 * API_CHECK_INTERVAL + 2
# From its return to an applied endpoint registered: kopf's retries are 5 s apart at most.
RECONCILED_WITHIN = 15.0


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("outage-kube"))
    try:
        plane.start()
        plane.install_crd(CRD)
        plane.kubectl("create", "namespace", NAMESPACE)
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def operator(plane: ControlPlane, config: Config, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(plane, operator_env(config, NAMESPACE), tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()


class LoadBalancer:
    """While the API server is down, its address answers every request with 503 "no
    healthy upstream", as a load balancer in front of it does; with ``watch_error`` a watch
    of WebhookEndpoints gets an ERROR event instead (what an API server sends when the
    storage of one resource fails). Leaving the block starts the API server again on its
    address."""

    def __init__(self, plane: ControlPlane, watch_error: bool = False) -> None:
        self.plane = plane
        self.watch_error = watch_error
        self.requests = 0
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        watch = request.query.get("watch") == "true"
        if self.watch_error and watch and request.path.endswith("/webhookendpoints"):
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            event = {"type": "ERROR", "object": _status(500, "InternalError", "etcd timed out")}
            await resp.write(json.dumps(event).encode() + b"\n")
            await resp.write_eof()
            return resp
        return web.Response(status=503, text="no healthy upstream")

    async def __aenter__(self) -> LoadBalancer:
        await asyncio.to_thread(self.plane.stop_apiserver)
        certs = self.plane.folder / "certs"
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs / "apiserver.crt", certs / "apiserver.key")
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, "127.0.0.1", self.plane.port, ssl_context=context, reuse_address=True
        )
        await site.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await asyncio.to_thread(self.plane.start_apiserver)


def _status(code: int, reason: str, message: str) -> dict[str, object]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


async def test_readiness_follows_the_api_server_through_an_outage(
    plane: ControlPlane, operator: OperatorProcess, registry: Registry
) -> None:
    await apply(plane, endpoint_doc("before", NAMESPACE, URL))
    await registered(registry, f"{NAMESPACE}/before", operator)
    assert probe(operator, "/readyz")[0] == 200

    plane.stop_apiserver()
    stopped = time.monotonic()
    try:
        answer = await until_probe(
            operator, "/readyz", 503, NOT_READY_WITHIN, "the API server is down"
        )
        assert time.monotonic() - stopped < NOT_READY_WITHIN
        assert answer["status"] == "unavailable"
        assert "Kubernetes API server has served no request" in answer["reason"], answer
        assert probe(operator, "/healthz")[0] == 200  # a restart would not bring it back
    finally:
        plane.start_apiserver()

    await until_probe(operator, "/readyz", 200, 2 * API_CHECK_INTERVAL + 5, "the API is back")
    # And it reconciles again: an endpoint applied now is registered.
    await apply(plane, endpoint_doc("after", NAMESPACE, URL))
    await registered(registry, f"{NAMESPACE}/after", operator, seconds=RECONCILED_WITHIN)


@pytest.mark.timeout(240)  # a 60 s outage and the way back, on a busy machine
async def test_watches_outlive_an_outage_behind_a_load_balancer(
    plane: ControlPlane, operator: OperatorProcess, registry: Registry
) -> None:
    async with LoadBalancer(plane) as lb:
        started = time.monotonic()
        await until_probe(operator, "/readyz", 503, NOT_READY_WITHIN, "the API server is down")
        # Longer than kopf's default retries, polling all along: never ready meanwhile.
        while time.monotonic() - started < 60:
            code, body = await asyncio.to_thread(probe, operator, "/readyz")
            assert code == 503, body
            await asyncio.sleep(1)
        assert lb.requests > 0
        assert "HTTP 503" in json.loads(body)["reason"], body  # the load balancer's answer
    await until_probe(operator, "/readyz", 200, 2 * API_CHECK_INTERVAL + 5, "the API is back")
    await apply(plane, endpoint_doc("behind-lb", NAMESPACE, URL))
    await registered(registry, f"{NAMESPACE}/behind-lb", operator, seconds=RECONCILED_WITHIN)


async def test_a_watch_kopf_gives_up_stops_the_operator_for_a_restart(
    plane: ControlPlane, operator: OperatorProcess, registry: Registry
) -> None:
    """kopf never starts a failed watch again, and carries on without it when the watches
    of namespaces and CRDs it needs itself are fine: an operator that looks alive and
    reconciles nothing. It exits instead (code 1), and Kubernetes restarts it."""
    assert operator.proc is not None
    # Its watch of WebhookEndpoints runs (an endpoint applied now is registered) before
    # the outage begins: an operator still making its first list when the API server went
    # away would retry that list for kopf's 54 s instead (a clean-clone run at load 3).
    await apply(plane, endpoint_doc("watched", NAMESPACE, URL))
    await registered(registry, f"{NAMESPACE}/watched", operator)
    async with LoadBalancer(plane, watch_error=True):
        code = await asyncio.to_thread(_exit_code, operator, 30)
    assert code == 1, operator.tail()
    said = operator.handled("kopf gave up watching")
    assert len(said) == 1 and " ERROR " in said[0], operator.tail()
    assert "Error in the watch-stream" in said[0]


def _exit_code(op: OperatorProcess, seconds: float) -> int | None:
    assert op.proc is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (code := op.proc.poll()) is not None:
            return code
        time.sleep(0.2)
    pytest.fail(f"the operator still runs after {seconds} s:\n{op.tail()}", pytrace=False)
