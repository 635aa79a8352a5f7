"""The registry snapshot every traffic component applies (`GET /v1/registry`).

A component applies the whole snapshot (rebuilt from a delta, wire/registry_delta.py, when it held the
base) and acknowledges its generation, which tells the control plane that every change up to that generation
is in effect. What a service's entry holds besides its endpoints
is exactly its `ServiceRouting` (core/traffic.py decides it from the app's spec), so a new kind of rule is
a field there and reaches every component with the generation that announces it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ballast.wire.message import Message
from ballast.wire.traffic import ColoringInEffect, RuleInEffect


class Endpoint(Message):
    id: str
    ip: str
    port: int
    cell: str
    zone: str
    state: Literal["ready", "draining"]   # ready: route to it; draining: keep it known but send nothing
    revision: int = 0                      # the revision it serves (changes only while it is drained)
    group: str = ""                        # its isolation group's code; "": the app's default pool

    @property
    def default(self) -> bool:
        """In the default pool: callers reach it without a rule naming a group."""
        return not self.group

    @property
    def ready(self) -> bool:
        return self.state == "ready"


class Route(Message):
    host: str
    path: str     # a path prefix


class GroupInEffect(Message):
    """An isolation group as components route by it: its unit's code and what its instances accept."""

    name: str
    code: str
    convergence: Literal["prefer", "strict"] = "prefer"   # of the group's own calls: stay in the unit, or fail
    stress: bool = False                                  # it may receive stress-test calls


class ServiceRouting(Message):
    """What traffic components apply of one service, besides its endpoints."""

    mesh: bool = True                           # sidecars route to it by name
    routes: tuple[Route, ...] = ()              # the gateway routes these (host, path prefix) to it
    stress: Literal["allow", "deny"] = "allow"  # whether its default pool takes stress-test calls


class Service(ServiceRouting):
    name: str
    endpoints: tuple[Endpoint, ...] = ()
    rules: tuple[RuleInEffect, ...] = ()     # TrafficRules governing calls to it, at most one per caller scope
    groups: tuple[GroupInEffect, ...] = ()   # its isolation groups, ordered by code

    @classmethod
    def of(cls, name: str, routing: ServiceRouting, endpoints: tuple[Endpoint, ...],
           rules: tuple[RuleInEffect, ...] = (), groups: tuple[GroupInEffect, ...] = ()) -> "Service":
        return cls(name=name, endpoints=endpoints, rules=rules, groups=groups, **dict(routing))

    def group(self, code: str) -> GroupInEffect | None:
        return next((g for g in self.groups if g.code == code), None)


class Snapshot(Message):
    generation: int = Field(ge=0)
    services: tuple[Service, ...] = ()     # ordered by name
    coloring: tuple[ColoringInEffect, ...] = ()   # marking rules, ordered by name

    @classmethod
    def empty(cls) -> "Snapshot":
        return cls(generation=0)
