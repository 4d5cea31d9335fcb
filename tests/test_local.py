"""``hookline dev`` (hookline.local) run as a newcomer runs it, on the manifests of
examples/endpoints/: the demo endpoint, and the source ``shop`` with its two subscribers
— loaded into a real Redis, announced with their keys, and delivered to the demo sink
with the signatures checked."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hookline.config import Config
from hookline.models import key_hash
from hookline.store import RegistryCache, Store
from tests.peers import REPO, free_port

EXAMPLES = REPO / "examples" / "endpoints"


class Dev:
    """A ``hookline dev`` process and the lines it printed so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def until(self, pattern: str, seconds: float = 30) -> re.Match[str]:
        """The first line printed that matches ``pattern`` (waiting for it)."""
        assert self.proc.stdout is not None
        for line in self.lines:
            if found := re.search(pattern, line):
                return found
        try:
            async with asyncio.timeout(seconds):
                while raw := await self.proc.stdout.readline():
                    self.lines.append(raw.decode().rstrip("\n"))
                    if found := re.search(pattern, self.lines[-1]):
                        return found
        except TimeoutError:
            pass
        printed = "\n".join(self.lines)
        pytest.fail(f"hookline dev printed no line like {pattern!r}:\n{printed}", pytrace=False)


@pytest.fixture
async def dev(config: Config, tmp_path: Path) -> AsyncIterator[Dev]:
    """``hookline dev --endpoints DIR``: the examples, with the sink on a free port (the
    manifests' URLs follow it) and the test's Redis and prefix."""
    sink_port = free_port()
    folder = tmp_path / "endpoints"
    folder.mkdir()
    for path in EXAMPLES.glob("*.yaml"):
        text = path.read_text().replace("127.0.0.1:9000", f"127.0.0.1:{sink_port}")
        (folder / path.name).write_text(text)
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        HOOKLINE_REDIS_URL=config.redis_url,
        HOOKLINE_PREFIX=config.prefix,
        HOOKLINE_RECEIVER_HOST="127.0.0.1",
        HOOKLINE_RECEIVER_PORT=str(config.receiver_port),
        HOOKLINE_DISPATCHER_PORT="0",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hookline",
        "dev",
        "--endpoints",
        str(folder),
        "--sink-port",
        str(sink_port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    yield Dev(proc)
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_dev_loads_the_example_source_with_its_two_subscribers(
    dev: Dev, config: Config
) -> None:
    await dev.until(r"Send an event to a source")
    curl = (await dev.until(r"curl .*X-WH-Event-Type")).string
    # a type of the catalog that both subscribers take
    assert "-H 'X-WH-Endpoint-Key: dev-shop-key' -H 'X-WH-Event-Type: order.paid'" in curl
    assert """-d '{"type":"order.paid","id":42}""" in curl
    await dev.until(
        r"^  source default/shop \(order.created, order.paid, invoice.paid, invoice.voided\)"
        r"   key: dev-shop-key$"
    )
    await dev.until(r"^    -> default/billing takes invoice\.\*, order\.paid$")
    await dev.until(r"^    -> default/audit takes every type$")

    store = Store.connect(config)
    try:
        source = await store.registry.get_source("default/shop")
        assert source is not None
        assert source.key_hashes == (key_hash("dev-shop-key"),)
        assert source.event_types == (
            "order.created",
            "order.paid",
            "invoice.paid",
            "invoice.voided",
        )
        cache = RegistryCache(store.registry)
        await cache.reload()

        def takers(event_type: str) -> set[str]:
            return {ep.id for ep in cache.subscribers("default/shop", event_type)}

        assert takers("invoice.paid") == {"default/billing", "default/audit"}
        assert takers("order.paid") == {"default/billing", "default/audit"}
        assert takers("order.created") == {"default/audit"}
    finally:
        await store.aclose()


async def test_a_subscriber_keeps_its_own_key_and_the_sink_checks_its_signature(
    dev: Dev, config: Config
) -> None:
    key = (await dev.until(r"^  default/billing -> \S+   key: (\S+)$")).group(1)
    await dev.until(r"Send an event to a source")
    url = f"http://127.0.0.1:{config.receiver_port}/webhooks/send"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, headers={"X-WH-Endpoint-Key": key}, data=b'{"direct":1}') as resp,
    ):
        assert resp.status == 202, await resp.text()
        webhook_id = (await resp.json())["id"]
    line = (await dev.until(rf"^sink /hooks/billing id={webhook_id} ")).string
    assert "signature=valid" in line


async def test_the_printed_source_curl_fans_out_to_the_subscribers_its_filters_take(
    dev: Dev, config: Config
) -> None:
    await dev.until(r"Send an event to a source")
    url = f"http://127.0.0.1:{config.receiver_port}/webhooks/send"

    async def send(event_type: str) -> tuple[int, dict[str, object]]:
        headers = {"X-WH-Endpoint-Key": "dev-shop-key", "X-WH-Event-Type": event_type}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, headers=headers, data=b'{"id":42}') as resp,
        ):
            answer: dict[str, object] = await resp.json()
            return resp.status, answer

    status, paid = await send("invoice.paid")
    assert (status, paid["endpoints"]) == (202, 2)
    for path in ("/hooks/billing", "/hooks/audit"):
        line = (await dev.until(rf"^sink {path} id={paid['id']} ")).string
        assert "signature=valid" in line, line
    status, created = await send("order.created")
    assert (status, created["endpoints"]) == (202, 1)
    await dev.until(rf"^sink /hooks/audit id={created['id']} ")
    assert not [ln for ln in dev.lines if f"/hooks/billing id={created['id']}" in ln]
    status, refused = await send("refund.issued")
    assert status == 400 and refused["error"] == "unknown_event_type", refused
