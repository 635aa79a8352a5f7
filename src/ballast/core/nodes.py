"""Whether a node can be counted on, decided in one place.

A node is *ready* while its agent's heartbeats keep arriving: the API shows it, and the registry
controller routes traffic only to instances on ready nodes. It is *schedulable* when it is ready and not
cordoned: only there does placement put new instances.
"""

from __future__ import annotations

NODE_TIMEOUT_SECONDS = 10.0  # agents report every few seconds; silence this long means the node is gone


def node_ready(last_heartbeat: float, now: float) -> bool:
    return now - last_heartbeat < NODE_TIMEOUT_SECONDS


def schedulable(last_heartbeat: float, cordoned: bool, now: float) -> bool:
    return node_ready(last_heartbeat, now) and not cordoned
