"""A fence around a node's private address when many nodes share one machine.

An instance's app port and its mesh listener bind the node's private loopback
address (core/loopback.py). On a real host nobody else can reach it: the
kernel drops packets to 127.0.0.0/8 from other hosts. When several nodes share
one machine (`ballast up`), every node's processes share one loopback, so a
process speaking from another node's address could still call an app directly,
around its sidecar. The fence is one packet-filter rule per node: connections
to its private address are refused unless they come from 127.0.0.1, the source
the kernel gives an instance's own connections to loopback.

The rule lives in an nftables table of its own (named for the address), so
installing it again replaces it and no other node's or host's rules are
touched. It stays when the agent exits: the apps it protects may keep running.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import shutil

from ballast.core.loopback import HOST_LOOPBACK
from ballast.errors import BallastError

log = logging.getLogger("ballast.agent")


class FenceMode(str, enum.Enum):
    AUTO = "auto"        # fence when nodes share a machine; say so loudly when it cannot be done
    REQUIRE = "require"  # ... and refuse to start the node without it
    OFF = "off"


class FenceUnavailable(BallastError):
    status = 503


def needed(private_ip: str) -> bool:
    """127.0.0.1 is a real host's own loopback: the kernel already keeps other hosts out."""
    return private_ip != HOST_LOOPBACK


def table_name(private_ip: str) -> str:
    return "ballast_fence_" + private_ip.replace(".", "_")


def ruleset(private_ip: str) -> str:
    """The nft script that (re)creates the fence of `private_ip`. Pure."""
    table = table_name(private_ip)
    return (f"table ip {table}\n"
            f"delete table ip {table}\n"
            f"table ip {table} {{\n"
            "  chain output {\n"
            "    type filter hook output priority 0; policy accept;\n"
            f"    ip daddr {private_ip} ip saddr != {HOST_LOOPBACK} meta l4proto tcp reject with tcp reset\n"
            f"    ip daddr {private_ip} ip saddr != {HOST_LOOPBACK} drop\n"
            "  }\n"
            "}\n")


async def install(private_ip: str, mode: FenceMode) -> bool:
    """Put the fence up (idempotent). True when it stands or is not needed."""
    if mode is FenceMode.OFF or not needed(private_ip):
        return True
    nft = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)
    why = ""
    if nft is None:
        why = "nft (nftables) is not installed"
    else:
        proc = await asyncio.create_subprocess_exec(nft, "-f", "-", stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate(ruleset(private_ip).encode())
        if proc.returncode == 0:
            log.info("private address %s fenced: only 127.0.0.1 may connect to it", private_ip)
            return True
        why = err.decode(errors="replace").strip()[:300] or f"nft exited {proc.returncode}"
    message = (f"cannot fence the private address {private_ip} ({why}): another node on this machine can reach "
               "its apps' ports around their sidecars")
    if mode is FenceMode.REQUIRE:
        raise FenceUnavailable(message)
    log.warning("NOT FOR PRODUCTION: %s", message)
    return False
