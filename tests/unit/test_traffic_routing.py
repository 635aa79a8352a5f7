"""What traffic components apply of an app is one value: the snapshot sends it and the generation follows it.

If the snapshot ever sent something `routing()` does not hold (or apply compared something else), a change
could reach the sidecars without moving the generation they acknowledge, or move it without reaching them.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from ballast.core.manifests import API_VERSION, AppServiceSpec
from ballast.core.traffic import Route, ServiceRouting, routing
from tests.conftest import Api

EXPOSES: list[Any] = [None, {"host": "shop.local", "path": "/"},
                      [{"host": "shop.local", "path": "/"}, {"host": "shop.local", "path": "/api"}],
                      {"host": "other.local", "path": "/"}]
COMPONENTS: list[Any] = [None, ["mesh"], ["gateway"], ["gateway", "mesh"]]
UNRELATED: list[dict[str, Any]] = [{"template": {"command": ["app"], "env": {"V": "1"}}},
                                   {"template": {"command": ["app"], "env": {"V": "2"}}},
                                   {"template": {"command": ["app"]}, "strategy": {"groups": 2}}]


def _spec(expose: Any, components: Any, unrelated: dict[str, Any], drain_timeout: float,
          stress: str | None) -> dict[str, Any] | None:
    traffic: dict[str, Any] = {"drainTimeoutSeconds": drain_timeout}
    if stress is not None:
        traffic["stress"] = stress
    if components is not None:
        traffic["components"] = components
    spec = {"cells": {"cell-a": 0}, "traffic": traffic, **unrelated}
    if expose is not None:
        spec["expose"] = expose
    try:
        AppServiceSpec.model_validate(spec)
    except ValueError:
        return None
    return spec


SPECS = [s for s in (_spec(*combo) for combo in itertools.product(EXPOSES, COMPONENTS, UNRELATED, [30.0, 5.0],
                                                                   [None, "deny"]))
         if s is not None]


@pytest.mark.parametrize(("components", "expose", "expected"), [
    (None, None, ServiceRouting(mesh=True, routes=())),
    (None, {"host": "a.local", "path": "/x"}, ServiceRouting(mesh=True, routes=(Route(host="a.local", path="/x"),))),
    (["gateway"], {"host": "a.local"}, ServiceRouting(mesh=False, routes=(Route(host="a.local", path="/"),))),
    (["mesh"], None, ServiceRouting(mesh=True, routes=())),
])
def test_routing_of_a_spec(components: Any, expose: Any, expected: ServiceRouting) -> None:
    spec: dict[str, Any] = {"replicas": 1, "template": {"command": ["app"]}}
    if components is not None:
        spec["traffic"] = {"components": components}
    if expose is not None:
        spec["expose"] = expose
    assert routing(AppServiceSpec.model_validate(spec)) == expected


async def test_the_generation_moves_exactly_when_what_the_snapshot_sends_changes(api: Api) -> None:
    """A random walk over specs differing in routes, components and unrelated fields: after every apply, the
    service's entry in the snapshot changed if and only if the registry generation moved."""
    assert len(SPECS) > 40
    cell = {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": "cell-a"}, "spec": {"zone": "z"}}
    r = await api.http.post("/v1/apply", json={"items": [cell]})
    assert r.status_code == 200, r.text
    rng = random.Random(7)
    before: tuple[int, Any] | None = None
    moved = unchanged = 0
    for spec in [SPECS[0], *rng.choices(SPECS, k=30)]:
        app = {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "shop"}, "spec": spec}
        r = await api.http.post("/v1/apply", json={"items": [app]})
        assert r.status_code == 200, r.text
        snap = (await api.http.get("/v1/registry")).json()
        [entry] = [s for s in snap["services"] if s["name"] == "shop"]
        # No TrafficRule and no IsolationGroup here.
        sent = {k: v for k, v in entry.items() if k not in ("name", "endpoints", "rules", "groups")}
        assert entry["rules"] == [] and entry["groups"] == []
        assert sent == routing(AppServiceSpec.model_validate(spec)).to_json(), "the snapshot sends routing()"
        if before is not None:
            generation_moved = snap["generation"] != before[0]
            assert generation_moved == (sent != before[1]), (spec, sent, before)
            moved += generation_moved
            unchanged += not generation_moved
        before = (snap["generation"], sent)
    assert moved and unchanged, "the walk took both kinds of step"
