"""The SSRF guard at work: names, redirects, sockets, and the dispatcher's verdict.

Every connection these tests make goes to 127.0.0.0/8. Addresses outside it are
refused before any socket exists; names resolve through a real DNS server on
loopback that the test controls, queried by aiohttp's own ``AsyncResolver``. The
address table, IP literals and the settings, pure functions, are tested in
tests/unit/test_outbound.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any, cast

import aiohttp
import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

from hookline.config import Config
from hookline.errors import BlockedDestination
from hookline.outbound import (
    LOOPBACK,
    GuardedConnector,
    GuardedResolver,
    Network,
    check_peer,
)
from hookline.runtime import client_session
from tests.peers import Endpoint, eventually, redirect
from tests.stack import Stack

ONLY_127_0_0_1 = (ipaddress.ip_network("127.0.0.1/32"),)

# -- a DNS server the test controls


class DnsServer(asyncio.DatagramProtocol):
    """A real DNS server on a loopback UDP port answering from ``records`` (name → addresses);
    NXDOMAIN for other names. Tests change ``records`` as they go."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = DNSRecord.parse(data)
        reply = query.reply()
        name = str(query.q.qname).rstrip(".").lower()
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
        for address in self.records.get(name, []):
            if query.q.qtype == QTYPE.A and ":" not in address:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=0))
            if query.q.qtype == QTYPE.AAAA and ":" in address:
                reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=0))
        assert self.transport is not None
        self.transport.sendto(reply.pack(), addr)

    def resolver(self) -> aiohttp.AsyncResolver:
        """aiohttp's c-ares resolver, asking this server only."""
        return aiohttp.AsyncResolver(nameservers=[f"127.0.0.1:{self.port}"])


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(DnsServer, local_addr=("127.0.0.1", 0))
    yield server
    transport.close()


def guarded_session(
    allow: Iterable[Network] = (),
    lookup: aiohttp.abc.AbstractResolver | None = None,
    https_only: bool = False,
) -> aiohttp.ClientSession:
    # No DNS cache, no keep-alive: every request resolves and connects anew.
    connector = GuardedConnector(
        allow=allow, https_only=https_only, lookup=lookup, use_dns_cache=False, force_close=True
    )
    return aiohttp.ClientSession(connector=connector)


async def test_a_name_resolving_to_private_addresses_is_refused(dns: DnsServer) -> None:
    dns.records["internal.hookline.test"] = ["10.0.0.7", "fd00::7"]
    dns.records["metadata.hookline.test"] = ["169.254.169.254"]
    resolver = GuardedResolver((), dns.resolver())
    try:
        with pytest.raises(BlockedDestination, match=r"internal\.hookline\.test resolves to"):
            await resolver.resolve("internal.hookline.test", 443, family=0)
        with pytest.raises(
            BlockedDestination, match=r"resolves to 169\.254\.169\.254: cloud metadata"
        ):
            await resolver.resolve("metadata.hookline.test", 80, family=0)
        # the allow list opens the cluster's range, and only that
        opened = GuardedResolver((ipaddress.ip_network("10.0.0.0/8"),), dns.resolver())
        try:
            found = await opened.resolve("internal.hookline.test", 443, family=0)
        finally:
            await opened.close()
        assert [r["host"] for r in found] == ["10.0.0.7"]
    finally:
        await resolver.close()


async def test_localhost_is_refused_by_the_dispatchers_session(endpoint: Endpoint) -> None:
    url = endpoint.url("/hook").replace("127.0.0.1", "localhost")
    async with client_session(Config(allow_cidrs=())) as session:  # the system resolver
        with pytest.raises(BlockedDestination, match=r"localhost resolves to .*loopback"):
            await session.post(url, data=b"{}")
    assert endpoint.received == []


