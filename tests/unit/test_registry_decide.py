"""Spec of the drain protocol's decisions (`core.endpoints.decide`): endpoint states, acknowledgements, grants.

Pure: instance facts, endpoint records and component acknowledgements in; what to write out.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from ballast.core.endpoints import (GATEWAY, MESH, Component, EndpointRecord, EndpointState, Grant, InstanceFacts,
                                    TrafficPolicy, decide, pending_acks, required_components, serving)

MESH_ONLY = TrafficPolicy(components=frozenset({MESH}))
EXPOSED = TrafficPolicy(components=frozenset({MESH, GATEWAY}))
NO_DRAIN = TrafficPolicy(components=frozenset({MESH}), drain=False)
NOTHING_ROUTES = TrafficPolicy(components=frozenset())
COMPONENTS = [Component("mesh/n1", MESH, 0), Component("mesh/n2", MESH, 0), Component("gateway/edge", GATEWAY, 0)]
NOW = 1000.0


def running(**overrides: object) -> InstanceFacts:
    """An instance at revision 1, granted and healthy: it should be a ready endpoint."""
    base = InstanceFacts(id="shop-1", app="shop", node="n1", cell="a", zone="za", ip="10.0.0.1", port=20000,
                         revision=1, desired="running", granted_revision=1, granted_desired="running",
                         running_revision=1, phase="Running", ready=True, node_ready=True)
    return replace(base, **overrides)  # type: ignore[arg-type]


def endpoint(state: EndpointState = EndpointState.READY, generation: int = 10, since: float = NOW - 1,
             required: tuple[str, ...] = ("mesh/n1", "mesh/n2"), **overrides: object) -> EndpointRecord:
    base = EndpointRecord(id="shop-1", service="shop", node="n1", cell="a", zone="za", ip="10.0.0.1", port=20000,
                          revision=1, state=state, generation=generation, since=since, required=required)
    return replace(base, **overrides)  # type: ignore[arg-type]


def acked(generation: int) -> list[Component]:
    return [replace(c, acked_generation=generation) for c in COMPONENTS]


def test_required_components_are_the_registered_ones_of_the_routing_kinds() -> None:
    # A gateway calls every mesh service (scheduled tasks), so it acknowledges their endpoints too.
    assert required_components(MESH_ONLY, COMPONENTS) == ("gateway/edge", "mesh/n1", "mesh/n2")
    assert required_components(EXPOSED, COMPONENTS) == ("gateway/edge", "mesh/n1", "mesh/n2")
    assert required_components(TrafficPolicy(components=frozenset({GATEWAY})), COMPONENTS) == ("gateway/edge",)
    assert required_components(NOTHING_ROUTES, COMPONENTS) == ()


@pytest.mark.parametrize("facts, why", [
    (running(), "healthy at the granted revision"),
])
def test_a_healthy_instance_gets_a_ready_endpoint_that_all_must_acknowledge(facts: InstanceFacts, why: str) -> None:
    d = decide([facts], {}, COMPONENTS, {"shop": EXPOSED}, NOW)
    [put] = d.puts
    assert (put.state, put.required) == (EndpointState.READY, ("gateway/edge", "mesh/n1", "mesh/n2")), why
    assert d.registry_changed and not d.grants


@pytest.mark.parametrize("facts, why", [
    (running(phase="Starting", ready=False), "not healthy yet"),
    (running(running_revision=None), "not reported running"),
    (running(port=None), "no port reported"),
    (running(node_ready=False), "its node stopped heartbeating"),
    (running(revision=2), "a change is pending"),
    (running(granted_revision=2), "granted a revision it does not run yet"),
])
def test_no_ready_endpoint_for_an_instance_that_should_not_get_traffic(facts: InstanceFacts, why: str) -> None:
    d = decide([facts], {}, COMPONENTS, {"shop": MESH_ONLY}, NOW)
    assert not [p for p in d.puts if p.state is EndpointState.READY], why


@pytest.mark.parametrize("facts, why", [
    (running(revision=2), "a new revision is intended"),
    (running(desired="deleted"), "it is being retired"),
    (running(phase="Unhealthy", ready=False), "its health check fails"),
])
def test_a_ready_endpoint_starts_draining_when_its_instance_must_not_get_traffic(facts: InstanceFacts,
                                                                                 why: str) -> None:
    d = decide([facts], {"shop-1": endpoint()}, COMPONENTS, {"shop": MESH_ONLY}, NOW)
    [put] = d.puts
    assert (put.state, put.required) == (EndpointState.DRAINING, ("gateway/edge", "mesh/n1", "mesh/n2")), why
    assert not d.grants, "the drain begins: nothing may stop yet"


@pytest.mark.parametrize("state", [EndpointState.READY, EndpointState.DRAINING])
def test_the_endpoint_of_an_instance_on_a_not_ready_node_is_removed_at_once(state: EndpointState) -> None:
    """Nothing on a dead node can finish a drain: its endpoints leave every routing table in one step."""
    d = decide([running(node_ready=False)], {"shop-1": endpoint(state)}, COMPONENTS, {"shop": MESH_ONLY}, NOW)
    [put] = d.puts
    assert put.state is EndpointState.REMOVED
    removed = endpoint(EndpointState.REMOVED)
    assert not decide([running(node_ready=False)], {"shop-1": removed}, COMPONENTS, {"shop": MESH_ONLY}, NOW).puts


def test_the_grant_waits_for_every_acknowledgement_of_the_draining_generation() -> None:
    change = running(revision=2)
    draining = endpoint(EndpointState.DRAINING, generation=20)
    partly = [replace(COMPONENTS[0], acked_generation=20), COMPONENTS[1], COMPONENTS[2]]
    d = decide([change], {"shop-1": draining}, partly, {"shop": MESH_ONLY}, NOW)
    assert not d.grants
    assert pending_acks(draining, {c.key: c.acked_generation for c in partly}) == ("mesh/n2",)
    d = decide([change], {"shop-1": draining}, acked(20), {"shop": MESH_ONLY}, NOW)
    assert d.grants == [Grant("shop-1", 2, "running", drained=True)]
    assert not d.puts and not d.notes, "an acknowledgement costs no bookkeeping write"


def test_a_deleted_component_is_not_waited_for() -> None:
    draining = endpoint(EndpointState.DRAINING, generation=20)
    only_n1 = [replace(COMPONENTS[0], acked_generation=20)]
    assert decide([running(revision=2)], {"shop-1": draining}, only_n1, {"shop": MESH_ONLY}, NOW).grants


def test_an_older_acknowledgement_does_not_count() -> None:
    draining = endpoint(EndpointState.DRAINING, generation=20)
    d = decide([running(revision=2)], {"shop-1": draining}, acked(19), {"shop": MESH_ONLY}, NOW)
    assert not d.grants


def test_a_gateway_must_acknowledge_only_for_exposed_services() -> None:
    meshes_only = [replace(c, acked_generation=20 if c.kind == MESH else 0) for c in COMPONENTS]
    mesh_routed = endpoint(EndpointState.DRAINING, generation=20)
    assert decide([running(revision=2)], {"shop-1": mesh_routed}, meshes_only, {"shop": MESH_ONLY}, NOW).grants
    exposed = endpoint(EndpointState.DRAINING, generation=20, required=("gateway/edge", "mesh/n1", "mesh/n2"))
    assert not decide([running(revision=2)], {"shop-1": exposed}, meshes_only, {"shop": EXPOSED}, NOW).grants


@pytest.mark.parametrize("policy, endpoints, why", [
    (MESH_ONLY, {}, "never routable: nothing to drain"),
    (NO_DRAIN, {"shop-1": endpoint()}, "drain switched off: act at once"),
    (NOTHING_ROUTES, {"shop-1": endpoint()}, "no component routes to it"),
])
def test_grants_without_waiting(policy: TrafficPolicy, endpoints: dict[str, EndpointRecord], why: str) -> None:
    d = decide([running(revision=2)], endpoints, COMPONENTS, {"shop": policy}, NOW)
    assert [g.revision for g in d.grants] == [2], why


def test_a_silent_component_is_named_after_the_ack_timeout() -> None:
    policy = replace(MESH_ONLY, ack_timeout_seconds=30)
    fresh = endpoint(EndpointState.DRAINING, generation=20, since=NOW - 5)
    stale = replace(fresh, since=NOW - 31)
    one_silent = [replace(COMPONENTS[0], acked_generation=20), COMPONENTS[1]]
    assert not decide([running(revision=2)], {"shop-1": fresh}, one_silent, {"shop": policy}, NOW).notes
    [note] = decide([running(revision=2)], {"shop-1": stale}, one_silent, {"shop": policy}, NOW).notes
    assert "mesh/n2" in note.note and "removal" in note.note and "30s" in note.note
    assert not decide([running(revision=2)], {"shop-1": stale}, one_silent, {"shop": policy}, NOW).grants, \
        "a silent component is never taken for an acknowledgement"


def test_back_in_traffic_after_the_change_and_serving_once_acknowledged() -> None:
    upgraded = running(revision=2, granted_revision=2, running_revision=2)
    draining = endpoint(EndpointState.DRAINING, generation=20)
    [put] = decide([upgraded], {"shop-1": draining}, acked(20), {"shop": MESH_ONLY}, NOW).puts
    assert (put.state, put.revision, put.required) == (EndpointState.READY, 2, ("gateway/edge", "mesh/n1", "mesh/n2"))
    ready = endpoint(EndpointState.READY, generation=30, revision=2, required=put.required)
    assert not serving(ready, {c.key: c.acked_generation for c in acked(20)})
    assert serving(ready, {c.key: c.acked_generation for c in acked(30)})


def test_a_rollback_during_the_drain_returns_the_endpoint_to_traffic() -> None:
    back_to_1 = running()  # intent again equals the grant
    draining = endpoint(EndpointState.DRAINING, generation=20)
    d = decide([back_to_1], {"shop-1": draining}, COMPONENTS, {"shop": MESH_ONLY}, NOW)
    assert [p.state for p in d.puts] == [EndpointState.READY] and not d.grants


def test_an_endpoint_without_its_instance_is_removed_then_forgotten_once_acknowledged() -> None:
    [put] = decide([], {"shop-1": endpoint(EndpointState.DRAINING)}, COMPONENTS, {"shop": MESH_ONLY}, NOW).puts
    assert put.state is EndpointState.REMOVED
    removed = endpoint(EndpointState.REMOVED, generation=40)
    assert not decide([], {"shop-1": removed}, acked(39), {"shop": MESH_ONLY}, NOW).drops
    assert decide([], {"shop-1": removed}, acked(40), {"shop": MESH_ONLY}, NOW).drops
    long_ago = replace(removed, since=NOW - 601)
    assert decide([], {"shop-1": long_ago}, acked(0), {"shop": MESH_ONLY}, NOW).drops, \
        "a component gone silent does not pin removed endpoints forever"


def test_nothing_to_write_when_all_is_settled() -> None:
    assert decide([running()], {"shop-1": endpoint()}, acked(10), {"shop": MESH_ONLY}, NOW).empty()


def test_an_unknown_app_is_treated_as_routed_by_everything() -> None:
    draining = endpoint(EndpointState.DRAINING, generation=20, service="gone",
                        required=("gateway/edge", "mesh/n1", "mesh/n2"))
    gone = running(app="gone", desired="deleted")
    meshes_only = [replace(c, acked_generation=20 if c.kind == MESH else 0) for c in COMPONENTS]
    assert not decide([gone], {"shop-1": draining}, meshes_only, {}, NOW).grants
    assert decide([gone], {"shop-1": draining}, acked(20), {}, NOW).grants
