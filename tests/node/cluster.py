"""A real single-node Kubernetes cluster on this machine: the node tier's peer.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, CoreDNS,
containerd and kubelet run as processes of the test session, on a bridge the session
creates (``hlcni0``, ``10.244.0.1/24``: the node's address and the pods' gateway).
Everything pods must reach listens on that address; everything else on 127.0.0.1.
``../shared/CLUSTER.md`` (and ``tools/README.md``) explain each setting: most were found
by a failure on this kind of machine.

What the node changes on the host is undone by :func:`teardown`, which works from the
node folder and a state file alone, so it also cleans up after a run that was killed:
the session fixture calls it before it starts and after it ends, and ``python -m
tests.node.cluster down`` calls it by hand. It kills the pods' processes and the node's,
unmounts everything under the node folder, deletes the bridge, the ``KUBE-*``/``CNI-*``/
``HOOKLINE-*`` iptables chains and the pods' cgroups, restores ``net.ipv4.ip_forward``
and removes the folder. kubelet runs in a mount namespace of its own in which the
kernel settings it would write (``vm.overcommit_memory``, ``kernel.panic`` …) are
bind-mounted copies, so the host's are never touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.kubernetes.cluster import ControlPlane, _stop, _wait_http, tail
from tests.peers import REPO, free_port, require_binary, tool_binary

NODE_DIR = Path(os.environ.get("HOOKLINE_NODE_DIR", "/var/tmp/hookline-node"))
BRIDGE = "hlcni0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
# kubeadm's and kind's default Service range, the one docs/kubernetes.md names.
SERVICE_CIDR = "10.96.0.0/12"
NODE_NAME = "hookline-node"
API_PORT = 6443
KUBELET_PORT = 10250
# Chains of ours and of the node's components; tear-down removes every one.
CHAIN_PREFIXES = ("KUBE-", "CNI-", "HOOKLINE-")
FORWARD_CHAIN = "HOOKLINE-NODE-FORWARD"
# Host settings kubelet writes at start; it gets private copies of these.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Host settings a test checks are unchanged after the session (the ones above, and the
# ones kube-proxy and the bridge could touch).
WATCHED_SYSCTLS = (
    *KUBELET_SYSCTLS,
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)
# Where kubelet (device plugins, container log links), libcni (results cache) and
# containerd's shims (sockets, fifos) write whatever they are configured with; tear-down
# removes what the node added there.
HOST_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/var/lib/cni"),
    Path("/run/containerd"),
)
SYSTEM_PACKAGES = "apt-get install containerd runc containernetworking-plugins iptables conntrack"


def sysctls() -> dict[str, str]:
    values = {}
    for name in WATCHED_SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = (Path("/proc/sys") / name).read_text().strip()
    return values


def _run(*cmd: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def _fail(message: str) -> None:
    import pytest

    pytest.fail(message, pytrace=False)


# -- tear-down: from the folder and its state file alone --------------------------------


def _processes_of(folder: Path) -> list[int]:
    """Processes started for this node: their command line names the node folder."""
    mine = str(folder)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if mine in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
    return pids


def _cgroup_dirs() -> list[Path]:
    """The pods' cgroups (kubelet's ``kubepods`` tree) in every v1 hierarchy, deepest first."""
    found: list[Path] = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found.extend(p for p in top.rglob("*") if p.is_dir())
            found.append(top)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _kill_pods() -> None:
    for _ in range(3):
        pids = set()
        for group in _cgroup_dirs():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (group / "cgroup.procs").read_text().split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def _kill(pids: list[int], seconds: float = 10) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _mounts_under(folder: Path) -> list[str]:
    mine = str(folder)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == mine or point.startswith(mine + "/"):
            points.append(point)
    return points


def _unmount_all(folder: Path) -> None:
    for _ in range(5):
        points = _mounts_under(folder)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            _run("umount", "-l", point)


def _remove_chains() -> None:
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle", "raw"):
            rules = _run(tool, "-w", "-t", table, "-S").stdout.splitlines()
            ours = [r for r in rules if any(p in r for p in CHAIN_PREFIXES)]
            for rule in ours:
                if rule.startswith("-A "):
                    _run(tool, "-w", "-t", table, "-D", *shlex.split(rule[3:]))
            for rule in ours:
                if rule.startswith("-N "):
                    _run(tool, "-w", "-t", table, "-F", rule[3:])
            for rule in ours:
                if rule.startswith("-N "):
                    _run(tool, "-w", "-t", table, "-X", rule[3:])
    # kube-proxy's nftables mode (not used, but kube-proxy cleans it up and may leave
    # empty tables behind).
    if shutil.which("nft"):
        for family in ("ip", "ip6"):
            _run("nft", "delete", "table", family, "kube-proxy")


def _listing(root: Path) -> list[str] | None:
    """What is under ``root`` (None: ``root`` itself is absent)."""
    if not root.exists():
        return None
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _restore_listing(root: Path, before: list[str] | None) -> None:
    """Remove what came under ``root`` since :func:`_listing` (``root`` too if it was
    absent): files the node's parts write where they are not told otherwise."""
    if before is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    kept = set(before)
    now = _listing(root) or []
    for name in sorted(set(now) - kept, key=len, reverse=True):
        path = root / name
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def leftovers(folder: Path = NODE_DIR) -> list[str]:
    """What the node left on the host; empty after a good tear-down."""
    found = []
    if _processes_of(folder):
        found.append(f"processes {_processes_of(folder)}")
    if _mounts_under(folder):
        found.append(f"mounts {_mounts_under(folder)[:5]}")
    if _run("ip", "link", "show", BRIDGE).returncode == 0:
        found.append(f"the bridge {BRIDGE}")
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            rules = _run(tool, "-w", "-t", table, "-S").stdout
            chains = sorted({w for w in rules.split() if w.startswith(CHAIN_PREFIXES)})
            if chains:
                found.append(f"{tool} {table} chains {chains[:6]}")
    if _cgroup_dirs():
        found.append(f"cgroups {[str(p) for p in _cgroup_dirs()[:3]]}")
    if folder.exists():
        found.append(f"the folder {folder}")
    return found


