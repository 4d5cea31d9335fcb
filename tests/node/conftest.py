"""Fixtures of the node tier: one real single-node cluster for the tier, with the images
``make image`` built imported into its containerd.

The tier needs root (it makes a bridge, iptables chains, mounts and cgroups) and the
system packages ``make system-deps`` installs; without them it fails with the reason,
never skips. After the session the host must be as it was: the fixture fails the run if
anything the node made is left, or if a watched kernel setting changed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.cluster import NODE_DIR, Node, leftovers, sysctls, teardown
from tests.peers import REPO

IMAGES = REPO / ".cache" / "images" / "images.json"


def images() -> dict[str, dict[str, str]]:
    if not IMAGES.exists():
        pytest.fail(f"{IMAGES} is missing: run `make image` (tools/image.sh)", pytrace=False)
    found: dict[str, dict[str, str]] = json.loads(IMAGES.read_text())
    missing = {"hookline", "redis", "pause", "jaeger"} - set(found)
    if missing:
        pytest.fail(f"images {sorted(missing)} are not in {IMAGES}: run `make image`")
    for name, image in found.items():
        if not Path(image["archive"]).exists():
            pytest.fail(f"image {name}: {image['archive']} is missing: run `make image`")
    return found


@pytest.fixture(scope="package")
def node() -> Iterator[Node]:
    """The cluster, for the tests of this folder only: it goes before the other tiers run."""
    if os.geteuid() != 0:
        pytest.fail("the node tier runs kubelet and containerd: run it as root", pytrace=False)
    built = images()
    teardown(NODE_DIR)  # whatever a killed run left
    before = sysctls()
    cluster = Node(NODE_DIR)
    try:
        cluster.start()
        started = time.monotonic()
        cluster.import_images([Path(i["archive"]) for i in built.values()])
        cluster.timings["images imported"] = time.monotonic() - started
        print(f"\nnode tier: {cluster.timings}")
        yield cluster
    finally:
        # HOOKLINE_NODE_KEEP=1 keeps the cluster for a look by hand (KUBECONFIG below);
        # `python -m tests.node.cluster down` removes it then.
        keep = bool(os.environ.get("HOOKLINE_NODE_KEEP"))
        if keep:
            print(f"\nnode kept: KUBECONFIG={cluster.kubeconfig}")
        else:
            cluster.stop()
    if keep:
        return
    left, after = leftovers(NODE_DIR), sysctls()
    changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
    if left or changed:
        pytest.fail(f"the node tier left the host changed: {left} {changed}", pytrace=False)


@pytest.fixture(scope="session")
def image_refs() -> dict[str, str]:
    return {name: image["ref"] for name, image in images().items()}
