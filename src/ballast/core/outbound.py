"""Where the control plane may send the requests it makes on users' behalf: the pure policy.

Verification webhooks and Prometheus queries are URLs users write; telemetry addresses are what agents and
gateways register. Calling them from the control plane lends it our network position, so none may aim at the
control plane's own API (on any address of its host), and users' URLs may not aim at loopback, private,
link-local, multicast, unspecified or otherwise non-global addresses unless the platform allows a range
(`ballast server --allow-outbound CIDR`). Telemetry addresses are held to another rule: a component's
telemetry must be on the address it registered as its own (a node's IP, a gateway's listening address), the
address the platform routes traffic to anyway; nodes live on private networks, so the private-range rule
would refuse every real one.

These functions decide from values; the services resolve names and find whether an address is this host's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Union
from urllib.parse import urlsplit

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

ALLOW_HINT = "allow its range with 'ballast server --allow-outbound CIDR'"


@dataclass(frozen=True)
class OutboundPolicy:
    allowed: tuple[IPNetwork, ...] = ()
    own_ports: frozenset[int] = field(default_factory=frozenset)   # the control plane's API port(s)

    @classmethod
    def parse(cls, cidrs: tuple[str, ...] | list[str], own_ports: frozenset[int] = frozenset()) -> "OutboundPolicy":
        """ValueError naming a CIDR that is not one."""
        nets = []
        for cidr in cidrs:
            try:
                nets.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                raise ValueError(f"--allow-outbound {cidr!r}: expected a CIDR range such as 127.0.0.0/8") from None
        return cls(tuple(nets), own_ports)


def _plain(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _category(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-global"
    return None


def own_listener(policy: OutboundPolicy, ip: IPAddress, port: int, this_host: bool) -> bool:
    """Whether ip:port reaches the control plane's own API: its port on loopback, the unspecified address,
    or any address of this host (`this_host`)."""
    ip = _plain(ip)
    return port in policy.own_ports and (this_host or ip.is_loopback or ip.is_unspecified)


def address_refusal(policy: OutboundPolicy, ip: IPAddress, port: int, this_host: bool = False) -> str | None:
    """Why a user's URL may not be called at ip:port, or None."""
    ip = _plain(ip)
    if own_listener(policy, ip, port, this_host):
        return f"{ip}:{port} is the control plane's own API"
    if any(ip in net for net in policy.allowed):
        return None
    category = _category(ip) or ("this host's" if this_host else None)
    return None if category is None else f"{ip} is a {category} address; {ALLOW_HINT}"


@dataclass(frozen=True)
class Target:
    host: str           # a name or an IP literal (without brackets)
    port: int
    ip: IPAddress | None  # the literal, or None for a name (resolved when called)


def url_target(url: str) -> Target:
    """The host and port an http(s) URL reaches; ValueError when it has none."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http(s) URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError("a port in 1..65535") from None
    host = parts.hostname
    try:
        ip: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
        if host == "localhost" or host.endswith(".localhost"):   # always loopback (RFC 6761), whatever DNS says
            ip = ipaddress.ip_address("127.0.0.1")
    return Target(host, port, ip)


def url_refusal(policy: OutboundPolicy, url: str) -> str | None:
    """Why a user's URL is refused before any name is resolved (a literal address, localhost), or None; a
    name is checked again, resolved, each time it is called."""
    try:
        target = url_target(url)
    except ValueError as exc:
        return str(exc)
    return None if target.ip is None else address_refusal(policy, target.ip, target.port)


def gateway_home(address: str, metrics_address: str | None) -> str:
    """The IP a gateway's telemetry must be on: the one it listens on, or, when it listens on every address
    (0.0.0.0, ::), the one it serves telemetry on (which still may not be our API)."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host
    return metrics_address.rpartition(":")[0].strip("[]") if unspecified and metrics_address else host


def telemetry_refusal(policy: OutboundPolicy, home: str, address: str, this_host: bool = False) -> str | None:
    """What a component's telemetry address (IP:PORT) must be instead, or None when it may be read: on the
    component's own registered address `home`, and not the control plane's API."""
    host, _, port_text = address.rpartition(":")
    try:
        ip = _plain(ipaddress.ip_address(host.strip("[]")))
        home_ip = _plain(ipaddress.ip_address(home.strip("[]")))
        port = int(port_text)
    except ValueError:
        return "IP:PORT"
    if ip != home_ip:
        return f"an address on the component's own IP {home_ip}"
    if ip.is_unspecified or ip.is_multicast:
        return "a unicast address"
    if own_listener(policy, ip, port, this_host):
        return f"not the control plane's own API ({ip}:{port})"
    return None
