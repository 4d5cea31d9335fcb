"""The SSRF guard: the address table, IP literals, names, redirects, and the dispatcher's verdict.

Every connection these tests make goes to 127.0.0.0/8. Addresses outside it are
checked as values (the policy is a pure function) or refused before any socket
exists; names resolve through a real DNS server on loopback that the test
controls, queried by aiohttp's own ``AsyncResolver``.
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
from yarl import URL

from hookline import config as config_mod
from hookline.cli import client_session, dev_config
from hookline.config import Config
from hookline.errors import BlockedDestination, InvalidSpec
from hookline.outbound import (
    LOOPBACK,
    GuardedConnector,
    GuardedResolver,
    Network,
    check_peer,
    check_url_destination,
    is_blocked,
    literal_address,
)
from tests.peers import Endpoint, eventually, redirect
from tests.stack import Stack

ONLY_127_0_0_1 = (ipaddress.ip_network("127.0.0.1/32"),)

# -- the address policy (pure: nothing is connected)

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.0.1", "private"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),  # public space: is_global alone lets it through
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.1", "documentation"),
    ("203.0.113.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("192.88.99.1", "6to4 relay"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::", "unspecified"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fd00:ec2::254", "cloud metadata"),
    ("fd20:ce::254", "cloud metadata"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "IETF protocol assignments"),
    ("100::1", "discard-only"),
    ("5f00::1", "SRv6"),
    ("4000::1", "reserved"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    # IPv6 forms that carry an IPv4 address: the IPv4 address decides
    ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1: loopback"),
    ("::ffff:7f00:1", "IPv4-mapped 127.0.0.1: loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped 169.254.169.254: cloud metadata"),
    ("::ffff:10.1.2.3", "IPv4-mapped 10.1.2.3: private"),
    ("::127.0.0.1", "IPv4-compatible 127.0.0.1: loopback"),
    ("::8.8.8.8", "reserved"),  # deprecated form: refused even with a public address
    ("::ffff:0:127.0.0.1", "IPv4-translated 127.0.0.1: loopback"),
    ("64:ff9b::7f00:1", "NAT64 127.0.0.1: loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 169.254.169.254: cloud metadata"),
    ("64:ff9b::c0a8:1", "NAT64 192.168.0.1: private"),
    ("2002:7f00:1::1", "6to4 127.0.0.1: loopback"),
    ("2002:a00:1::1", "6to4 10.0.0.1: private"),
    ("2002:a9fe:a9fe::1", "6to4 169.254.169.254: cloud metadata"),
    ("2001:0:7f00:1::1", "Teredo server 127.0.0.1: loopback"),
    # Teredo stores the client address inverted: ~0a000001 = f5ff:fffe
    ("2001:0:808:808:0:0:f5ff:fffe", "Teredo client 10.0.0.1: private"),
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_non_public_addresses_are_refused_with_the_reason(address: str, why: str) -> None:
    reason = is_blocked(address)
    assert reason is not None and why in reason, f"{address}: {reason!r}"


PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.128.0.1",  # just past CGNAT
    "172.32.0.1",  # just past 172.16/12
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert ipaddress.ip_address(address).is_global
    assert is_blocked(address) is None


@pytest.mark.parametrize(
    "address",
    ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "2001:0:808:808::f7f7:f7f7"],
)
def test_ipv6_forms_of_public_ipv4_addresses_pass(address: str) -> None:
    assert is_blocked(address) is None


def test_allow_list_opens_ranges_but_metadata_only_when_named_exactly() -> None:
    pods = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("100.64.0.0/10"))
    assert is_blocked("10.1.2.3", pods) is None
    assert is_blocked("100.64.0.1", pods) is None
    assert is_blocked("192.168.0.1", pods) == "private (RFC 1918)"
    # 100.100.100.200 lies in 100.64.0.0/10, yet stays refused
    assert "cloud metadata" in (is_blocked("100.100.100.200", pods) or "")
    link_local = (ipaddress.ip_network("169.254.0.0/16"),)
    assert "cloud metadata" in (is_blocked("169.254.169.254", link_local) or "")
    named = (ipaddress.ip_network("169.254.169.254/32"),)
    assert is_blocked("169.254.169.254", named) is None
    # the loopback allow list of the local stack covers the IPv4-mapped form too
    assert is_blocked("::ffff:127.0.0.1", LOOPBACK) is None
    assert is_blocked("::1", LOOPBACK) is None
    assert is_blocked("::ffff:10.0.0.1", LOOPBACK) is not None


def test_an_allow_list_of_one_address_opens_nothing_else() -> None:
    assert is_blocked("127.0.0.1", ONLY_127_0_0_1) is None
    assert is_blocked("127.0.0.2", ONLY_127_0_0_1) == "loopback"
    assert is_blocked("::1", ONLY_127_0_0_1) == "loopback"


# -- IP literals in URLs (aiohttp never hands them to a resolver)

NON_CANONICAL_LOOPBACK = ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x7f000001", "127.0.0.1."]


@pytest.mark.parametrize("host", NON_CANONICAL_LOOPBACK)
def test_numeric_host_forms_are_read_as_the_c_library_reads_them(host: str) -> None:
    assert literal_address(host) == (ipaddress.IPv4Address("127.0.0.1"), False)
    with pytest.raises(BlockedDestination, match=r"means 127\.0\.0\.1\): loopback"):
        check_url_destination(URL(f"http://{host}:8080/hook"))


def test_non_canonical_literals_are_refused_even_when_their_address_is_allowed() -> None:
    with pytest.raises(BlockedDestination, match="non-canonical IPv4 literal; write it as"):
        check_url_destination(URL("http://0x7f.1:8080/"), LOOPBACK)
    with pytest.raises(BlockedDestination, match=r"write it as 8\.8\.8\.8"):
        check_url_destination(URL("http://134744072/"))
    check_url_destination(URL("http://127.0.0.1:8080/"), LOOPBACK)  # the canonical form is fine


def test_names_are_left_to_the_resolver() -> None:
    assert literal_address("localhost") is None
    assert literal_address("hooks.example.com") is None
    assert literal_address("256.1.1.1") is None  # getaddrinfo does not read it either
    check_url_destination(URL("https://hooks.example.com/in"))


def test_https_only_refuses_plain_http() -> None:
    with pytest.raises(BlockedDestination, match="HOOKLINE_HTTPS_ONLY"):
        check_url_destination(URL("http://hooks.example.com/"), https_only=True)
    check_url_destination(URL("https://hooks.example.com/"), https_only=True)


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
            return len(await stack.queue.dead_letters()) == 1

        await eventually(dead, 10, "the dead letter")
        (letter,) = await stack.queue.dead_letters()
        assert letter.webhook.id == body["id"]
        assert letter.reason == "blocked destination: 127.0.0.1: loopback"
        assert letter.webhook.attempt == 1
        assert (await stack.queue.stats(ep.id))["dead"] == "1"
        assert (await stack.queue.backlog("default"))["retry_scheduled"] == 0
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
            return len(await stack.queue.dead_letters()) == 1

        await eventually(dead, 10, "the dead letter")
        (letter,) = await stack.queue.dead_letters()
        assert "redirect (302) not followed" in letter.reason
        assert [r.path for r in endpoint.received] == ["/public"]
    finally:
        await stack.stop()


# -- settings


def test_https_only_and_the_allow_list_are_read_from_the_environment() -> None:
    config = config_mod.load(
        {"HOOKLINE_HTTPS_ONLY": "true", "HOOKLINE_ALLOW_CIDRS": "10.0.0.0/8, fd00::/8"}
    )
    assert config.https_only is True
    assert config.allow_cidrs == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert config_mod.load({}).https_only is False
    with pytest.raises(InvalidSpec, match="HOOKLINE_HTTPS_ONLY"):
        config_mod.load({"HOOKLINE_HTTPS_ONLY": "maybe"})
    with pytest.raises(InvalidSpec, match="HOOKLINE_ALLOW_CIDRS"):
        config_mod.load({"HOOKLINE_ALLOW_CIDRS": "10.0.0.1/8"})


def test_the_local_stack_allows_loopback_unless_told_otherwise() -> None:
    assert dev_config(Config()).allow_cidrs == LOOPBACK
    mine = (ipaddress.ip_network("10.0.0.0/8"),)
    assert dev_config(Config(allow_cidrs=mine)).allow_cidrs == mine
