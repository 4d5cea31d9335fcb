"""The WebhookEndpoint and WebhookSource CRDs as the real API server enforces them: schema,
defaults, CEL rules, event-type patterns, names, printer columns. No operator runs here."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.kubernetes.cluster import ControlPlane, manifest
from tests.kubernetes.helpers import endpoint_doc, source_doc
from tests.peers import REPO

CEL_MESSAGE = "url must be an absolute http or https URL with a host"
EXAMPLES = REPO / "examples" / "endpoints"


def test_demo_example_is_valid_against_the_crd(cluster: ControlPlane) -> None:
    done = cluster.kubectl("apply", "--dry-run=server", "-f", str(EXAMPLES / "demo.yaml"))
    assert "webhookendpoint.hookline.dev/demo created (server dry run)" in done.stdout


def test_source_example_is_valid_against_the_crds(cluster: ControlPlane) -> None:
    done = cluster.kubectl("apply", "--dry-run=server", "-f", str(EXAMPLES / "shop.yaml"))
    for created in (
        "webhooksource.hookline.dev/shop",
        "webhookendpoint.hookline.dev/billing",
        "webhookendpoint.hookline.dev/audit",
    ):
        assert f"{created} created (server dry run)" in done.stdout, done.stdout


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


def refused(cluster: ControlPlane, doc: dict[str, Any]) -> str:
    """What the API server says refusing ``doc`` (the test fails if it accepts it)."""
    done = cluster.kubectl("apply", "-f", "-", input=manifest([doc]), check=False)
    assert done.returncode != 0, f"accepted: {doc}"
    return done.stderr


EVENT_TYPE_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$"


def test_a_source_catalog_with_an_invalid_event_type_is_refused_with_the_rule(
    cluster: ControlPlane, namespace: str
) -> None:
    for bad in ("invoice paid", "invoice.*", ".invoice", "x" * 129):
        stderr = refused(cluster, source_doc("bad", namespace, eventTypes=["order.paid", bad]))
        assert "spec.eventTypes[1]" in stderr and EVENT_TYPE_PATTERN in stderr, stderr
    stderr = refused(cluster, source_doc("dup", namespace, eventTypes=["a.b", "a.b"]))
    assert "spec.eventTypes[1]: Duplicate value" in stderr, stderr
    stderr = refused(
        cluster, source_doc("many", namespace, eventTypes=[f"t{i}" for i in range(513)])
    )
    assert "spec.eventTypes: Too many" in stderr, stderr
    assert "NotFound" in cluster.kubectl("get", "whs", "bad", "-n", namespace, check=False).stderr


def test_a_subscription_filter_takes_types_and_prefixes_and_nothing_else(
    cluster: ControlPlane, namespace: str
) -> None:
    good = endpoint_doc(
        "filters",
        namespace,
        "https://x.example/",
        source="feed",
        eventTypes=["invoice.paid", "invoice.*", "urn:shop/order.*"],
    )
    cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest([good]))
    for bad in ("*", "invoice*", "invoice.*.paid", "in voice"):
        doc = endpoint_doc("bad", namespace, "https://x.example/", source="feed", eventTypes=[bad])
        stderr = refused(cluster, doc)
        assert "spec.eventTypes[0]" in stderr and "should match" in stderr, stderr
    stderr = refused(cluster, endpoint_doc("bad", namespace, "https://x.example/", source="Feed!"))
    assert "spec.source" in stderr, stderr
    stderr = refused(
        cluster, endpoint_doc("bad", namespace, "https://x.example/", eventTypes=["invoice.*"])
    )
    assert "spec.eventTypes filters the events of a source; name it in spec.source" in stderr


def test_source_names_and_printer_columns(cluster: ControlPlane, namespace: str) -> None:
    resources = cluster.kubectl("api-resources", "--api-group=hookline.dev", "-o", "wide").stdout
    line = next(ln for ln in resources.splitlines() if "WebhookSource" in ln)
    assert "whs" in line.split() and "webhooks" in line
    cluster.kubectl("apply", "-f", "-", input=manifest([source_doc("cols", namespace)]))
    header = cluster.kubectl("get", "whs", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "SUBSCRIBERS", "EVENTS", "DELIVERED", "FAILED", "AGE"]
    wide = cluster.kubectl("get", "whs", "-n", namespace, "-o", "wide").stdout.splitlines()[0]
    assert wide.split()[-3:] == ["UNMATCHED", "DEAD", "AGE"]
    spec = json.loads(cluster.kubectl("get", "whs", "cols", "-n", namespace, "-o", "json").stdout)[
        "spec"
    ]
    assert spec == {}