def teardown(folder: Path = NODE_DIR) -> None:
    """Undo everything a node made, whatever state a previous run left it in."""
    state_file = folder / "state.json"
    state: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(state_file.read_text())
    # Stop kubelet first so it restarts nothing, then the pods, then the rest.
    pids = _processes_of(folder)
    kubelets = [p for p in pids if b"kubelet" in Path(f"/proc/{p}/cmdline").read_bytes()]
    _kill(kubelets)
    _kill_pods()
    _kill(_processes_of(folder))
    _unmount_all(folder)
    for group in _cgroup_dirs():
        with contextlib.suppress(OSError):
            group.rmdir()
    _run("ip", "link", "delete", BRIDGE)
    _remove_chains()
    for name, value in state.get("sysctls", {}).items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / name).write_text(value)
    for root, before in state.get("host_paths", {}).items():
        _restore_listing(Path(root), before)
    if folder.exists():
        _unmount_all(folder)
        shutil.rmtree(folder, ignore_errors=True)


# -- the node ------------------------------------------------------------------------------


class Pki:
    """A CA of the test's own and the certificates the node's parts present."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.openssl = require_binary("openssl", "apt-get install openssl")
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_key, self.ca = folder / "ca.key", folder / "ca.crt"
        self._openssl("genrsa", "-out", str(self.ca_key), "2048")
        self._openssl(
            "req", "-x509", "-new", "-key", str(self.ca_key), "-days", "2",
            "-subj", "/CN=hookline-test-ca", "-out", str(self.ca),
        )  # fmt: skip

    def _openssl(self, *args: str) -> None:
        done = _run(self.openssl, *args)
        if done.returncode != 0:
            _fail(f"openssl {' '.join(args[:2])} failed: {done.stderr}")

    def issue(
        self, name: str, subject: str, sans: Sequence[str] = (), client: bool = False
    ) -> tuple[Path, Path]:
        key, csr, crt = (self.folder / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext = self.folder / f"{name}.ext"
        usage = "clientAuth" if client else "serverAuth"
        lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment"]
        lines.append(f"extendedKeyUsage={usage}")
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        self._openssl("genrsa", "-out", str(key), "2048")
        self._openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        self._openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt),
        )  # fmt: skip
        return crt, key


class Node(ControlPlane):
    """The control plane of :class:`ControlPlane`, served on the bridge, plus a node."""

    def __init__(self, folder: Path = NODE_DIR) -> None:
        super().__init__(folder)
        for name in ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
            tool_binary(name)
        tool_binary("coredns")
        self.containerd_bin = require_binary("containerd", SYSTEM_PACKAGES)
        self.ctr_bin = require_binary("ctr", SYSTEM_PACKAGES)
        require_binary("runc", SYSTEM_PACKAGES)
        require_binary("iptables", SYSTEM_PACKAGES)
        require_binary("conntrack", SYSTEM_PACKAGES)
        require_binary("unshare", "apt-get install util-linux")
        if not Path("/usr/lib/cni/bridge").exists():
            _fail(f"the CNI plugins are missing (/usr/lib/cni/bridge): {SYSTEM_PACKAGES}")
        self.port = API_PORT
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.sock = folder / "containerd" / "containerd.sock"

    @property
    def url(self) -> str:
        return f"https://{NODE_IP}:{self.port}"

    # -- start

    def start(self) -> None:
        teardown(self.folder)
        self.folder.mkdir(parents=True)
        started = time.monotonic()
        self._save_state()
        self._network()
        self.pki = Pki(self.folder / "pki")
        self._start_etcd()
        self._start_apiserver()
        self._write_kubeconfig()
        self.timings["control plane"] = time.monotonic() - started
        self._start_controllers()
        self._start_containerd()
        self._start_kubelet()
        self._start_proxy_and_dns()
        self.wait_node_ready()
        self.timings["node ready"] = time.monotonic() - started

    def _save_state(self) -> None:
        listings = {str(p): _listing(p) for p in HOST_PATHS}
        state = {"sysctls": sysctls(), "host_paths": listings}
        (self.folder / "state.json").write_text(json.dumps(state, indent=1))

    def _network(self) -> None:
        network = ipaddress.ip_network(POD_CIDR)
        steps = [
            ("ip", "link", "add", BRIDGE, "type", "bridge"),
            ("ip", "addr", "add", f"{NODE_IP}/{network.prefixlen}", "dev", BRIDGE),
            ("ip", "link", "set", BRIDGE, "up"),
            # Service addresses that no rule rewrites stay on the bridge, never leave.
            ("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE),
            ("iptables", "-w", "-N", FORWARD_CHAIN),
            ("iptables", "-w", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN),
            # Pods talk to each other, to Services and to the node; nothing else.
            ("iptables", "-w", "-A", FORWARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"),
            ("iptables", "-w", "-A", FORWARD_CHAIN, "-o", BRIDGE, "!", "-i", BRIDGE, "-j", "DROP"),
        ]
        for step in steps:
            done = _run(*step)
            if done.returncode != 0:
                _fail(f"{' '.join(step)} failed: {done.stderr}")
        # Pod → ClusterIP → pod is routed through the node.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.folder / f"{name}.log"
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    def _start_apiserver(self) -> None:
        pki = self.pki
        serving = pki.issue(
            "apiserver",
            "/CN=kube-apiserver",
            [
                f"IP:{NODE_IP}", "IP:127.0.0.1", "IP:10.96.0.1", "DNS:kubernetes",
                "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ],
        )  # fmt: skip
        kubelet_client = pki.issue(
            "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
            client=True,
        )  # fmt: skip
        self.sa_key = self.folder / "sa.key"
        _run(self.openssl, "genrsa", "-out", str(self.sa_key), "2048", check=True)
        tokens = self.folder / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        self.apiserver_argv = [
            self.apiserver_bin,
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={NODE_IP}",
            f"--advertise-address={NODE_IP}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={serving[0]}",
            f"--tls-private-key-file={serving[1]}",
            f"--client-ca-file={pki.ca}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={self.url}",
            f"--service-account-key-file={self.sa_key}",
            f"--service-account-signing-key-file={self.sa_key}",
            f"--token-auth-file={tokens}",
            f"--kubelet-client-certificate={kubelet_client[0]}",
            f"--kubelet-client-key={kubelet_client[1]}",
            f"--kubelet-certificate-authority={pki.ca}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=1",
        ]
        self.ca = pki.ca
        self.start_apiserver()

    def start_apiserver(self) -> None:
        """Start (or restart, after :meth:`stop_apiserver`) kube-apiserver; wait for it."""
        self._start("kube-apiserver", self.apiserver_argv)
        self.apiserver = self.procs["kube-apiserver"]
        _wait_http(
            f"{self.url}/readyz", 90, "kube-apiserver", self.apiserver,
            self.folder / "kube-apiserver.log", self._ssl(), self.token,
        )  # fmt: skip

    def stop_apiserver(self) -> None:
        """An API-server outage, as a crash (SIGKILL): everything else keeps running. (A
        graceful stop also takes the server out of the ``kubernetes`` Service's endpoints,
        and pods then reach it again only 30-60+ s after it is back, once kube-proxy's
        watch has recovered.)"""
        proc = self.procs.pop("kube-apiserver")
        proc.kill()
        proc.wait(10)

    def _ssl(self) -> Any:
        import ssl

        return ssl.create_default_context(cafile=str(self.pki.ca))

    def _start_etcd(self) -> None:
        super()._start_etcd()
        assert self.etcd is not None
        self.procs["etcd"] = self.etcd

    def _secure_flags(self) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]

    def _start_controllers(self) -> None:
        self._start(
            "kube-controller-manager",
            [
                tool_binary("kube-controller-manager"),
                *self._secure_flags(),
                f"--service-account-private-key-file={self.sa_key}",
                f"--root-ca-file={self.pki.ca}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--use-service-account-credentials=false",
                # Garbage collection, namespaces, ServiceAccounts, Deployments, ReplicaSets
                # and EndpointSlices are what the tests need; node IPAM is not used (the
                # CNI's host-local range is the pod CIDR).
                "--allocate-node-cidrs=false",
                "--concurrent-gc-syncs=5",
            ],
        )
        self._start("kube-scheduler", [tool_binary("kube-scheduler"), *self._secure_flags()])

    def _start_containerd(self) -> None:
        base = self.folder / "containerd"
        cni = self.folder / "cni"
        (cni / "net.d").mkdir(parents=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "hookline",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [
                            [{"subnet": POD_CIDR, "rangeStart": "10.244.0.10", "gateway": NODE_IP}]
                        ],
                        # Service addresses are rewritten on the node: pods route there.
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(cni / "ipam"),
                    },
                }
            ],
        }
        (cni / "net.d" / "10-hookline.conflist").write_text(json.dumps(conflist, indent=1))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
[{cri}]
  sandbox_image = "localhost/pause:3.10"
  # CAP_SYS_RESOURCE is withheld on this machine: runc may not lower oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{base}/runc"
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}/net.d"
"""
        base.mkdir(parents=True)
        (base / "config.toml").write_text(config)
        self._start("containerd", [self.containerd_bin, f"--config={base / 'config.toml'}"])
        deadline = time.monotonic() + 30
        while not self.ctr("version", check=False).returncode == 0:
            if time.monotonic() > deadline or self.procs["containerd"].poll() is not None:
                _fail(f"containerd did not start:\n{tail(self.folder / 'containerd.log')}")
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = _run(self.ctr_bin, f"--address={self.sock}", "--namespace=k8s.io", *args)
        if check and done.returncode != 0:
            _fail(f"ctr {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done

    def import_images(self, archives: list[Path]) -> None:
        for archive in archives:
            self.ctr("images", "import", "--no-unpack=false", str(archive))

    def _start_kubelet(self) -> None:
        root = self.folder / "kubelet"
        root.mkdir()
        cert, key = self.pki.issue(
            "kubelet", f"/CN={NODE_NAME}", [f"IP:{NODE_IP}", f"DNS:{NODE_NAME}"]
        )
        self.kubelet_health = free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.kubelet_health,
            "tlsCertFile": str(cert),
            "tlsPrivateKeyFile": str(key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki.ca)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            # This machine: cgroup v1 only, no CAP_SYS_RESOURCE, swap allowed, no host
            # resolvers (nothing leaves the machine), a shared disk.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "oomScoreAdj": 0,
            "resolvConf": "",
            "clusterDNS": [NODE_IP],
            "clusterDomain": "cluster.local",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "podLogsDir": str(self.folder / "pod-logs"),
            "serializeImagePulls": False,
            "maxPods": 60,
            "syncFrequency": "10s",
        }
        path = self.folder / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        # kubelet's volumes are mounted in its own mount namespace; its root is a shared
        # mount so they reach containerd's (the host's) too.
        _run("mount", "--bind", str(root), str(root), check=True)
        _run("mount", "--make-shared", str(root), check=True)
        copies = self.folder / "sysctl"
        binds = []
        for name in KUBELET_SYSCTLS:
            copy = copies / name.replace("/", ".")
            copy.parent.mkdir(exist_ok=True)
            copy.write_text((Path("/proc/sys") / name).read_text())
            binds.append(f"mount --bind {copy} /proc/sys/{name}")
        argv = [
            tool_binary("kubelet"),
            f"--config={path}",
            f"--kubeconfig={self.kubeconfig}",
            f"--root-dir={root}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--v=1",
        ]
        script = " && ".join([*binds, "exec " + " ".join(argv)])
        self._start(
            "kubelet",
            ["unshare", "--mount", "--propagation", "unchanged", "--", "sh", "-c", script],
        )

    def _start_proxy_and_dns(self) -> None:
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            # 0: leave the host's conntrack table size and timeouts as they are.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False, "minSyncPeriod": "1s"},
        }
        path = self.folder / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(proxy))
        self._start("kube-proxy", [tool_binary("kube-proxy"), f"--config={path}", "--v=1"])
        corefile = self.folder / "Corefile"
        corefile.write_text(
            f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{free_port()}
    ready 127.0.0.1:{free_port()}
    cache 30
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig} test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
"""
        )
        self._start("coredns", [tool_binary("coredns"), "-conf", str(corefile)])

    def wait_node_ready(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = tail(self.folder / f"{name}.log")
                    _fail(f"{name} exited with {proc.returncode}:\n{log}")
            done = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if done.returncode == 0:
                conditions = json.loads(done.stdout)["status"].get("conditions", [])
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return
            time.sleep(0.5)
        _fail(f"node not Ready after {seconds} s:\n{tail(self.folder / 'kubelet.log')}")

    def stop(self) -> None:
        teardown(self.folder)
        for proc in self.procs.values():
            _stop(proc)


def main() -> int:
    """``python -m tests.node.cluster up|down|leftovers``: by hand, for debugging."""
    command = sys.argv[1] if len(sys.argv) > 1 else "down"
    if command == "down":
        teardown()
        left = leftovers()
        print("clean" if not left else f"left: {left}")
        return 1 if left else 0
    if command == "leftovers":
        print(leftovers() or "clean")
        return 0
    if command == "up":
        node = Node()
        node.start()
        images = json.loads((REPO / ".cache" / "images" / "images.json").read_text())
        node.import_images([Path(i["archive"]) for i in images.values()])
        print(f"KUBECONFIG={node.kubeconfig}  ({node.timings})")
        return 0
    print(main.__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
