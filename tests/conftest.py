from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hookline.config import Config
from tests.peers import Endpoint, GcsServer, RedisServer
from tests.stack import Stack, stack_config


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say it when the browser tier is left out, as it is by default (pyproject's addopts)."""
    if config.getoption("markexpr", "").strip() != "not ui":
        return None
    return (
        "browser tier (tests/browser, marker ui) not in this run: it needs a built Jaeger UI; "
        "make test-ui HOOKLINE_JAEGER_UI=... runs it (README, tools/README.md)"
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop or restart it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def config(redis_server: RedisServer, tmp_path: Path) -> Config:
    return stack_config(redis_server.url, f"t{uuid.uuid4().hex[:10]}", str(tmp_path / "bodies"))


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    server = Endpoint()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def stack(config: Config) -> AsyncIterator[Stack]:
    s = await Stack(config).start()
    yield s
    await s.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """One GCS emulator for the tests that do not stop it; they keep apart by bucket."""
    server = GcsServer(tmp_path_factory.mktemp("gcs") / "data")
    server.start()
    yield server
    server.stop()
