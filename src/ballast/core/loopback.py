"""Where an instance's private listeners live: the loopback address of its node. Pure.

An app's own port and its sidecar's outbound (mesh) listener must be reachable
only from the instance's host, so they bind a loopback address, never the
node's IP (only the endpoint, the sidecar's inbound side, faces the network).
On a real host that is 127.0.0.1: packets to 127.0.0.0/8 from another host are
dropped by the kernel. When the node's IP is itself a loopback address (many
nodes on one machine, `ballast up`), each node gets a loopback address of its
own, distinct from every node IP, so nodes (and platforms) on one machine do not
compete for the same private ports: the node IP with the top bit of its second
byte flipped (127.0.21.2 -> 127.128.21.2), a one-to-one mapping inside 127/8.

Whatever the address, the source of a connection an instance opens to it is
127.0.0.1 (the kernel's preferred source for 127/8), which is what the
sidecar's outbound listener admits.
"""

from __future__ import annotations

import ipaddress

HOST_LOOPBACK = "127.0.0.1"


def private_address(node_ip: str) -> str:
    """The loopback address an instance's app and mesh listener bind on a node with `node_ip`."""
    address = ipaddress.ip_address(node_ip)
    if address.version != 4 or not address.is_loopback:
        return HOST_LOOPBACK
    packed = bytearray(address.packed)
    packed[1] ^= 0x80
    return str(ipaddress.IPv4Address(bytes(packed)))
