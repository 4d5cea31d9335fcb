"""The WebhookEndpoint CRD as the real API server enforces it: schema, defaults, CEL rule,
names, printer columns. No operator runs here."""

from __future__ import annotations

import json

import pytest

from tests.kubernetes.cluster import ControlPlane, manifest
from tests.kubernetes.helpers import endpoint_doc
from tests.peers import REPO

CEL_MESSAGE = "url must be an absolute http or https URL with a host"


def test_demo_example_is_valid_against_the_crd(cluster: ControlPlane) -> None:
    done = cluster.kubectl(
        "apply", "--dry-run=server", "-f", str(REPO / "examples" / "endpoints" / "demo.yaml")
    )
    assert "webhookendpoint.hookline.dev/demo created (server dry run)" in done.stdout


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "/relative/path", "http://", "example.com/hook"]
)
def test_invalid_url_is_rejected_with_the_cel_message(
    cluster: ControlPlane, namespace: str, url: str
) -> None:
    done = cluster.kubectl(
        "apply", "-f", "-", input=manifest([endpoint_doc("bad", namespace, url)]), check=False
    )
    assert done.returncode != 0
    assert CEL_MESSAGE in done.stderr
    gone = cluster.kubectl("get", "whe", "bad", "-n", namespace, check=False)
    assert "NotFound" in gone.stderr


def test_schema_bounds_are_enforced(cluster: ControlPlane, namespace: str) -> None:
    doc = endpoint_doc(
        "bounds",
        namespace,
        "https://example.com/hook",
        timeoutSeconds=0,
        retry={"attempts": 0},
        pool="Not A Pool",
        forwardHeaders=["bad header"],
    )
    done = cluster.kubectl("apply", "-f", "-", input=manifest([doc]), check=False)
    assert done.returncode != 0
    for field in ("spec.timeoutSeconds", "spec.retry.attempts", "spec.pool", "spec.forwardHeaders"):
        assert field in done.stderr, done.stderr


def test_defaults_match_the_endpoint_model(cluster: ControlPlane, namespace: str) -> None:
    doc = endpoint_doc(
        "defaults",
        namespace,
        "https://example.com/hook",
        keySecretRef={"name": "k"},
        signingSecretRef={"name": "s"},
    )
    cluster.kubectl("apply", "-f", "-", input=manifest([doc]))
    spec = json.loads(
        cluster.kubectl("get", "whe", "defaults", "-n", namespace, "-o", "json").stdout
    )["spec"]
    assert spec["keySecretRef"] == {"name": "k", "key": "key"}
    assert spec["signingSecretRef"] == {"name": "s", "key": "secret"}
    assert spec["pool"] == "default"
    assert spec["paused"] is False


def test_names_and_printer_columns(cluster: ControlPlane, namespace: str) -> None:
    resources = cluster.kubectl("api-resources", "--api-group=hookline.dev", "-o", "wide").stdout
    assert "whe" in resources and "webhooks" in resources and "WebhookEndpoint" in resources
    cluster.kubectl(
        "apply", "-f", "-", input=manifest([endpoint_doc("cols", namespace, "https://x.example/")])
    )
    header = cluster.kubectl("get", "webhooks", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "URL", "READY", "DELIVERED", "FAILED", "PENDING", "AGE"]


def test_control_plane_runs_the_pinned_kubernetes(cluster: ControlPlane) -> None:
    go_mod = (REPO / "tools" / "kube" / "go.mod").read_text()
    pinned = next(ln.split()[1] for ln in go_mod.splitlines() if "k8s.io/kubernetes v" in ln)
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == pinned
    assert versions["clientVersion"]["gitVersion"] == pinned
