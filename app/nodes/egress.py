"""The SSRF guard of outgoing HTTP calls: which addresses are not public, the
``allow_hosts`` policy, and vetting a URL's target before every request and redirect.

A target is refused when *any* address its host resolves to is not public: private,
loopback, link-local, multicast, reserved, unspecified, shared address space
(100.64/10), IPv6 unique-local and site-local, Teredo; IPv4 addresses embedded in IPv6
(``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4) are judged as that IPv4 address.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import httpx

from app.engine import NodeExecutionError

__all__ = [
    "ForbiddenTargetError",
    "IPAddress",
    "IPNetwork",
    "TargetPolicy",
    "forbidden_reason",
    "normalize_host",
    "parse_allow_entry",
    "redact_url",
    "resolve_host",
    "vet_target",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


class ForbiddenTargetError(NodeExecutionError):
    """The SSRF guard refused the URL: a non-HTTP scheme, or a host with an address that
    is not public and not admitted by ``allow_hosts``."""

    kind = "forbidden_target"


_THIS_NETWORK = IPv4Network("0.0.0.0/8")
_SHARED_ADDRESS_SPACE = IPv4Network("100.64.0.0/10")  # carrier-grade NAT; not is_private
_NAT64 = IPv6Network("64:ff9b::/96")  # the well-known NAT64 prefix, last 32 bits are IPv4
_UNIQUE_LOCAL = IPv6Network("fc00::/7")


def _ipv4_reason(ip: IPv4Address) -> str | None:
    # The most specific reason first: several of these ranges overlap is_private.
    if ip in _THIS_NETWORK:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:  # is_global is True for most of 224.0.0.0/4
        return "multicast"
    if ip in _SHARED_ADDRESS_SPACE:
        return "shared address space"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-global"
    return None


def _ipv6_reason(ip: IPv6Address) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_site_local:
        return "site-local"
    if ip.is_multicast:  # ff0e::/16 (global scope) is is_global, but never a web server
        return "multicast"
    if ip in _UNIQUE_LOCAL:
        return "unique-local"
    if ip.is_reserved:  # includes ::/8, so IPv4-compatible ::a.b.c.d as well
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


def _embedded_ipv4(ip: IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for, when connecting to it reaches that
    IPv4 host (IPv4-mapped, NAT64), with the mechanism's name."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "NAT64", IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def forbidden_reason(address: str | IPAddress) -> str | None:
    """Why ``address`` is not a public target (e.g. ``"loopback"``), or ``None`` if it is.

    ``ipaddress``'s ``is_global`` alone is not enough: it calls multicast and some
    reserved IPv6 ranges global, and it judges ``::ffff:127.0.0.1`` by its IPv6 form,
    so IPv4 addresses embedded in IPv6 ones are judged as the IPv4 address they reach.
    """
    ip = ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, IPv4Address):
        return _ipv4_reason(ip)
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        mechanism, v4 = embedded
        reason = _ipv4_reason(v4)
        return None if reason is None else f"{reason} ({mechanism} {v4})"
    if ip.sixtofour is not None:  # 2002::/16 is global, but a private embedded v4 is not
        reason = _ipv4_reason(ip.sixtofour)
        if reason is not None:
            return f"{reason} (6to4 {ip.sixtofour})"
    if ip.teredo is not None:
        return "Teredo tunnel"
    return _ipv6_reason(ip)


def normalize_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def parse_allow_entry(entry: str) -> str | IPNetwork:
    text = normalize_host(entry)
    try:
        return ip_network(text, strict=False)
    except ValueError:
        pass
    if not _HOSTNAME.match(text):
        raise ValueError(f"{entry!r} is neither a host name nor an IP address or network")
    return text


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """The non-public targets one node may reach: its ``allow_hosts``."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> TargetPolicy:
        """Parse ``allow_hosts`` entries: host names, IP addresses, CIDR networks."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            parsed = parse_allow_entry(entry)
            if isinstance(parsed, str):
                hosts.add(parsed)
            else:
                networks.append(parsed)
        return cls(frozenset(hosts), tuple(networks))

    def admits_host(self, host: str) -> bool:
        return normalize_host(host) in self.hosts

    def admits_address(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, IPv6Address):
            embedded = _embedded_ipv4(ip)
            if embedded is not None:
                candidates.append(embedded[1])
        return any(candidate in network for candidate in candidates for network in self.networks)


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in resolver order, without duplicates."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NodeExecutionError(f"cannot resolve host {host!r}: {exc.strerror or exc}") from exc
    addresses: list[IPAddress] = []
    for _, _, _, _, sockaddr in infos:
        try:
            ip = ip_address(sockaddr[0])
        except ValueError:  # not an IP family; nothing the client could connect to
            continue
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise NodeExecutionError(f"host {host!r} has no IP address")
    return addresses


async def vet_target(url: httpx.URL, policy: TargetPolicy) -> list[IPAddress]:
    """Resolve ``url``'s host and return its addresses if the SSRF guard admits it;
    raise :class:`ForbiddenTargetError` otherwise."""
    if url.scheme not in ("http", "https"):
        raise ForbiddenTargetError(
            f"refusing {redact_url(url)}: only http and https URLs are allowed"
        )
    # raw_host is the IDNA (ASCII) form the resolver needs; IPv6 comes without brackets
    host = normalize_host(url.raw_host.decode("ascii"))
    if not host:
        raise ForbiddenTargetError(f"refusing {redact_url(url)}: the URL has no host")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await resolve_host(host, port)
    if policy.admits_host(host):
        return addresses
    for ip in addresses:
        reason = forbidden_reason(ip)
        if reason is not None and not policy.admits_address(ip):
            where = f"{host} is" if host == str(ip) else f"{host} resolves to {ip},"
            article = "an" if reason[0] in "aeiou" else "a"
            raise ForbiddenTargetError(
                f"refusing {redact_url(url)}: {where} {article} {reason} address; "
                "list the host or its network in allow_hosts to allow it"
            )
    return addresses


def redact_url(url: httpx.URL) -> str:
    """The URL for messages: user info and query string may carry secrets."""
    query = "?…" if url.query else ""
    return f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}{query}"
