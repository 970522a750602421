"""Which network addresses a media URL may reach, and a resolver whose answer is what we connect to.

The check is made on the *resolved* IP address, never on the spelling of the host: names, decimal
(``2130706433``), octal (``0177.0.0.1``), hex (``0x7f.1``), short (``127.1``) and IPv4-mapped /
embedded IPv6 (``::ffff:127.0.0.1``, ``64:ff9b::7f00:1``, ``2002:7f00:1::``) forms all end up as
the IP they denote. ``GuardedBackend`` (fetch.py) connects to exactly the IP that passed the check,
so a DNS answer that changes between check and connect (rebinding) cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

from .errors import AddressRefused, MediaError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

# Refused unless allow-listed. ipaddress' is_global already excludes RFC 1918, loopback,
# link-local (169.254/16 incl. the cloud metadata address), CGNAT 100.64/10 (Alibaba metadata
# 100.100.100.200), 0/8, reserved 240/4, broadcast, benchmarking, documentation, ULA fc00::/7
# (AWS IPv6 metadata fd00:ec2::254), fe80::/10, ::/128, ::1; multicast is checked separately
# because some multicast ranges count as global.
_EXTRA_BLOCKED = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "255.255.255.255/32", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "fec0::/10", "ff00::/8",
)]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA_NAMES = {"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                   "instance-data.ec2.internal"}


def parse_ip_literal(host: str) -> IPAddress | None:
    """The IP a host string denotes by itself, in any form inet_aton/inet_pton accepts, else None."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.split("%", 1)[0]  # zone id
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    # inet_aton's legacy forms: 1-4 parts, each decimal, 0-octal or 0x-hex.
    if re.fullmatch(r"(0[xX][0-9a-fA-F]*|[0-9]+)(\.(0[xX][0-9a-fA-F]*|[0-9]+)){0,3}\.?", h):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(h.rstrip(".")))
        except OSError:
            return None
    return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, Teredo, NAT64)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    packed = int(ip)
    if packed >> 32 == 0 and packed > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(packed)
    return None


def is_public(ip: IPAddress) -> bool:
    """True if ``ip`` (and any IPv4 address it embeds) is a globally routable unicast address."""
    v4 = embedded_ipv4(ip)
    if v4 is not None and not is_public(v4):
        return False
    if ip.is_multicast or ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_reserved \
            or ip.is_unspecified or not ip.is_global:
        return False
    return not any(ip.version == n.version and ip in n for n in _EXTRA_BLOCKED)


class HostPolicy:
    """Allow-list (hostnames, ``*.suffix`` wildcards, CIDRs) plus the public-address rule."""

    def __init__(self, allow_hosts: Iterable[str] = ()):
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow_hosts:
            e = entry.strip().lower().rstrip(".")
            if "/" in e:
                self.networks.append(ipaddress.ip_network(e, strict=False))
            elif e.startswith("*."):
                self.suffixes.append(e[1:])
            else:
                ip = parse_ip_literal(e)
                if ip is not None:
                    self.networks.append(ipaddress.ip_network(ip))
                else:
                    self.names.add(e)

    def host_allowed(self, host: str) -> bool:
        h = host.lower().rstrip(".")
        return h in self.names or any(h.endswith(s) for s in self.suffixes)

    def ip_allowed(self, ip: IPAddress) -> bool:
        cands = [ip]
        v4 = embedded_ipv4(ip)
        if v4 is not None:
            cands.append(v4)
        return any(c.version == n.version and c in n for c in cands for n in self.networks)

    def check_ip(self, host: str, ip: IPAddress) -> None:
        """Raise AddressRefused unless ``ip`` (what ``host`` resolved to) may be contacted."""
        if self.ip_allowed(ip) or self.host_allowed(host):
            return
        if not is_public(ip):
            shown = host if str(ip) == host.strip("[]") else f"{host} ({ip})"
            raise AddressRefused(f"URL host {shown} is a private, loopback, link-local, multicast "
                                 f"or reserved address; refused")

    def check_name(self, host: str) -> None:
        """Refuse well-known metadata service names before any lookup (the IP check covers the rest)."""
        h = host.lower().rstrip(".")
        if h in _METADATA_NAMES and not self.host_allowed(h):
            raise AddressRefused(f"URL host {host} is a cloud metadata service; refused")
        if h == "localhost" or h.endswith(".localhost"):
            if not self.host_allowed(h):
                raise AddressRefused(f"URL host {host} is loopback; refused")


async def system_resolver(host: str, port: int) -> list[str]:
    """All addresses the system resolver gives for ``host`` (TCP)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise MediaError(f"cannot resolve host {host}: {e.strerror or e}") from None
    out: list[str] = []
    for *_, sockaddr in infos:
        if sockaddr[0] not in out:
            out.append(sockaddr[0])
    return out


async def resolve_checked(host: str, port: int, policy: HostPolicy, resolver: Resolver) -> list[str]:
    """Addresses to connect to for ``host``; every one has passed ``policy`` (else AddressRefused).

    IP literals in any spelling are checked without a lookup. If any address a name resolves to
    is refused, the name is refused (a mix of public and private answers is a rebinding trick).
    """
    policy.check_name(host)
    lit = parse_ip_literal(host)
    if lit is not None:
        policy.check_ip(host, lit)
        return [str(lit)]
    answers = list(await resolver(host, port))
    if not answers:
        raise MediaError(f"cannot resolve host {host}: no addresses")
    ips: list[str] = []
    for a in answers:
        ip = parse_ip_literal(a)
        if ip is None:
            raise MediaError(f"cannot resolve host {host}: resolver returned {a!r}")
        policy.check_ip(host, ip)
        ips.append(str(ip))
    return ips
