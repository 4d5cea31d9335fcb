"""Outbound safety: the dispatcher connects only to public addresses (the SSRF guard).

Endpoint URLs are user input, so a URL may point at the cluster's own services,
the node's loopback or the cloud metadata server. This module decides which
addresses hookline may connect to (:func:`is_blocked`, an explicit table with a
CIDR allow list) and enforces that decision where the connection is made:

* :class:`GuardedResolver` resolves names itself and returns only permitted
  addresses, so the address checked is the address used — a DNS answer that
  changes between a check and the connection (DNS rebinding) never reaches a
  socket unchecked;
* :class:`GuardedConnector` (an aiohttp ``TCPConnector``) refuses non-https
  URLs when asked to, normalises IP literals the way the C library would read
  them (``2130706433``, ``0x7f.1`` and ``127.1`` all mean 127.0.0.1, and aiohttp
  passes literals past any resolver), checks every address just before its
  socket connects and the peer address of the connected socket after.

A refusal raises :class:`~hookline.errors.BlockedDestination`, which the
dispatcher turns into a permanent failure. ``hookline.runtime.client_session`` builds
the dispatcher's session on :func:`connector`. See ``docs/outbound.md``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from hookline.config import Config
from hookline.errors import BlockedDestination

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace
    from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
"""The allow list of the local stack, whose demo endpoint is on loopback."""


def _table(*rows: tuple[str, str]) -> tuple[tuple[Network, str], ...]:
    return tuple((ipaddress.ip_network(cidr), why) for cidr, why in rows)


# Refused IPv4 ranges; the first row that contains an address gives the reason.
_IPV4 = _table(
    ("0.0.0.0/8", "unspecified ('this network'; 0.0.0.0 reaches the local host)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT shared space (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated, RFC 7526)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)

# Refused IPv6 ranges, after the forms that embed an IPv4 address are unpacked.
_IPV6 = _table(
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("100:0:0:1::/64", "dummy prefix (RFC 9780)"),
    ("2001:2::/48", "benchmarking (RFC 5180)"),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("2001::/23", "IETF protocol assignments (RFC 2928)"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "SRv6 segment identifiers (RFC 9602)"),
    ("fc00::/7", "unique-local (RFC 4193)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated, RFC 3879)"),
    ("ff00::/8", "multicast"),
)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")

# Cloud metadata and platform endpoints. Most lie in ranges refused anyway, but
# an allow list opening a whole range (100.64.0.0/10 for pods, fd00::/8) must
# not open them too: only an allow-list entry naming the single address does.
METADATA: dict[IPAddress, str] = {
    ipaddress.ip_address(addr): why
    for addr, why in (
        ("169.254.169.254", "AWS, GCP, Azure, OCI, OpenStack, DigitalOcean"),
        ("169.254.170.2", "AWS ECS task credentials"),
        ("169.254.170.23", "EKS Pod Identity"),
        ("169.254.0.23", "Tencent Cloud"),
        ("100.100.100.200", "Alibaba Cloud"),
        ("192.0.0.192", "Oracle Cloud, legacy"),
        ("168.63.129.16", "Azure WireServer"),  # a public address: is_global says yes
        ("fd00:ec2::254", "AWS, IPv6"),
        ("fd00:ec2::23", "EKS Pod Identity, IPv6"),
        ("fd20:ce::254", "GCP, IPv6"),
    )
}

_EMBEDDED = (
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), "IPv4-translated"),  # SIIT, RFC 2765
    (ipaddress.IPv6Network("64:ff9b::/96"), "NAT64"),  # RFC 6052 well-known prefix
    (ipaddress.IPv6Network("::/96"), "IPv4-compatible"),  # deprecated, RFC 4291
)


def parse_address(text: str) -> IPAddress:
    """An address as resolvers and sockets write it (IPv6 may carry ``%zone``)."""
    return ipaddress.ip_address(text.strip("[]"))


def _in(ip: IPAddress, allow: Iterable[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in allow)


def _metadata(ip: IPAddress, allow: Iterable[Network]) -> str | None:
    if ip not in METADATA:
        return None
    if any(net.num_addresses == 1 and ip in net for net in allow):
        return None
    return f"cloud metadata endpoint ({METADATA[ip]})"


def _lookup(ip: IPAddress, table: tuple[tuple[Network, str], ...]) -> str | None:
    for net, why in table:
        if ip.version == net.version and ip in net:
            return why
    return None


def _ipv4_reason(ip: ipaddress.IPv4Address, allow: Iterable[Network]) -> str | None:
    if meta := _metadata(ip, allow):
        return meta
    if _in(ip, allow):
        return None
    return _lookup(ip, _IPV4)


def _ipv6_reason(ip: ipaddress.IPv6Address, allow: Iterable[Network]) -> str | None:
    ip = ipaddress.IPv6Address(ip.packed)  # the zone (%eth0) plays no part
    if meta := _metadata(ip, allow):
        return meta
    if _in(ip, allow):
        return None
    # :: and ::1 first: both lie in the IPv4-compatible range below.
    if ip.is_unspecified:
        return "unspecified (reaches the local host)"
    if ip.is_loopback:
        return "loopback"
    # Forms that carry an IPv4 address: the packet ends up there, so that address decides.
    if (mapped := ip.ipv4_mapped) is not None:
        # A dual-stack socket connects straight to the IPv4 address: the allow list
        # applies to it as well.
        why = _ipv4_reason(mapped, allow)
        return f"IPv4-mapped {mapped}: {why}" if why else None
    for net, form in _EMBEDDED:
        if ip in net:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            if why := _ipv4_reason(inner, ()):
                return f"{form} {inner}: {why}"
            if form == "NAT64":
                return None
            break  # the deprecated forms are reserved space: refused below
    if (six := ip.sixtofour) is not None:
        why = _ipv4_reason(six, ())
        return f"6to4 {six}: {why}" if why else None
    if (teredo := ip.teredo) is not None:
        server, client = teredo
        if why := _ipv4_reason(server, ()):
            return f"Teredo server {server}: {why}"
        if why := _ipv4_reason(client, ()):
            return f"Teredo client {client}: {why}"
        return None
    if why := _lookup(ip, _IPV6):
        return why
    if ip not in _GLOBAL_UNICAST:
        return "reserved (outside global unicast 2000::/3)"
    return None


def is_blocked(ip: str | IPAddress, allow: Iterable[Network] = ()) -> str | None:
    """Why hookline must not connect to ``ip``, or None when it may.

    ``allow`` (``HOOKLINE_ALLOW_CIDRS``) opens ranges that are refused otherwise;
    a cloud metadata address opens only when an entry names that single address.
    Raises ValueError when ``ip`` is not an IP address.
    """
    addr = parse_address(ip) if isinstance(ip, str) else ip
    allow = tuple(allow)
    if isinstance(addr, ipaddress.IPv4Address):
        return _ipv4_reason(addr, allow)
    return _ipv6_reason(addr, allow)


# -- IP literals in URLs

# What inet_aton(3) reads as an IPv4 address: one to four parts, each decimal,
# octal (leading 0) or hexadecimal (0x). getaddrinfo(3) accepts these too.
_NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.I)


def literal_address(host: str) -> tuple[IPAddress, bool] | None:
    """The address a URL host names without DNS, and whether it is written canonically.

    ``127.0.0.1`` and ``[::1]`` are canonical; ``2130706433``, ``0x7f.1``,
    ``0177.0.0.1``, ``127.1`` and ``127.0.0.1.`` are what the C resolver makes of
    them. None for names.
    """
    try:
        return parse_address(host), True
    except ValueError:
        pass
    if not _NUMERIC_HOST.fullmatch(host):
        return None
    try:
        packed = socket.inet_aton(host.removesuffix("."))
    except OSError:
        return None  # out of range (e.g. 256.1.1.1): getaddrinfo would not read it either
    return ipaddress.IPv4Address(packed), False


def check_url_destination(
    url: URL, allow: Iterable[Network] = (), https_only: bool = False
) -> None:
    """Refuse, before any connection, what the URL alone shows to be refused."""
    if https_only and url.scheme != "https":
        raise BlockedDestination(f"{url.scheme}:// is refused (HOOKLINE_HTTPS_ONLY is on)")
    host = url.host
    if host is None:
        raise BlockedDestination(f"{url} has no host")
    found = literal_address(host)
    if found is None:
        return
    addr, canonical = found
    if why := is_blocked(addr, allow):
        shown = host if canonical else f"{host} (means {addr})"
        raise BlockedDestination(f"{shown}: {why}")
    if not canonical:
        # Parsers disagree on these forms (the classic SSRF confusion): refuse them all.
        raise BlockedDestination(f"{host} is a non-canonical IPv4 literal; write it as {addr}")


# -- enforcement at connection time


class GuardedResolver(AbstractResolver):
    """Resolves names with ``lookup`` and returns only the addresses the policy permits.

    ``lookup`` defaults to aiohttp's ``ThreadedResolver`` (the C library's
    getaddrinfo, so /etc/hosts and the cluster's search domains work as for any
    pod). When every address of a name is refused, the lookup fails with
    :class:`BlockedDestination`; when some are, only the others are returned.
    """

    def __init__(
        self, allow: Iterable[Network] = (), lookup: AbstractResolver | None = None
    ) -> None:
        self.allow = tuple(allow)
        self.lookup = lookup if lookup is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.lookup.resolve(host, port, family)
        permitted = [r for r in found if is_blocked(r["host"], self.allow) is None]
        if found and not permitted:
            first = found[0]["host"]
            raise BlockedDestination(f"{host} resolves to {first}: {is_blocked(first, self.allow)}")
        return permitted

    async def close(self) -> None:
        await self.lookup.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that connects only to addresses :func:`is_blocked` permits.

    Three checks, each closing a gap the others leave: the URL (scheme and IP
    literals, which aiohttp never hands to a resolver), every address just before
    its socket connects (whatever produced it: literal, resolver, DNS cache), and
    the peer of the connected socket. The resolver is a :class:`GuardedResolver`.
    """

    def __init__(
        self,
        *,
        allow: Iterable[Network] = (),
        https_only: bool = False,
        lookup: AbstractResolver | None = None,
        **kwargs: Any,
    ) -> None:
        # Both hooks are aiohttp internals: fail closed if a release renames them.
        for hook in ("_create_connection", "_wrap_create_connection"):
            if not callable(getattr(aiohttp.TCPConnector, hook, None)):
                raise RuntimeError(f"aiohttp.TCPConnector.{hook} is gone: the SSRF guard needs it")
        self.allow = tuple(allow)
        self.https_only = https_only
        self.guarded_resolver = GuardedResolver(self.allow, lookup)
        super().__init__(resolver=self.guarded_resolver, **kwargs)

    async def close(self, **kwargs: Any) -> None:
        await super().close(**kwargs)
        await self.guarded_resolver.close()  # aiohttp closes only resolvers it made itself

    async def _create_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> ResponseHandler:
        check_url_destination(req.url, self.allow, self.https_only)
        return await super()._create_connection(req, traces, timeout)

    async def _wrap_create_connection(
        self, *args: Any, **kwargs: Any
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        infos = kwargs["addr_infos"]
        permitted = [i for i in infos if is_blocked(i[4][0], self.allow) is None]
        if not permitted:
            address = infos[0][4][0]
            raise BlockedDestination(f"{address}: {is_blocked(address, self.allow)}")
        kwargs["addr_infos"] = permitted
        transport, protocol = await super()._wrap_create_connection(*args, **kwargs)
        check_peer(transport, self.allow)
        return transport, protocol


def check_peer(transport: asyncio.BaseTransport, allow: Iterable[Network] = ()) -> None:
    """Close ``transport`` and refuse if the peer it is connected to is not permitted."""
    peer = transport.get_extra_info("peername")
    try:
        why = is_blocked(str(peer[0]), allow) if peer else "peer address unknown"
    except ValueError:
        why = f"peer address {peer[0]!r} is not an IP address"
    if why:
        transport.close()
        raise BlockedDestination(f"connected peer {peer[0] if peer else '?'}: {why}")


def connector(
    config: Config, lookup: AbstractResolver | None = None, **kwargs: Any
) -> GuardedConnector:
    """The dispatcher's connector: guarded with ``allow_cidrs`` and ``https_only``."""
    return GuardedConnector(
        allow=config.allow_cidrs, https_only=config.https_only, lookup=lookup, **kwargs
    )
