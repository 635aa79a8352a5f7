"""What the traffic components apply of an app's spec, as one value. Pure.

The registry generation moves exactly when an app's `routing()` changes
(services/apply.py), and the registry snapshot sends exactly `routing()` for
each service (services/endpoints.py, as the wire's `Service`, which is a
`ServiceRouting` plus the endpoints). Both read this one value, so a new kind
of rule added to it both reaches every sidecar and gateway and moves the
generation they acknowledge; it cannot do one without the other.
"""

from __future__ import annotations

from ballast.core.endpoints import GATEWAY, MESH
from ballast.core.manifests import AppServiceSpec, IsolationGroupSpec
from ballast.wire.registry import GroupInEffect, Route, ServiceRouting

__all__ = ["Route", "ServiceRouting", "group_routing", "routing"]


def routing(spec: AppServiceSpec) -> ServiceRouting:
    kinds = spec.traffic_components()
    routes = tuple(Route(host=r.host, path=r.path) for r in spec.expose or []) if GATEWAY in kinds else ()
    return ServiceRouting(mesh=MESH in kinds, routes=routes, stress=spec.traffic.stress)


def group_routing(spec: IsolationGroupSpec, name: str) -> GroupInEffect:
    """What components route by of an isolation group; a change of it moves the registry generation."""
    return GroupInEffect(name=name, code=spec.code, convergence=spec.convergence, stress=spec.stress)
