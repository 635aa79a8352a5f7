"""Whether a node can be counted on, decided in one place.

A node is *ready* while its agent's heartbeats keep arriving: the API shows it, and the registry
controller routes traffic only to instances on ready nodes. It is *schedulable* when it is ready and not
cordoned: only there does placement put new instances. Its instances' readiness is only as fresh as its
agent's reports: on a node that stopped heartbeating it is *Unknown*, since the last heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

NODE_TIMEOUT_SECONDS = 10.0  # agents report every few seconds; silence this long means the node is gone


def node_ready(last_heartbeat: float, now: float) -> bool:
    return now - last_heartbeat < NODE_TIMEOUT_SECONDS


def schedulable(last_heartbeat: float, cordoned: bool, now: float) -> bool:
    return node_ready(last_heartbeat, now) and not cordoned


class Readiness(str, Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"   # its node stopped reporting: the last report may no longer hold


@dataclass(frozen=True)
class InstanceReadiness:
    state: Readiness
    since: float | None = None   # Unknown: the node's last heartbeat, the last moment anything was known


def instance_readiness(reported_ready: bool, node_last_heartbeat: float | None, now: float) -> InstanceReadiness:
    """What is known of an instance's readiness: its agent's last report while the node is ready, Unknown once the
    node stops heartbeating. `node_last_heartbeat` is None when the instance has no registered node (not placed)."""
    if node_last_heartbeat is not None and not node_ready(node_last_heartbeat, now):
        return InstanceReadiness(Readiness.UNKNOWN, since=node_last_heartbeat)
    return InstanceReadiness(Readiness.TRUE if reported_ready else Readiness.FALSE)
