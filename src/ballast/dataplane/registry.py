"""The registry snapshot every traffic component applies, as values.

The control plane answers `GET /v1/registry` with this shape; a component
applies the whole snapshot and acknowledges its generation, which tells the
control plane that every endpoint change up to that generation is in effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Endpoint:
    id: str
    ip: str
    port: int
    cell: str
    zone: str
    ready: bool            # ready: route to it; draining: keep it known but send nothing
    revision: int = 0      # the revision it serves (changes only while it is drained)


@dataclass(frozen=True)
class Route:
    host: str
    path: str


@dataclass(frozen=True)
class Service:
    name: str
    mesh: bool                       # sidecars route to it by name
    routes: tuple[Route, ...]        # the gateway routes these (host, path prefix) to it
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class Snapshot:
    generation: int
    services: tuple[Service, ...]

    @classmethod
    def empty(cls) -> "Snapshot":
        return cls(0, ())

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Snapshot":
        services = []
        for s in body.get("services", []):
            endpoints = tuple(Endpoint(e["id"], e["ip"], int(e["port"]), e["cell"], e["zone"], e["state"] == "ready",
                                       int(e.get("revision", 0)))
                              for e in s.get("endpoints", []))
            routes = tuple(Route(r["host"], r["path"]) for r in s.get("routes", []))
            services.append(Service(s["name"], bool(s.get("mesh", True)), routes, endpoints))
        return cls(int(body["generation"]), tuple(sorted(services, key=lambda s: s.name)))
