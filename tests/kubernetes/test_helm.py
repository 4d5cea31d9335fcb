"""The chart ``helm/hookline`` with the real ``helm`` and a real kube-apiserver.

Offline, ``helm lint`` is clean and ``helm template`` renders with the default values and
with every optional block on (``helm/hookline/ci/everything-values.yaml``), into pods that
run the image's commands with a configuration hookline accepts.

Then on a control plane of this module's own — a fresh one, so that the CRD is Helm's to
install (the session's ``cluster`` has it applied already): ``helm install`` creates every
object, the pod templates meet the "restricted" Pod Security Standard, the operator's
ServiceAccount may do what the operator does and nothing more (verb by verb with
``kubectl auth can-i --as``, and by running ``hookline operator`` with that ServiceAccount's
token), ``helm upgrade`` rolls only the Deployments whose configuration changed, and
``helm uninstall`` removes everything but the CRD. No pod ever runs (no kubelet, no
controller-manager), so nothing waits for one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hookline import cli
from hookline import config as config_mod
from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.models import key_hash
from hookline.store import Registry
from tests.kubernetes.cluster import ControlPlane, OperatorProcess
from tests.kubernetes.conftest import operator_env
from tests.kubernetes.helpers import (
    apply,
    condition,
    endpoint_doc,
    refusals,
    registered,
    secret_value,
    until_status,
)
from tests.peers import REPO, tool_binary

CHART = REPO / "helm" / "hookline"
EVERYTHING = CHART / "ci" / "everything-values.yaml"
CRDS_DIR = REPO / "crds"
# The helm that tools/ builds carries no Kubernetes version of its own, so offline renders
# would assume v1.20; they use the version the test control plane runs.
KUBE_VERSION = re.search(
    r"^\s*k8s\.io/kubernetes (v\S+)", (REPO / "tools" / "kube" / "go.mod").read_text(), re.M
).group(1)  # type: ignore[union-attr]

# Release 1: default values (operator cluster-wide). Release 2: every optional block on,
# the operator limited to two namespaces.
NS = "hookline"
NS_SCOPED = "hookline-scoped"
WATCHED = ("team-a", "team-b")
OUTSIDE = "team-c"
OPERATOR_SA = f"system:serviceaccount:{NS}:hookline-operator"
SCOPED_SA = f"system:serviceaccount:{NS_SCOPED}:scoped-hookline-operator"
WORKLOAD_SA = f"system:serviceaccount:{NS}:hookline"
DEPLOYMENTS = {"hookline-receiver", "hookline-dispatcher-default", "hookline-operator"}


class Helm:
    """The real helm, with its own config/cache/data folders (nothing from ``~``)."""

    def __init__(self, home: Path, kubeconfig: Path | None = None) -> None:
        self.bin = tool_binary("helm")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
        self.env.pop("KUBECONFIG", None)
        for what in ("CACHE", "CONFIG", "DATA"):
            self.env[f"HELM_{what}_HOME"] = str(home / what.lower())
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.bin, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} exited with {done.returncode}:\n{done.stdout}{done.stderr}",
                pytrace=False,
            )
        return done

    def template(self, *args: str, release: str = "hookline") -> list[dict[str, Any]]:
        out = self(
            "template", release, str(CHART), "-n", NS, "--kube-version", KUBE_VERSION, *args
        ).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    def manifest(self, release: str, namespace: str) -> list[dict[str, Any]]:
        out = self("get", "manifest", release, "-n", namespace).stdout
        return [d for d in yaml.safe_load_all(out) if d]


def named(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def pod_environment(deployment: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the container would get: its ConfigMap, its literal env, and the
    Secret keys it refers to, resolved from the rendered objects."""
    maps = named(docs, "ConfigMap")
    secrets = named(docs, "Secret")
    c = container(deployment)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item["valueFrom"]:  # the pod's own name, namespace...
            env[item["name"]] = f"<{item['valueFrom']['fieldRef']['fieldPath']}>"
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
    return env


# -- offline


def test_chart_crds_are_the_repository_crds() -> None:
    """Helm installs crds/ of the chart; they must be the very files the operator was built
    for (WebhookEndpoint and WebhookSource)."""
    assert (CHART / "crds").is_dir()
    names = sorted(p.name for p in CRDS_DIR.iterdir())
    assert names == ["webhookendpoints.yaml", "webhooksources.yaml"]
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == names
    for name in names:
        assert (CHART / "crds" / name).read_bytes() == (CRDS_DIR / name).read_bytes(), (
            f"helm/hookline/crds/{name} differs from crds/{name}: copy it again "
            "(cp crds/*.yaml helm/hookline/crds/)"
        )


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tmp_path_factory.mktemp("helm-offline"))


