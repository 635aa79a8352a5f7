"""The registry snapshot every traffic component applies (`GET /v1/registry`).

A component applies the whole snapshot and acknowledges its generation, which tells the control plane
that every change up to that generation is in effect. What a service's entry holds besides its endpoints
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

    @property
    def ready(self) -> bool:
        return self.state == "ready"


class Route(Message):
    host: str
    path: str     # a path prefix


class ServiceRouting(Message):
    """What traffic components apply of one service, besides its endpoints."""

    mesh: bool = True                           # sidecars route to it by name
    routes: tuple[Route, ...] = ()              # the gateway routes these (host, path prefix) to it


class Service(ServiceRouting):
    name: str
    endpoints: tuple[Endpoint, ...] = ()
    rules: tuple[RuleInEffect, ...] = ()     # TrafficRules governing calls to it, at most one per caller scope

    @classmethod
    def of(cls, name: str, routing: ServiceRouting, endpoints: tuple[Endpoint, ...],
           rules: tuple[RuleInEffect, ...] = ()) -> "Service":
        return cls(name=name, endpoints=endpoints, rules=rules, **dict(routing))


class Snapshot(Message):
    generation: int = Field(ge=0)
    services: tuple[Service, ...] = ()     # ordered by name
    coloring: tuple[ColoringInEffect, ...] = ()   # marking rules, ordered by name

    @classmethod
    def empty(cls) -> "Snapshot":
        return cls(generation=0)
