"""Spec of where an instance's private listeners live: loopback, never the node's IP, one address per node."""

from __future__ import annotations

import ipaddress

import pytest

from ballast.core.loopback import private_address


@pytest.mark.parametrize(("node_ip", "expected"), [
    ("10.1.2.3", "127.0.0.1"),          # a real host: its loopback
    ("192.0.2.7", "127.0.0.1"),
    ("2001:db8::5", "127.0.0.1"),
    ("127.0.0.2", "127.128.0.2"),       # many nodes on one machine: one loopback address per node
    ("127.0.21.5", "127.128.21.5"),
    ("127.128.21.5", "127.0.21.5"),
])
def test_private_address(node_ip: str, expected: str) -> None:
    assert private_address(node_ip) == expected


def test_on_one_machine_no_node_shares_its_private_address_with_another_node_or_an_ip() -> None:
    nodes = [str(ipaddress.IPv4Address("127.0.21.2") + k) for k in range(200)]
    private = [private_address(ip) for ip in nodes]
    assert len(set(private)) == len(nodes) and not set(private) & set(nodes)
    assert all(ipaddress.ip_address(p).is_loopback for p in private)
