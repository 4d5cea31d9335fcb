"""The unit tier: hookline's pure code, with no peer at all (``make test-fast``).

The retry policy, the scaler's decision, the SSRF guard's address table, the OTLP
encoder, the operator's status and Secret handling, models, signing and settings:
each module's tests are named after it, as in ``tests/``. Nothing here starts a
process or makes a connection, so the tier runs in seconds; tests that need Redis,
an HTTP peer or a Go-built binary belong in ``tests/`` or a tier of their own.

This conftest keeps it so, loudly: the fixtures of ``tests/conftest.py`` (each a real
peer) fail here, a test module that imports from ``tests`` outside ``tests/unit``
(``tests.peers``, ``tests.stack``...) stops the run at collection, and a connection
over IP fails the test that made it.
"""

from __future__ import annotations

import ast
import socket
from pathlib import Path
from typing import Any

import pytest

# The fixtures of tests/conftest.py; every one of them starts or needs a real peer.
PEER_FIXTURES = frozenset({"redis_server", "own_redis", "config", "endpoint", "stack"})


def _outside_imports(path: Path) -> list[str]:
    """The modules of ``tests`` outside ``tests.unit`` that the file at ``path`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["tests" if node.level > 1 else node.module or ""]
        else:
            continue
        found += [
            n for n in names if n.split(".")[0] == "tests" and n.split(".")[:2] != ["tests", "unit"]
        ]
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for path in {Path(str(item.path)) for item in items if item.path.is_relative_to(here)}:
        if outside := _outside_imports(path):
            raise pytest.UsageError(
                f"{path} imports {', '.join(outside)}: the unit tier imports nothing from "
                "tests outside tests/unit (peers and stacks belong to the slower tiers)"
            )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    used = PEER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if used:
        pytest.fail(
            f"{item.nodeid} asks for {', '.join(sorted(used))}: the unit tier has no peers; "
            "a test that needs one belongs in tests/",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that connects a socket over IP (loopback included)."""
    real = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex")}

    def refuse(name: str) -> Any:
        def connect(sock: socket.socket, address: Any) -> Any:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.close()  # the caller never gets to: Failed is no OSError
                pytest.fail(f"the unit tier makes no connections: {name} to {address!r}")
            return real[name](sock, address)

        return connect

    for name in real:
        monkeypatch.setattr(socket.socket, name, refuse(name))
