"""The SSRF guard's pure parts: the address table, IP literals in URLs, and its settings.

Addresses are checked as values: nothing is resolved or connected here.
tests/test_outbound.py has the guard at work on real sockets and a DNS server.
"""

from __future__ import annotations

import ipaddress

import pytest
from yarl import URL

from hookline import config as config_mod
from hookline.config import Config
from hookline.errors import BlockedDestination, InvalidSpec
from hookline.local.stack import dev_config
from hookline.outbound import LOOPBACK, check_url_destination, is_blocked, literal_address

ONLY_127_0_0_1 = (ipaddress.ip_network("127.0.0.1/32"),)

# -- the address policy

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
