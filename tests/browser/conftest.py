"""The browser tier (``make test-ui``): what a person sees in the Jaeger UI, in Debian's
headless Chromium driven by Playwright.

It needs a built Jaeger UI, which no package registry this project uses serves and
``make tools`` therefore cannot build (tools/README.md, "The Jaeger UI"):
``HOOKLINE_JAEGER_UI`` names it. Without it, or with a folder that is not one, every
test here fails with the reason and the fix; none is skipped. That is also why this
tier is not part of ``make test``: its tests carry the ``ui`` marker, which the
default run deselects (``pytest -m ui tests/browser`` runs them), and the report
header of every run says so.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from hookline.config import Config
from tests.peers import RedisServer
from tests.stack import Stack, stack_config
from tests.tracing.conftest import traced_stack
from tests.tracing.jaeger import JaegerFailed, JaegerServer, ui_assets

FIX = (
    "build jaeger-ui v1.76.0 as tools/README.md ('The Jaeger UI') describes, then "
    "`make test-ui HOOKLINE_JAEGER_UI=/path/to/jaeger-ui/packages/jaeger-ui/build`"
)

# As root in a container: no sandbox; nothing in the background reaching the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def jaeger_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerServer]:
    """The tracing tier's Jaeger, serving the UI that ``HOOKLINE_JAEGER_UI`` names."""
    try:
        server = JaegerServer(tmp_path_factory.mktemp("jaeger-ui"), ui=ui_assets(required=True))
        server.start()
    except JaegerFailed as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        pytest.fail(f"{problem}\nTo run the browser tier: {FIX}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def config(redis_server: RedisServer, tmp_path: Path) -> Config:
    """As in the other tiers, but with hookline's default key prefix, so that the page
    shows the names a user's Jaeger shows (``hookline:stream:default``). The tier's
    one Redis has no other user; a test that needs a clean registry must clear it."""
    return stack_config(redis_server.url, "hookline", str(tmp_path / "bodies"))


@pytest.fixture
async def traced(config: Config, jaeger_ui: JaegerServer) -> AsyncIterator[Stack]:
    """A stack whose receiver (OTLP/HTTP) and dispatcher (OTLP/gRPC) trace into it."""
    async with traced_stack(config, jaeger_ui) as stack:
        yield stack


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium (``HOOKLINE_CHROMIUM`` names another), headless, with a fresh
    profile of its own (Playwright makes one per launch)."""
    exe = os.environ.get("HOOKLINE_CHROMIUM") or shutil.which("chromium")
    if not exe:
        pytest.fail(
            "chromium is not installed: `make test-ui` installs it (apt-get install chromium)",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = await context.new_page()
    yield opened
    await context.close()
