"""Where outgoing HTTP calls may go: the operator's egress policy, a node's
``allow_hosts``, and vetting a URL's target before every request and redirect hop.

The effective policy of one request, checked in this order (the first refusal wins):

1. only ``http`` and ``https`` URLs with a host;
2. the operator's **deny** list refuses a host listed by name (before any lookup) or
   whose addresses include one in a listed network, public or not: deny beats
   everything, the operator's allow list and ``allow_hosts`` included;
3. a target is refused when *any* address its host resolves to is not public (below),
   unless the operator's **allow** list lists the host by name or the network of each
   such address;
4. a node's ``allow_hosts``, when given, only narrows: the host must be listed by name,
   or every address it resolves to must lie in a listed network.

Which policy is the operator's: the one installed with :func:`install_egress_policy`
(the service installs ``EgressPolicy.from_settings(settings)`` in every replica, from
``FLOWCORE_EGRESS_ALLOW`` / ``FLOWCORE_EGRESS_DENY``). A program that uses the engine as
a library without installing one is its own operator: each node's ``allow_hosts`` is
then also the allow list of step 3 (it may admit non-public targets, as it always
could), and there is no deny list; a request of the shared client that no node vetted
with its ``allow_hosts`` (a plugin's) gets the strict policy: public targets only.

Not public: private, loopback, link-local, multicast, reserved, unspecified, shared
address space (100.64/10), IPv6 unique-local and site-local, Teredo; IPv4 addresses
embedded in IPv6 (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4) are judged as that
IPv4 address.

Errors::

    ValueError
    └── EgressPolicyError                 a bad entry in the operator's lists (startup)
    NodeExecutionError (app.engine)
    └── ForbiddenTargetError [forbidden_target]   the policy refused a request's target
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, Protocol

import httpx

from app.engine import NodeExecutionError

__all__ = [
    "EgressPolicy",
    "EgressPolicyError",
    "EgressSettings",
    "ForbiddenTargetError",
    "IPAddress",
    "IPNetwork",
    "TargetPolicy",
    "forbidden_reason",
    "install_egress_policy",
    "installed_egress_policy",
    "normalize_host",
    "parse_allow_entry",
    "redact_url",
    "resolve_host",
    "vet_request",
    "vet_target",
    "vetted_extensions",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


class ForbiddenTargetError(NodeExecutionError):
    """The egress policy refused the URL: a non-HTTP scheme, a host the operator denies,
    a non-public address the operator does not allow, or a target outside the node's
    ``allow_hosts``."""

    kind = "forbidden_target"


class EgressPolicyError(ValueError):
    """An entry of the operator's allow or deny list is neither a host name nor an IP
    address or network; the message names the list and the entry."""


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
    """A list of host names and IP networks: a node's ``allow_hosts``, or one of the
    operator's lists. Host names match exactly (case and a trailing dot aside), never
    their subdomains."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> TargetPolicy:
        """Parse entries: host names, IP addresses, CIDR networks (``ValueError`` on
        anything else)."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            parsed = parse_allow_entry(entry)
            if isinstance(parsed, str):
                hosts.add(parsed)
            else:
                networks.append(parsed)
        return cls(frozenset(hosts), tuple(networks))

    @property
    def is_empty(self) -> bool:
        return not self.hosts and not self.networks

    def admits_host(self, host: str) -> bool:
        """Whether ``host`` is listed by name."""
        return normalize_host(host) in self.hosts

    def admits_address(self, ip: IPAddress) -> bool:
        """Whether ``ip`` (or the IPv4 address it embeds) lies in a listed network."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, IPv6Address):
            embedded = _embedded_ipv4(ip)
            if embedded is not None:
                candidates.append(embedded[1])
        return any(candidate in network for candidate in candidates for network in self.networks)


_NO_HOSTS = TargetPolicy()


