"""What the traffic components apply of an app's spec, as one value. Pure.

The registry generation moves exactly when an app's `routing()` changes
(services/apply.py), and the registry snapshot sends exactly `routing()` for
each service (services/endpoints.py). Both read this one value, so a new
kind of rule added here both reaches every sidecar and gateway and moves the
generation they acknowledge; it cannot do one without the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ballast.core.endpoints import GATEWAY, MESH
from ballast.core.manifests import AppServiceSpec


@dataclass(frozen=True)
class GatewayRoute:
    host: str
    path: str     # a path prefix


@dataclass(frozen=True)
class ServiceRouting:
    mesh: bool                          # sidecars route to the service by name
    routes: tuple[GatewayRoute, ...]    # the gateway routes these (host, path prefix) to it

    def to_json(self) -> dict[str, Any]:
        return {"mesh": self.mesh, "routes": [{"host": r.host, "path": r.path} for r in self.routes]}


def routing(spec: AppServiceSpec) -> ServiceRouting:
    kinds = spec.traffic_components()
    routes = tuple(GatewayRoute(r.host, r.path) for r in spec.expose or []) if GATEWAY in kinds else ()
    return ServiceRouting(mesh=MESH in kinds, routes=routes)