@pytest.mark.parametrize("values", [[], ["-f", str(EVERYTHING)]], ids=["defaults", "everything"])
def test_helm_lint_is_clean(offline: Helm, values: list[str]) -> None:
    done = offline("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *values)
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout
    assert done.stderr == "", done.stderr


@pytest.mark.parametrize("values", [[], ["-f", str(EVERYTHING)]], ids=["defaults", "everything"])
def test_pods_run_the_image_commands_with_a_valid_configuration(
    offline: Helm, values: list[str]
) -> None:
    docs = offline.template(*values)
    deployments = named(docs, "Deployment")
    assert deployments
    settings = {f"HOOKLINE_{f.upper()}" for f in Config.__dataclass_fields__}
    for name, deployment in deployments.items():
        c = container(deployment)
        assert "command" not in c, "the image's ENTRYPOINT is hookline; only args differ"
        args = cli.parser().parse_args(c["args"])
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        assert args.command == component, name
        env = pod_environment(deployment, docs)
        unknown = {k for k in env if k.startswith("HOOKLINE_")} - settings
        assert not unknown, f"{name} sets variables hookline does not read: {unknown}"
        loaded = config_mod.load(env)  # raises InvalidSpec on a bad value
        port = c["ports"][0]["containerPort"]
        assert port == getattr(loaded, f"{component}_port"), name
        if component == "dispatcher":
            assert loaded.pool == deployment["metadata"]["annotations"]["hookline.dev/pool"]


def pod_specs(doc: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in a rendered object, wherever it sits (a Deployment's template, a
    Job's, a CronJob's, a bare Pod): the mappings that hold ``containers``."""
    if isinstance(doc, dict):
        if "containers" in doc:
            yield where, doc
        for k, v in doc.items():
            yield from pod_specs(v, f"{where}.{k}" if where else str(k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from pod_specs(v, f"{where}[{i}]")


@pytest.mark.parametrize("values", [[], ["-f", str(EVERYTHING)]], ids=["defaults", "everything"])
def test_pods_get_no_service_link_variables(offline: Helm, values: list[str]) -> None:
    """With service links on, the kubelet gives every pod HOOKLINE_RECEIVER_PORT=tcp://IP:80
    for the release's Service hookline-receiver, and hookline refuses to start on it (a
    crash loop seen on a real cluster): every pod spec of the chart turns them off."""
    docs = offline.template(*values)
    assert "hookline-receiver" in named(docs, "Service")  # the Service that would collide
    found = {
        f"{d['kind']}/{d['metadata']['name']} {where}": spec
        for d in docs
        for where, spec in pod_specs(d)
    }
    assert {k.split()[0] for k in found} >= {f"Deployment/{n}" for n in DEPLOYMENTS}
    links = {where: spec.get("enableServiceLinks") for where, spec in found.items()}
    assert all(v is False for v in links.values()), links


def test_a_service_link_value_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A pod spec of one's own in the release's namespace (``kubectl create deployment
    sink ... -- hookline sink``, as docs/kubernetes.md does) gets the kubelet's
    ``HOOKLINE_RECEIVER_PORT=tcp://IP:80``: hookline takes it for what it is, not a port,
    keeps the default and says why in one warning."""
    link = {"HOOKLINE_RECEIVER_PORT": "tcp://10.0.0.204:80", "HOOKLINE_OPERATOR_PORT": "9"}
    with caplog.at_level("WARNING", logger="hookline.config"):
        config = config_mod.load(link)
    assert config.receiver_port == config_mod.Config().receiver_port
    assert config.operator_port == 9
    [warning] = caplog.messages
    assert "HOOKLINE_RECEIVER_PORT='tcp://10.0.0.204:80' ignored" in warning
    assert "hookline-receiver" in warning and "enableServiceLinks: false" in warning
    # A value that is merely wrong is still refused, with the variable.
    with pytest.raises(InvalidSpec) as plain:
        config_mod.load({"HOOKLINE_RECEIVER_PORT": "eighty"})
    assert "HOOKLINE_RECEIVER_PORT='eighty'" in str(plain.value)


def test_default_values_render_the_three_components(offline: Helm) -> None:
    docs = offline.template()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted(
        [
            ("ClusterRole", "hookline-operator"),
            ("ClusterRoleBinding", "hookline-operator"),
            ("ConfigMap", "hookline-dispatcher"),
            ("ConfigMap", "hookline-operator"),
            ("ConfigMap", "hookline-receiver"),
            ("Deployment", "hookline-dispatcher-default"),
            ("Deployment", "hookline-operator"),
            ("Deployment", "hookline-receiver"),
            ("Role", "hookline-operator-scaler"),
            ("RoleBinding", "hookline-operator-scaler"),
            ("Secret", "hookline-redis"),
            ("Service", "hookline-receiver"),
            ("ServiceAccount", "hookline"),
            ("ServiceAccount", "hookline-operator"),
        ]
    )
    deployments = named(docs, "Deployment")
    operator = deployments["hookline-operator"]["spec"]
    assert (operator["replicas"], operator["strategy"]["type"]) == (1, "Recreate")
    ports = {"hookline-receiver": 8080, "hookline-dispatcher-default": 8081}
    ports["hookline-operator"] = 8082
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        pod, c = template["spec"], container(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
        assert c["ports"] == [{"name": "http", "containerPort": ports[name], "protocol": "TCP"}]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(ports[name])
        assert annotations["prometheus.io/path"] == "/metrics"
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
        # Only the operator talks to the Kubernetes API.
        assert pod["automountServiceAccountToken"] is (name == "hookline-operator")
    dispatcher = deployments["hookline-dispatcher-default"]
    assert dispatcher["metadata"]["labels"]["hookline.dev/component"] == "dispatcher"
    assert dispatcher["metadata"]["annotations"] == {
        "hookline.dev/pool": "default",
        "hookline.dev/min-replicas": "1",
        "hookline.dev/max-replicas": "10",
        "hookline.dev/target-lag-per-replica": "1000",
        "hookline.dev/scale-down-window-seconds": "300",
    }
    assert dispatcher["spec"]["replicas"] == 1
    env = pod_environment(dispatcher, docs)
    assert env["HOOKLINE_POOL"] == "default"
    assert "HOOKLINE_ALLOW_CIDRS" not in env
    # No body store by default: every body up to the cap travels inline, so receivers and
    # dispatchers need no shared volume.
    receiver_env = pod_environment(deployments["hookline-receiver"], docs)
    assert receiver_env["HOOKLINE_INLINE_LIMIT"] == receiver_env["HOOKLINE_MAX_BODY_BYTES"]
    assert receiver_env["OTEL_TRACES_EXPORTER"] == "none"


def test_every_optional_block_renders(offline: Helm) -> None:
    docs = offline.template("-f", str(EVERYTHING))
    deployments = named(docs, "Deployment")
    assert set(deployments) == {
        "hookline-receiver",
        "hookline-dispatcher-default",
        "hookline-dispatcher-bulk",
        "hookline-operator",
    }
    # Receiver: replicas left to the HPA, a PDB, a LoadBalancer Service.
    receiver = deployments["hookline-receiver"]
    assert "replicas" not in receiver["spec"]
    hpa = named(docs, "HorizontalPodAutoscaler")["hookline-receiver"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "hookline-receiver"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert named(docs, "PodDisruptionBudget")["hookline-receiver"]["spec"]["minAvailable"] == 2
    assert named(docs, "Service")["hookline-receiver"]["spec"]["type"] == "LoadBalancer"
    # Metrics: a headless Service over every component and the ServiceMonitor on it.
    metrics = named(docs, "Service")["hookline-metrics"]
    monitor = named(docs, "ServiceMonitor")["hookline"]
    assert metrics["spec"]["clusterIP"] == "None"
    assert monitor["spec"]["endpoints"][0]["port"] == metrics["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # Pools: each its own Deployment, stream, bounds and overrides.
    bulk = deployments["hookline-dispatcher-bulk"]
    assert bulk["metadata"]["annotations"]["hookline.dev/max-replicas"] == "4"
    assert bulk["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "bulk"}
    bulk_env = pod_environment(bulk, docs)
    assert (bulk_env["HOOKLINE_POOL"], bulk_env["HOOKLINE_CONCURRENCY"]) == ("bulk", "32")
    assert bulk_env["HOOKLINE_ALLOW_CIDRS"] == "10.0.0.0/8,fd00::/8"
    assert bulk_env["HOOKLINE_RETRY_ATTEMPTS"] == "10"
    # Bodies in GCS with a key file, tracing over OTLP.
    env = pod_environment(receiver, docs)
    assert env["HOOKLINE_BODY_STORE"] == "gcs"
    assert env["HOOKLINE_GCS_BUCKET"] == "hookline-bodies"
    assert env["HOOKLINE_INLINE_LIMIT"] == "32768"
    assert env["GOOGLE_APPLICATION_CREDENTIALS"].startswith("/var/run/secrets/hookline/gcs/")
    assert env["HOOKLINE_REDIS_URL"] == "redis://:secret@redis.data:6379/1"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger-collector.observability:4317"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    assert env["OTEL_SERVICE_NAME"] == "hookline-receiver"
    volumes = {v["name"]: v for v in receiver["spec"]["template"]["spec"]["volumes"]}
    assert volumes["gcs-credentials"]["secret"]["secretName"] == "hookline-gcs"
    # Operator: limited to two namespaces (a Role in each), peered, two replicas.
    operator = deployments["hookline-operator"]
    assert (operator["spec"]["replicas"], operator["spec"]["strategy"]["type"]) == (
        2,
        "RollingUpdate",
    )
    op_env = pod_environment(operator, docs)
    # The release namespace is watched too: the scaler finds the dispatchers there.
    assert op_env["HOOKLINE_OPERATOR_NAMESPACES"] == f"team-a,team-b,{NS}"
    assert op_env["HOOKLINE_OPERATOR_PEERING"] == "hookline"
    roles = [
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "hookline-operator"
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(["team-a", "team-b", NS])
    scaler = named(docs, "Role")["hookline-operator-scaler"]
    assert scaler["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale"],
            "verbs": ["get", "patch", "update"],
            "resourceNames": [
                "hookline-dispatcher-default",
                "hookline-dispatcher-bulk",
            ],
        }
    ]


def test_filesystem_body_store_mounts_the_shared_claim(offline: Helm) -> None:
    docs = offline.template("--set", "bodies.store=fs", "--set", "bodies.fs.claimName=bodies")
    for name in ("hookline-receiver", "hookline-dispatcher-default"):
        deployment = named(docs, "Deployment")[name]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["bodies"]["persistentVolumeClaim"]["claimName"] == "bodies"
        env = pod_environment(deployment, docs)
        assert env["HOOKLINE_BODY_DIR"] == "/var/lib/hookline/bodies"
        assert env["HOOKLINE_INLINE_LIMIT"] == "65536"


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (["--set", "bodies.store=gcs"], "bodies.store=gcs needs bodies.gcs.bucket"),
        (["--set", "bodies.store=fs"], "bodies.store=fs needs bodies.fs.claimName"),
        (["--set", "bodies.inlineLimit=2000000"], "must not exceed bodies.maxBodyBytes"),
        (["--set", "redis.url="], "set redis.url or redis.existingSecret"),
        (["--set", "operator.replicas=2"], "operator.replicas above 1 needs operator.peering"),
        (
            [
                "--set-json",
                'pools=[{"name":"a","minReplicas":1,"maxReplicas":2,'
                '"targetLagPerReplica":1,"scaleDownWindowSeconds":0},{"name":"a","minReplicas":1,'
                '"maxReplicas":2,"targetLagPerReplica":1,"scaleDownWindowSeconds":0}]',
            ],
            'pool "a" is listed twice',
        ),
        (
            [
                "--set-json",
                'pools=[{"name":"Bulk","minReplicas":1,"maxReplicas":2,'
                '"targetLagPerReplica":1,"scaleDownWindowSeconds":0}]',
            ],
            "/pools/0/name",
        ),
    ],
    ids=[
        "gcs-bucket",
        "fs-claim",
        "inline-limit",
        "redis",
        "operator-replicas",
        "pool-twice",
        "pool-name",
    ],
)
def test_bad_values_fail_the_render_with_the_reason(
    offline: Helm, values: list[str], reason: str
) -> None:
    done = offline(
        "template", "hookline", str(CHART), "--kube-version", KUBE_VERSION, *values, check=False
    )
    assert done.returncode != 0
    assert reason in done.stderr, done.stderr


# -- on a real API server


@dataclass
class Installed:
    plane: ControlPlane
    helm: Helm
    notes: str
    manifests: dict[str, list[dict[str, Any]]]  # release → its objects at install


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Both releases on a fresh control plane; the namespaces say which Pod Security
    Standard the pods must meet (``warn``: the API server names any violation)."""
    plane = ControlPlane(tmp_path_factory.mktemp("helm-kube"))
    try:
        plane.start()
        helm = Helm(tmp_path_factory.mktemp("helm"), plane.kubeconfig)
        for ns in (NS, NS_SCOPED, *WATCHED, OUTSIDE):
            plane.kubectl("create", "namespace", ns)
            plane.kubectl(
                "label",
                "namespace",
                ns,
                "pod-security.kubernetes.io/warn=restricted",
                "pod-security.kubernetes.io/warn-version=latest",
            )
        # The scoped release runs its operator peered (operator/README.md: the peering CRDs
        # come first).
        plane.kubectl("apply", "-f", str(REPO / "operator" / "peering-crds.yaml"))
        first = helm("install", "hookline", str(CHART), "-n", NS)
        assert "PodSecurity" not in first.stderr, first.stderr
        scoped = helm(
            "install",
            "scoped",
            str(CHART),
            "-n",
            NS_SCOPED,
            "-f",
            str(EVERYTHING),
            # The objects this API server cannot take: no Prometheus Operator CRDs.
            "--set",
            "metrics.serviceMonitor.enabled=false",
            "--set",
            "alerts.prometheusRule.enabled=false",
            "--set-json",
            f"operator.watchNamespaces={json.dumps(list(WATCHED))}",
        )
        assert "PodSecurity" not in scoped.stderr, scoped.stderr
        yield Installed(
            plane,
            helm,
            first.stdout,
            {
                "hookline": helm.manifest("hookline", NS),
                "scoped": helm.manifest("scoped", NS_SCOPED),
            },
        )
    finally:
        plane.stop()


def _write(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def test_install_creates_the_crd_and_every_object(installed: Installed, tmp_path: Path) -> None:
    plane = installed.plane
    for name in (WHE, WHS):
        crd = json.loads(plane.kubectl("get", "crd", name, "-o", "json").stdout)
        assert condition(crd["status"], "Established")["status"] == "True", name
    # Helm keeps CRDs out of the release: they are the chart's crds/ (never upgraded or
    # deleted by Helm).
    assert all(
        d["kind"] != "CustomResourceDefinition" for m in installed.manifests.values() for d in m
    )
    for release, docs in installed.manifests.items():
        found = plane.kubectl(
            "get", "-f", str(_write(tmp_path / f"{release}.yaml", docs)), "-o", "name"
        ).stdout.split()
        assert len(found) == len(docs), f"{release}: {found}"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in installed.manifests["hookline"]}
    assert {("Deployment", name) for name in DEPLOYMENTS} <= kinds
    assert ("Service", "hookline-receiver") in kinds
    scoped_kinds = {d["kind"] for d in installed.manifests["scoped"]}
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= scoped_kinds
    # The API server defaulted and stored what the chart says.
    operator = json.loads(
        plane.kubectl("get", "deployment", "hookline-operator", "-n", NS, "-o", "json").stdout
    )
    assert (operator["spec"]["replicas"], operator["spec"]["strategy"]["type"]) == (1, "Recreate")
    dispatcher = json.loads(
        plane.kubectl(
            "get", "deployment", "-n", NS, "-l", "hookline.dev/component=dispatcher", "-o", "json"
        ).stdout
    )["items"]
    assert [d["metadata"]["annotations"]["hookline.dev/pool"] for d in dispatcher] == ["default"]
    service = json.loads(
        plane.kubectl("get", "service", "hookline-receiver", "-n", NS, "-o", "json").stdout
    )
    assert service["spec"]["clusterIP"].startswith("10.0.0.")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # NOTES tell the user how to reach a first webhook.
    for step in (
        "kind: WebhookEndpoint",
        "secret first-key",
        "X-WH-Endpoint-Key",
        "/webhooks/send",
    ):
        assert step in installed.notes, step
    assert "svc/hookline-receiver 8080:80" in installed.notes


def test_pod_templates_meet_the_restricted_pod_security_standard(
    installed: Installed, tmp_path: Path
) -> None:
    """The API server's PodSecurity admission judges the pod template of every Deployment
    created in a namespace that asks for "restricted", and warns about each violation; a
    Deployment without the settings is the control that it does."""
    plane = installed.plane
    for release, ns in (("hookline", NS), ("scoped", NS_SCOPED)):
        # Copies under other names: only a create is judged, and the originals exist.
        templates = [
            {**d, "metadata": {**d["metadata"], "name": d["metadata"]["name"] + "-copy"}}
            for d in installed.manifests[release]
            if d["kind"] == "Deployment"
        ]
        assert templates
        path = _write(tmp_path / f"{release}.yaml", templates)
        done = plane.kubectl("create", "--dry-run=server", "-n", ns, "-f", str(path))
        assert done.stdout.count("created (server dry run)") == len(templates), done.stdout
        assert "PodSecurity" not in done.stderr, done.stderr
    control = plane.kubectl(
        "create", "deployment", "control", "--image=x", "-n", NS, "--dry-run=server"
    )
    assert 'would violate PodSecurity "restricted:latest"' in control.stderr


def can_i(plane: ControlPlane, who: str, verb: str, what: str, where: str | None) -> bool:
    """``kubectl auth can-i`` as ``who``; ``what`` is RESOURCE[/NAME][:SUBRESOURCE];
    ``where`` a namespace, None for cluster scope or all namespaces."""
    resource, _, sub = what.partition(":")
    args = ["auth", "can-i", verb, resource, f"--as={who}"]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["-n", where] if where else ["--all-namespaces"]
    done = plane.kubectl(*args, check=False)
    if done.stdout.strip() not in ("yes", "no"):
        pytest.fail(f"kubectl {' '.join(args)}: {done.stdout}{done.stderr}", pytrace=False)
    return done.stdout.strip() == "yes"


def check_rbac(
    plane: ControlPlane,
    who: str,
    allowed: list[tuple[str, str, str | None]],
    denied: list[tuple[str, str, str | None]],
) -> None:
    with ThreadPoolExecutor(4) as pool:
        got_allowed = list(pool.map(lambda c: can_i(plane, who, *c), allowed))
        got_denied = list(pool.map(lambda c: can_i(plane, who, *c), denied))
    missing = [c for c, ok in zip(allowed, got_allowed, strict=True) if not ok]
    excess = [c for c, ok in zip(denied, got_denied, strict=True) if ok]
    assert not missing, f"{who} lacks what the operator needs: {missing}"
    assert not excess, f"{who} may do more than the operator needs: {excess}"


WHE = "webhookendpoints.hookline.dev"
WHS = "webhooksources.hookline.dev"
CRDS = "customresourcedefinitions.apiextensions.k8s.io"


def needs(
    where: str | None, release_ns: str, dispatchers: list[str]
) -> list[tuple[str, str, str | None]]:
    """Every API call the operator makes (kopf's and the scaler's included), where it
    makes it: ``where`` it watches, and the release's dispatchers."""
    return [
        ("list", CRDS, None),
        ("watch", CRDS, None),
        *[
            (verb, what, where)
            for kind in (WHE, WHS)
            for verb, what in (
                ("list", kind),
                ("watch", kind),
                ("patch", kind),
                ("patch", f"{kind}:status"),
            )
        ],
        ("get", "secrets", where),
        ("list", "secrets", where),
        ("watch", "secrets", where),
        ("create", "secrets", where),
        # adopting the generated Secrets a deleted endpoint of the same name left behind
        ("patch", "secrets", where),
        ("create", "events", where),
        ("get", "deployments.apps", where),
        ("list", "deployments.apps", where),
        ("watch", "deployments.apps", where),
        *[
            (verb, f"deployments.apps/{name}:scale", release_ns)
            for name in dispatchers
            for verb in ("get", "patch", "update")
        ],
    ]


def never(where: str | None, release_ns: str) -> list[tuple[str, str, str | None]]:
    """What the operator never does: it must not be able to."""
    return [
        ("delete", "deployments.apps", release_ns),
        ("create", "deployments.apps", release_ns),
        ("update", "deployments.apps", release_ns),
        ("patch", "deployments.apps", release_ns),
        ("patch", "deployments.apps/hookline-receiver:scale", release_ns),
        ("patch", "deployments.apps/scoped-hookline-receiver:scale", release_ns),
        ("patch", "deployments.apps:scale", "kube-system"),
        ("patch", "deployments.apps:scale", release_ns),
        *[(verb, kind, where) for kind in (WHE, WHS) for verb in ("delete", "create", "update")],
        ("delete", "secrets", where),
        ("update", "secrets", where),
        ("get", "configmaps", release_ns),
        ("create", "pods", release_ns),
        ("list", "nodes", None),
        ("get", "nodes", None),
        ("create", CRDS, None),
        ("delete", CRDS, None),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
        ("create", "rolebindings.rbac.authorization.k8s.io", release_ns),
        ("impersonate", "serviceaccounts", release_ns),
        ("create", "serviceaccounts:token", release_ns),
    ]


def test_cluster_wide_operator_may_do_what_it_needs_and_no_more(installed: Installed) -> None:
    check_rbac(
        installed.plane,
        OPERATOR_SA,
        needs(None, NS, ["hookline-dispatcher-default"]) + needs("team-a", NS, []),
        [*never(None, NS), ("list", "namespaces", None)],
    )


def test_namespaced_operator_may_do_what_it_needs_there_and_no_more(installed: Installed) -> None:
    dispatchers = ["scoped-hookline-dispatcher-default", "scoped-hookline-dispatcher-bulk"]
    allowed = [
        *needs(NS_SCOPED, NS_SCOPED, dispatchers),
        *[c for ns in WATCHED for c in needs(ns, NS_SCOPED, [])],
        # kopf lists and watches namespaces when it is given a list of them; and peering.
        ("list", "namespaces", None),
        ("watch", "namespaces", None),
        *[("patch", "kopfpeerings.kopf.dev", ns) for ns in (*WATCHED, NS_SCOPED)],
    ]
    elsewhere = [
        (verb, what, where)
        for where in (OUTSIDE, "kube-system", None)
        for verb, what in (
            ("get", "secrets"),
            ("list", "secrets"),
            ("list", WHE),
            ("list", WHS),
            ("create", "events"),
            ("list", "deployments.apps"),
        )
    ]
    check_rbac(
        installed.plane,
        SCOPED_SA,
        allowed,
        [
            *never(WATCHED[0], NS_SCOPED),
            *elsewhere,
            ("patch", "clusterkopfpeerings.kopf.dev", None),
        ],
    )


def test_receiver_and_dispatchers_have_no_api_access(installed: Installed) -> None:
    check_rbac(
        installed.plane,
        WORKLOAD_SA,
        [],
        [
            ("get", "secrets", NS),
            ("list", WHE, None),
            ("list", WHS, None),
            ("get", "deployments.apps", NS),
            ("list", "configmaps", NS),
        ],
    )


@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced"])
async def test_operator_does_its_job_with_the_chart_service_account(
    installed: Installed, scope: str, config: Config, registry: Registry, tmp_path: Path
) -> None:
    """``hookline operator`` with nothing but a token of the chart's ServiceAccount: it
    generates the key Secret, registers the endpoint, follows a key rotation, posts an
    Event, patches the status and takes its finalizer off — without a single 403."""
    plane = installed.plane
    sa_ns, sa = (
        (NS, "hookline-operator")
        if scope == "cluster-wide"
        else (NS_SCOPED, "scoped-hookline-operator")
    )
    token = plane.kubectl("create", "token", sa, "-n", sa_ns).stdout.strip()
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(plane.kubeconfig_for(token))
    ns = WATCHED[0]
    env = operator_env(config, ns)
    if scope == "cluster-wide":
        env["HOOKLINE_OPERATOR_NAMESPACES"] = ""
    op = OperatorProcess(plane, env, tmp_path / "operator.log", kubeconfig)
    name = f"first-{scope}"
    try:
        op.start()
        await apply(plane, endpoint_doc(name, ns, "https://example.com/hook"))
        await plane.akubectl(
            "wait", "--for=condition=Ready", "--timeout=20s", "-n", ns, f"whe/{name}"
        )
        ep = await registered(registry, f"{ns}/{name}", op)
        key = await secret_value(plane, f"{name}-key", ns, "key")
        assert ep.key_hashes == (key_hash(key),)
        # A rotated key reaches the registry through the Secret watch.
        await plane.akubectl(
            "patch",
            "secret",
            f"{name}-key",
            "-n",
            ns,
            "-p",
            json.dumps({"stringData": {"key": "whk_rotated"}}),
        )
        await registered(
            registry,
            ep.id,
            op,
            lambda e: e.key_hashes == (key_hash("whk_rotated"),),
            what="the rotated key",
        )
        await registry.disable(ep.id, "endpoint answered 410 Gone")
        await until_status(
            plane,
            name,
            ns,
            lambda s: condition(s, "Delivering").get("reason") == "Disabled",
            10,
            "Delivering=False Disabled",
            op,
        )
        events = await plane.akubectl(
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            f"reason=Disabled,involvedObject.name={name}",
            "-o",
            "name",
        )
        assert events.stdout.strip(), "no Disabled event"
        await plane.akubectl("delete", "whe", name, "-n", ns, "--timeout=20s")
        assert await registry.get(ep.id) is None
    finally:
        op.stop()
    denied = refusals(op)
    assert denied == [], "\n".join(denied)


def deployments(plane: ControlPlane, namespace: str) -> dict[str, dict[str, Any]]:
    items = json.loads(plane.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout)
    return {d["metadata"]["name"]: d for d in items["items"]}


def upgrade(installed: Installed, *values: str) -> set[str]:
    """``helm upgrade`` of the default release; returns the Deployments it rolled: those
    whose pod template changed (a new ReplicaSet, new pods), each for a changed checksum.
    (The generation is no sign: a Deployment's moves with its annotations too.)"""
    before = deployments(installed.plane, NS)
    installed.helm("upgrade", "hookline", str(CHART), "-n", NS, "--reuse-values", *values)
    after = deployments(installed.plane, NS)
    assert set(after) == set(before)
    rolled = set()
    for name, now in after.items():
        old, new = before[name]["spec"]["template"], now["spec"]["template"]
        if old == new:
            continue
        rolled.add(name)
        checksums = [
            {k: v for k, v in t["metadata"]["annotations"].items() if k.startswith("checksum/")}
            for t in (old, new)
        ]
        assert checksums[0] != checksums[1], f"{name} rolled without a changed checksum"
        assert now["metadata"]["generation"] > before[name]["metadata"]["generation"]
    return rolled


def test_upgrade_rolls_only_the_deployments_whose_configuration_changed(
    installed: Installed, tmp_path: Path
) -> None:
    plane = installed.plane
    dispatcher = "hookline-dispatcher-default"
    # The scaler's move, made as the operator's ServiceAccount; an upgrade must keep it.
    plane.kubectl(
        "scale", f"deployment/{dispatcher}", "--replicas=3", "-n", NS, f"--as={OPERATOR_SA}"
    )
    refused = plane.kubectl(
        "scale",
        "deployment/hookline-receiver",
        "--replicas=3",
        "-n",
        NS,
        f"--as={OPERATOR_SA}",
        check=False,
    )
    assert refused.returncode != 0 and "forbidden" in refused.stderr, refused.stderr

    assert upgrade(installed, "--set", "receiver.requestTimeout=30") == {"hookline-receiver"}
    assert upgrade(installed, "--set-json", 'dispatcher.allowCidrs=["10.0.0.0/8"]') == {dispatcher}
    assert upgrade(installed, "--set", "operator.interval=10") == {"hookline-operator"}
    # The scaler's bounds are annotations of the Deployment, not of its pods: no restart.
    pools = tmp_path / "pools.yaml"
    pools.write_text(
        yaml.safe_dump(
            {
                "pools": [
                    {
                        "name": "default",
                        "minReplicas": 2,
                        "maxReplicas": 20,
                        "targetLagPerReplica": 1000,
                        "scaleDownWindowSeconds": 300,
                    }
                ]
            }
        )
    )
    assert upgrade(installed, "-f", str(pools)) == set()
    # Redis is every component's.
    assert upgrade(installed, "--set", "redis.url=redis://redis.other:6379/0") == DEPLOYMENTS

    now = deployments(plane, NS)[dispatcher]
    assert now["metadata"]["annotations"]["hookline.dev/max-replicas"] == "20"
    assert now["spec"]["replicas"] == 3, "helm upgrade undid the scaler's replicas"
    env = {
        k: v
        for k, v in json.loads(
            plane.kubectl("get", "configmap", "hookline-dispatcher", "-n", NS, "-o", "json").stdout
        )["data"].items()
    }
    assert env["HOOKLINE_ALLOW_CIDRS"] == "10.0.0.0/8"


def test_uninstall_removes_everything_but_the_crd(installed: Installed, tmp_path: Path) -> None:
    """Last in this module: it uninstalls both releases (the first one installed the CRD)."""
    plane = installed.plane
    manifests = {}
    for release, ns in (("hookline", NS), ("scoped", NS_SCOPED)):
        manifests[release] = _write(
            tmp_path / f"{release}.yaml", installed.helm.manifest(release, ns)
        )
        installed.helm("uninstall", release, "-n", ns)
    for release, path in manifests.items():
        left = plane.kubectl("get", "-f", str(path), "--ignore-not-found", "-o", "name").stdout
        assert left.strip() == "", f"{release} left behind:\n{left}"
    assert installed.helm("list", "--all-namespaces", "-q").stdout.strip() == ""
    labelled = plane.kubectl(
        "get",
        "deployments,services,configmaps,secrets,serviceaccounts,roles,rolebindings",
        "--all-namespaces",
        "-l",
        "app.kubernetes.io/part-of=hookline",
        "-o",
        "name",
    ).stdout
    assert labelled.strip() == ""
    cluster_wide = plane.kubectl(
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        "app.kubernetes.io/part-of=hookline",
        "-o",
        "name",
    ).stdout
    assert cluster_wide.strip() == ""
    crd = json.loads(
        plane.kubectl("get", "crd", "webhookendpoints.hookline.dev", "-o", "json").stdout
    )
    assert condition(crd["status"], "Established")["status"] == "True"