async def test_a_name_is_checked_at_every_connection_so_rebinding_is_refused(
    dns: DnsServer, endpoint: Endpoint
) -> None:
    url = endpoint.url("/hook").replace("127.0.0.1", "rebind.hookline.test")
    # 127.0.0.2 stands in for a private address: refused, yet still on loopback.
    dns.records["rebind.hookline.test"] = ["127.0.0.1", "127.0.0.2"]
    async with guarded_session(ONLY_127_0_0_1, dns.resolver()) as session:
        async with session.post(url, data=b"first") as resp:
            assert resp.status == 200  # only the permitted address was used
        dns.records["rebind.hookline.test"] = ["127.0.0.2"]  # the name rebinds
        with pytest.raises(BlockedDestination, match=r"resolves to 127\.0\.0\.2: loopback"):
            await session.post(url, data=b"second")
    assert [r.body for r in endpoint.received] == [b"first"]


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1", "127.1"],
)
async def test_loopback_in_any_spelling_is_refused_before_connecting(
    host: str, endpoint: Endpoint
) -> None:
    url = endpoint.url("/hook").replace("127.0.0.1", host)
    async with guarded_session() as session:
        with pytest.raises(BlockedDestination):
            await session.post(url, data=b"{}")
        # the same endpoint, allowed, answers: the refusal above is the guard's
        async with guarded_session(LOOPBACK) as allowed:
            async with allowed.post(endpoint.url("/hook"), data=b"{}") as resp:
                assert resp.status == 200
    assert len(endpoint.received) == 1


async def test_https_only_refuses_an_http_endpoint(endpoint: Endpoint) -> None:
    async with guarded_session(LOOPBACK, https_only=True) as session:
        with pytest.raises(BlockedDestination, match="HOOKLINE_HTTPS_ONLY"):
            await session.post(endpoint.url("/hook"), data=b"{}")
    assert endpoint.received == []


async def test_a_redirect_to_a_refused_address_is_refused_even_if_followed(
    endpoint: Endpoint,
) -> None:
    to_private = endpoint.on("/to-private", redirect(f"http://127.0.0.2:{endpoint.port}/x"))
    async with guarded_session(ONLY_127_0_0_1) as session:
        with pytest.raises(BlockedDestination, match=r"127\.0\.0\.2: loopback"):
            await session.post(to_private, data=b"{}", allow_redirects=True)
    assert [r.path for r in endpoint.received] == ["/to-private"]


class WithoutUrlCheck(GuardedConnector):
    """The guard with its first layer (the URL check) taken away."""

    async def _create_connection(self, *args: Any) -> Any:
        return await aiohttp.TCPConnector._create_connection(self, *args)


async def test_every_address_is_checked_just_before_its_socket_connects(
    endpoint: Endpoint,
) -> None:
    connector = WithoutUrlCheck(allow=(), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in (endpoint.url("/hook"), endpoint.url("/hook").replace("127.0.0.1", "[::1]")):
            with pytest.raises(BlockedDestination, match="loopback"):
                await session.post(url, data=b"{}")
    assert endpoint.received == []


async def test_the_peer_of_a_connected_socket_is_checked(endpoint: Endpoint) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
    check_peer(writer.transport, LOOPBACK)
    assert not writer.transport.is_closing()
    with pytest.raises(BlockedDestination, match=r"connected peer 127\.0\.0\.1: loopback"):
        check_peer(writer.transport, ())
    assert writer.transport.is_closing()
    await writer.wait_closed()


# -- the dispatcher's verdict


async def test_a_blocked_endpoint_is_dead_lettered_after_one_attempt_and_never_reached(
    config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(replace(config, allow_cidrs=())).start()
    try:
        ep, key = await stack.add_endpoint(endpoint.url("/"), retry={"attempts": 15})
        status, body = await stack.send(key)
        assert status == 202

        async def dead() -> bool:
            return len(await stack.store.dead_letters.find()) == 1

        await eventually(dead, 10, "the dead letter")
        (letter,) = await stack.store.dead_letters.find()
        assert letter.webhook.id == body["id"]
        assert letter.reason == "blocked destination: 127.0.0.1: loopback"
        assert letter.webhook.attempt == 1
        assert (await stack.store.figures.stats(ep.id))["dead"] == "1"
        assert (await stack.store.figures.backlog("default"))["retry_scheduled"] == 0
        assert endpoint.received == []
    finally:
        await stack.stop()


async def test_a_redirect_to_the_metadata_address_is_not_followed(
    config: Config, endpoint: Endpoint
) -> None:
    stack = await Stack(replace(config, allow_cidrs=ONLY_127_0_0_1)).start()
    try:
        url = endpoint.on("/public", redirect("http://169.254.169.254/latest/meta-data/"))
        _, key = await stack.add_endpoint(url, retry={"attempts": 1})
        await stack.send(key)

        async def dead() -> bool:
            return len(await stack.store.dead_letters.find()) == 1

        await eventually(dead, 10, "the dead letter")
        (letter,) = await stack.store.dead_letters.find()
        assert "redirect (302) not followed" in letter.reason
        assert [r.path for r in endpoint.received] == ["/public"]
    finally:
        await stack.stop()