class EgressSettings(Protocol):
    """What :meth:`EgressPolicy.from_settings` reads (``app.config.Settings`` has it;
    this layer may not import the settings)."""

    @property
    def egress_allow(self) -> Sequence[str]: ...

    @property
    def egress_deny(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The operator's egress policy: ``allow`` lists the non-public hosts and networks
    that nodes may reach, ``deny`` the hosts and networks they may never reach, public
    or not. The default, both empty, is the strict policy: public targets only.

    A node's ``allow_hosts`` can only narrow this policy (see the module docstring).
    """

    allow: TargetPolicy = field(default_factory=TargetPolicy)
    deny: TargetPolicy = field(default_factory=TargetPolicy)

    @classmethod
    def from_entries(
        cls,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        *,
        allow_name: str = "egress allow list",
        deny_name: str = "egress deny list",
    ) -> EgressPolicy:
        """Parse both lists; :class:`EgressPolicyError` names the list and the first bad
        entry."""
        return cls(_parse_list(allow, allow_name), _parse_list(deny, deny_name))

    @classmethod
    def from_settings(cls, settings: EgressSettings) -> EgressPolicy:
        """The policy of ``FLOWCORE_EGRESS_ALLOW`` and ``FLOWCORE_EGRESS_DENY``."""
        return cls.from_entries(
            settings.egress_allow,
            settings.egress_deny,
            allow_name="FLOWCORE_EGRESS_ALLOW",
            deny_name="FLOWCORE_EGRESS_DENY",
        )

    async def vet(self, url: httpx.URL, allow_hosts: TargetPolicy = _NO_HOSTS) -> list[IPAddress]:
        """Resolve ``url``'s host and return its addresses if this policy, narrowed by
        ``allow_hosts``, admits the target; raise :class:`ForbiddenTargetError`
        otherwise."""
        return await _vet(url, self, allow_hosts, _OPERATOR_HINT)


def _parse_list(entries: Iterable[str], name: str) -> TargetPolicy:
    try:
        return TargetPolicy.from_entries(entries)
    except ValueError as exc:
        raise EgressPolicyError(f"{name}: {exc}") from None


@dataclass(slots=True)
class _Installed:
    policy: EgressPolicy | None = None


# process-wide, like the shared client's pool: one replica per process installs it
_installed = _Installed()


def install_egress_policy(policy: EgressPolicy | None) -> None:
    """Make ``policy`` the operator's policy of every request this process vets (the
    ``http`` node's and every request of the shared client); ``None`` uninstalls it,
    back to the library behaviour of the module docstring."""
    _installed.policy = policy


def installed_egress_policy() -> EgressPolicy | None:
    """The installed operator policy, or ``None`` when there is none."""
    return _installed.policy


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


async def vet_target(url: httpx.URL, allow_hosts: TargetPolicy = _NO_HOSTS) -> list[IPAddress]:
    """Resolve ``url``'s host and return its addresses if the effective policy admits
    it: the installed operator policy narrowed by ``allow_hosts``; without an installed
    policy, ``allow_hosts`` alone (it then admits non-public targets too). Raise
    :class:`ForbiddenTargetError` otherwise."""
    operator = _installed.policy
    if operator is not None:
        return await _vet(url, operator, allow_hosts, _OPERATOR_HINT)
    # no operator: the program is its own, and the node's allow_hosts its allow list
    return await _vet(url, EgressPolicy(allow=allow_hosts), allow_hosts, _LIBRARY_HINT)


_OPERATOR_HINT = (
    "the operator's egress policy does not allow it (a workflow's allow_hosts can only "
    "narrow that policy)"
)
_LIBRARY_HINT = "list the host or its network in allow_hosts to allow it"
_DENIED = "denied by the operator's egress policy"


def _where(host: str, ip: IPAddress) -> str:
    return f"{host} is" if host == str(ip) else f"{host} resolves to {ip},"


async def _vet(
    url: httpx.URL, operator: EgressPolicy, allow_hosts: TargetPolicy, hint: str
) -> list[IPAddress]:
    if url.scheme not in ("http", "https"):
        raise ForbiddenTargetError(
            f"refusing {redact_url(url)}: only http and https URLs are allowed"
        )
    # raw_host is the IDNA (ASCII) form the resolver needs; IPv6 comes without brackets
    host = normalize_host(url.raw_host.decode("ascii"))
    if not host:
        raise ForbiddenTargetError(f"refusing {redact_url(url)}: the URL has no host")
    if operator.deny.admits_host(host):  # before the lookup: a denied name is not resolved
        raise ForbiddenTargetError(f"refusing {redact_url(url)}: {host} is {_DENIED}")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await resolve_host(host, port)
    for ip in addresses:
        if operator.deny.admits_address(ip):
            raise ForbiddenTargetError(f"refusing {redact_url(url)}: {_where(host, ip)} {_DENIED}")
    if not operator.allow.admits_host(host):
        for ip in addresses:
            reason = forbidden_reason(ip)
            if reason is not None and not operator.allow.admits_address(ip):
                article = "an" if reason[0] in "aeiou" else "a"
                raise ForbiddenTargetError(
                    f"refusing {redact_url(url)}: {_where(host, ip)} {article} {reason} "
                    f"address; {hint}"
                )
    if not allow_hosts.is_empty and not allow_hosts.admits_host(host):
        for ip in addresses:
            if not allow_hosts.admits_address(ip):
                raise ForbiddenTargetError(
                    f"refusing {redact_url(url)}: {_where(host, ip)} outside the node's allow_hosts"
                )
    return addresses


# ------------------------------------------------------------ the shared client's hook

_VETTED = "flowcore.egress_vetted"


def vetted_extensions(url: httpx.URL) -> dict[str, Any]:
    """Request extensions saying that exactly ``url`` was vetted already (by
    :func:`vet_target`, with the node's ``allow_hosts``), so :func:`vet_request` does
    not vet it again. A redirect httpx builds from such a request keeps its extensions
    but not its URL, so it is vetted."""
    return {_VETTED: str(url)}


async def vet_request(request: httpx.Request) -> None:
    """The shared client's request hook: every request it sends, and every redirect
    hop httpx follows for it, is vetted against the installed operator policy (strict
    without one) unless :func:`vetted_extensions` marks its very URL. This vets by name
    at the hook; a request then connects by name, so code that needs protection against
    DNS rebinding sends to the vetted address, as the ``http`` node does."""
    if request.extensions.get(_VETTED) == str(request.url):
        return
    await vet_target(request.url)


def redact_url(url: httpx.URL) -> str:
    """The URL for messages: user info and query string may carry secrets."""
    query = "?…" if url.query else ""
    return f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}{query}"
