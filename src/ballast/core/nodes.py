"""Whether a node can be counted on, decided in one place.

A node is *ready* while its agent's heartbeats keep arriving: the API shows it, and the registry
controller routes traffic only to instances on ready nodes. It is *schedulable* when it is ready and not
cordoned: only there does placement put new instances. Its instances' readiness is only as fresh as its
agent's reports: on a node that stopped heartbeating it is *Unknown*, since the last heartbeat. When so many
nodes fall silent at once that the control plane more likely lost its own hearing than the nodes their
lives, it stops judging them (`hearing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# `nodeGraceSeconds`: agents report every second; silence this long means the node is gone (NotReady).
DEFAULT_NODE_GRACE_SECONDS = 4.0
NODE_TIMEOUT_SECONDS = DEFAULT_NODE_GRACE_SECONDS


def node_ready(last_heartbeat: float, now: float, grace: float = DEFAULT_NODE_GRACE_SECONDS) -> bool:
    return now - last_heartbeat < grace


def schedulable(last_heartbeat: float, cordoned: bool, now: float, grace: float = DEFAULT_NODE_GRACE_SECONDS) -> bool:
    return node_ready(last_heartbeat, now, grace) and not cordoned


@dataclass(frozen=True)
class DisruptionPolicy:
    """When silence says more about the control plane than about the nodes: more than `max_silent_share` of a
    cell's nodes or of all nodes, and at least `min_silent` of them, silent at once."""

    max_silent_share: float = 0.5
    min_silent: int = 2
    grace_seconds: float = DEFAULT_NODE_GRACE_SECONDS   # nodeGraceSeconds: silence before a node is NotReady


@dataclass(frozen=True)
class NodeHeartbeat:
    name: str
    cell: str
    last_heartbeat: float


@dataclass(frozen=True)
class Hearing:
    """What the control plane concludes from its nodes' heartbeats: which are silent, and in which scopes
    (`platform`, `cell/NAME`) so many are silent that it assumes it is the one that cannot hear. There it
    judges nobody: silent nodes keep their place in routing until heartbeats flow again."""

    known: frozenset[str]
    silent: frozenset[str]
    disrupted: tuple[str, ...]
    suspended: frozenset[str]          # silent nodes whose judgement is suspended
    answering: frozenset[str] = frozenset()   # silent nodes whose agent still answers a probe: alive, not heard
    counted: frozenset[str] = frozenset()     # the quiet nodes that made a scope disrupted

    def routable(self, node: str) -> bool:
        """Whether traffic may keep going to `node`'s instances (a node nobody registered: never)."""
        return node in self.known and (node not in self.silent or node in self.suspended or node in self.answering)

    def judged_dead(self, node: str) -> bool:
        """Silent past its grace, its agent does not answer, and the control plane trusts its own hearing."""
        return node in self.silent and node not in self.suspended and node not in self.answering


def hearing(nodes: list[NodeHeartbeat], now: float, policy: DisruptionPolicy = DisruptionPolicy(),
            answering: frozenset[str] = frozenset()) -> Hearing:
    """Pure: silent nodes, and the scopes where their number means the control plane cannot hear (the
    zone-disruption rule: a control plane cut off from its nodes must not drain the fleet it cannot see).
    `answering`: nodes whose agent answered a direct probe just now. A silent node that answers is alive but
    unheard (its agent busy or frozen, or the control plane overloaded): it is not judged dead, its instances
    keep serving and its mesh is still waited for."""
    silent = frozenset(n.name for n in nodes if not node_ready(n.last_heartbeat, now, policy.grace_seconds))
    # Nodes that went quiet together lapse one heartbeat apart: a node half-way to its grace already counts
    # towards a disruption, so the first to lapse is not judged alone when the others are about to follow.
    quiet_since = frozenset(n.name for n in nodes if not node_ready(n.last_heartbeat, now, policy.grace_seconds / 2))
    scopes: dict[str, list[NodeHeartbeat]] = {"platform": list(nodes)}
    for n in nodes:
        scopes.setdefault(f"cell/{n.cell}", []).append(n)
    disrupted = []
    suspended: set[str] = set()
    counted: set[str] = set()
    for scope, members in sorted(scopes.items()):
        quiet = [n.name for n in members if n.name in quiet_since]
        if len(quiet) >= policy.min_silent and len(quiet) > policy.max_silent_share * len(members):
            disrupted.append(scope)
            counted.update(quiet)
            suspended.update(q for q in quiet if q in silent)
    return Hearing(known=frozenset(n.name for n in nodes), silent=silent, disrupted=tuple(disrupted),
                   suspended=frozenset(suspended), answering=silent & answering, counted=frozenset(counted))
class Readiness(str, Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"   # its node stopped reporting: the last report may no longer hold


@dataclass(frozen=True)
class InstanceReadiness:
    state: Readiness
    since: float | None = None   # Unknown: the node's last heartbeat, the last moment anything was known


def instance_readiness(reported_ready: bool, node_last_heartbeat: float | None, now: float,
                       grace: float = DEFAULT_NODE_GRACE_SECONDS) -> InstanceReadiness:
    """What is known of an instance's readiness: its agent's last report while the node is ready, Unknown once the
    node stops heartbeating. `node_last_heartbeat` is None when the instance has no registered node (not placed)."""
    if node_last_heartbeat is not None and not node_ready(node_last_heartbeat, now, grace):
        return InstanceReadiness(Readiness.UNKNOWN, since=node_last_heartbeat)
    return InstanceReadiness(Readiness.TRUE if reported_ready else Readiness.FALSE)
