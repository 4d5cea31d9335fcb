"""A real Kubernetes control plane for the tests: etcd and kube-apiserver on loopback.

Started as controller-runtime's envtest does (see tools/README.md for the flags and why):
no controller-manager and no scheduler, so CRDs, validation (CEL included), status
subresources, finalizers, watches, RBAC and Events work, while namespaces never finish
terminating and owner references collect nothing. Tests drive it with the real
``kubectl`` (:meth:`ControlPlane.kubectl`) and run the operator as a real
``hookline operator`` process (:class:`OperatorProcess`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers import free_port, require_binary, tool_binary


def _wait_http(
    url: str,
    seconds: float,
    what: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> None:
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{tail(log)}", pytrace=False)
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    pytest.fail(
        f"{what} not ready at {url} after {seconds} s ({last}):\n{tail(log)}", pytrace=False
    )


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _stop(proc: subprocess.Popen[bytes] | None, seconds: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(seconds)


class ControlPlane:
    """etcd + kube-apiserver in ``folder``; ``kubeconfig`` names a cluster-admin token."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.etcd_bin = tool_binary("etcd")
        self.apiserver_bin = tool_binary("kube-apiserver")
        self.kubectl_bin = tool_binary("kubectl")
        self.openssl = require_binary("openssl", "apt-get install openssl")
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.kubeconfig = folder / "kubeconfig"
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        self.timings: dict[str, float] = {}

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._start_etcd()
        self.timings["etcd"] = time.monotonic() - started
        self._start_apiserver()
        self.timings["kube-apiserver"] = time.monotonic() - started - self.timings["etcd"]
        self._write_kubeconfig()

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        log = self.folder / "etcd.log"
        with log.open("wb") as out:
            self.etcd = subprocess.Popen(
                [
                    self.etcd_bin,
                    "--name=test",
                    f"--data-dir={self.folder / 'etcd'}",
                    f"--listen-client-urls={self.etcd_url}",
                    f"--advertise-client-urls={self.etcd_url}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-cluster=test=http://127.0.0.1:{peer}",
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_http(f"{self.etcd_url}/health", 30, "etcd", self.etcd, log)

    def _start_apiserver(self) -> None:
        certs = self.folder / "certs"
        certs.mkdir(exist_ok=True)
        key = self.folder / "sa.key"
        if not key.exists():  # kept across restarts, with the serving certificate in certs/
            subprocess.run(
                [self.openssl, "genrsa", "-out", str(key), "2048"],
                check=True,
                capture_output=True,
            )
        tokens = self.folder / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        log = self.folder / "kube-apiserver.log"
        with log.open("ab") as out:
            self.apiserver = subprocess.Popen(
                [
                    self.apiserver_bin,
                    f"--etcd-servers={self.etcd_url}",
                    f"--cert-dir={certs}",
                    f"--secure-port={self.port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--authorization-mode=RBAC",
                    "--disable-admission-plugins=ServiceAccount",
                    f"--service-account-issuer={self.url}",
                    f"--service-account-key-file={key}",
                    f"--service-account-signing-key-file={key}",
                    f"--token-auth-file={tokens}",
                    "--allow-privileged=true",
                    # Less work on a small machine; none of it matters to these tests.
                    "--endpoint-reconciler-type=none",
                    "--enable-priority-and-fairness=false",
                    "--profiling=false",
                    "--v=1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        # The serving certificate is written at start; trust it once it exists.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        _wait_http(
            f"{self.url}/readyz", 90, "kube-apiserver", self.apiserver, log, insecure, self.token
        )
        self.ca = certs / "apiserver.crt"

    def install_crd(self, crd: Path) -> None:
        """``kubectl apply`` the CRDs of a file or folder (``crds/``: WebhookEndpoint and
        WebhookSource) and wait until each is Established."""
        self.kubectl("apply", "-f", str(crd))
        self.kubectl("wait", "--for=condition=Established", "--timeout=30s", "-f", str(crd))

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(self.kubeconfig_for(self.token))

    def kubeconfig_for(self, token: str) -> str:
        """A kubeconfig for this cluster that authenticates with ``token``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca)},
                }
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
            "current-context": "test",
        }
        return yaml.safe_dump(config)

    def stop(self) -> None:
        _stop(self.apiserver)
        _stop(self.etcd)
        self.apiserver = self.etcd = None

    def stop_apiserver(self) -> None:
        """An API-server outage: kube-apiserver stops, etcd keeps the cluster's state."""
        _stop(self.apiserver)
        self.apiserver = None

    def start_apiserver(self) -> None:
        """kube-apiserver again after :meth:`stop_apiserver`: the same port, certificates,
        keys and tokens, so clients configured before reconnect as they are."""
        started = time.monotonic()
        self._start_apiserver()
        self.timings["kube-apiserver restart"] = time.monotonic() - started

    # -- kubectl

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster; fails the test with its output."""
        done = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} exited with {done.returncode}:\n"
                f"{done.stdout}{done.stderr}",
                pytrace=False,
            )
        return done

    async def akubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """:meth:`kubectl` without blocking the event loop (the stack runs in it)."""
        return await asyncio.to_thread(self.kubectl, *args, input=input, check=check)

    async def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        done = await self.akubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr:
                return None
            pytest.fail(f"kubectl get {kind} {name}: {done.stderr}", pytrace=False)
        result: dict[str, Any] = json.loads(done.stdout)
        return result


class OperatorProcess:
    """``hookline operator`` as a real process, configured by environment like in a pod."""

    def __init__(
        self,
        cluster: ControlPlane,
        env: dict[str, str],
        log: Path,
        kubeconfig: Path | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.cluster = cluster
        self.log_level = log_level  # INFO as in a pod; DEBUG shows kopf's every handler run
        self.port = free_port()
        self.env = {
            **os.environ,
            **env,
            "KUBECONFIG": str(kubeconfig or cluster.kubeconfig),
            "HOOKLINE_OPERATOR_HOST": "127.0.0.1",
            "HOOKLINE_OPERATOR_PORT": str(self.port),
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, seconds: float = 30) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hookline.cli", "--log-level", self.log_level, "operator"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_http(
            f"http://127.0.0.1:{self.port}/readyz",
            seconds,
            "hookline operator",
            self.proc,
            self.log,
        )

    def stop(self) -> int | None:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code."""
        if self.proc is None:
            return None
        _stop(self.proc, 20)
        code = self.proc.returncode
        self.proc = None
        return code

    def tail(self, lines: int = 60) -> str:
        return tail(self.log, lines)

    def handled(self, phrase: str) -> list[str]:
        """Log lines of the operator containing ``phrase``."""
        return [ln for ln in self.log.read_text(errors="replace").splitlines() if phrase in ln]


def manifest(docs: Sequence[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(docs))
