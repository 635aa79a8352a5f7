"""Spec of registry deltas (wire/registry_delta.py): a component fed deltas ends with exactly the snapshot a
whole one would give it, after any sequence of changes, missed generations (it was busy or disconnected),
restarts (it holds nothing) and answers from another replica (which keeps other snapshots)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ballast.wire.registry import Endpoint, GroupInEffect, Route, Service, Snapshot
from ballast.wire.registry_delta import absorb, answer_for, apply_delta, remember, snapshot_delta
from ballast.wire.traffic import ColoringInEffect, ColoringRuleSpec

KEEP = 3   # snapshots a replica keeps as bases (few, so that bases fall out of it)
COLORINGS = (
    (),
    (ColoringInEffect(name="replenish", generation=6, spec=ColoringRuleSpec.model_validate(
        {"at": {"apps": ["front", "gateway"]}, "match": {"pathPrefix": "/replenish"}, "tags": {"biz": "x"}})),),
    (ColoringInEffect(name="stress", generation=9, spec=ColoringRuleSpec.model_validate(
        {"at": {"apps": ["gateway"]}, "tags": {"stress": "true"}})),),
)

endpoints = st.builds(Endpoint, id=st.sampled_from(["e1", "e2", "e3", "e4"]), ip=st.just("127.0.0.2"),
                      port=st.integers(20000, 20003), cell=st.sampled_from(["cell-a", "cell-b"]), zone=st.just("z"),
                      state=st.sampled_from(["ready", "draining"]), revision=st.integers(1, 3),
                      group=st.sampled_from(["", "unit"]))
services = st.builds(
    Service, name=st.sampled_from(["front", "back", "probe", "pay"]),
    endpoints=st.lists(endpoints, max_size=4, unique_by=lambda e: e.id).map(lambda es: tuple(sorted(es, key=lambda e: e.id))),
    mesh=st.booleans(), routes=st.sampled_from([(), (Route(host="front.local", path="/"),)]),
    stress=st.sampled_from(["allow", "deny"]),
    groups=st.sampled_from([(), (GroupInEffect(name="g", code="unit", stress=True),)]))
bodies = st.tuples(st.lists(services, max_size=4, unique_by=lambda s: s.name), st.sampled_from(COLORINGS))


def snapshot(generation: int, body: tuple[list[Service], Any]) -> Snapshot:
    return Snapshot(generation=generation, services=tuple(sorted(body[0], key=lambda s: s.name)), coloring=body[1])


def wire(answer: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(answer))   # what crosses HTTP


@given(st.lists(bodies, min_size=2, max_size=6))
def test_a_delta_takes_its_base_to_exactly_the_newer_snapshot(changes: list[Any]) -> None:
    snaps = [snapshot(g + 1, body) for g, body in enumerate(changes)]
    for old in snaps:
        for new in snaps:
            if new.generation > old.generation:
                assert apply_delta(old, snapshot_delta(old, new)) == new


# One step of the world: the registry moves on, the component polls, misses a poll, restarts, or its next poll
# is answered by another replica (which kept none of this one's snapshots).
steps = st.lists(st.one_of(st.tuples(st.just("change"), bodies), st.tuples(st.just("poll")),
                           st.tuples(st.just("miss")), st.tuples(st.just("restart")),
                           st.tuples(st.just("other-replica"))), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(bodies, steps)
def test_deltas_converge_to_the_whole_snapshot_after_any_changes_misses_and_restarts(first: Any, world: Any) -> None:
    current = snapshot(1, first)
    history: dict[int, Snapshot] = {}
    remember(history, current, KEEP)
    held: Snapshot | None = None
    ask_whole = False
    deltas = 0

    def poll() -> None:
        nonlocal held, ask_whole, deltas
        known = held.generation if held is not None and not ask_whole else None
        answer = wire(answer_for(known, current, history))
        deltas += "base" in answer
        got = absorb(held if not ask_whole else None, answer)
        ask_whole = got is None
        if got is not None:
            assert got == current, "a component never holds a snapshot the registry did not have"
            held = got

    for step in world:
        if step[0] == "change":
            current = snapshot(current.generation + 1, step[1])
            remember(history, current, KEEP)
        elif step[0] == "poll":
            poll()
        elif step[0] == "restart":
            held, ask_whole = None, False
        elif step[0] == "other-replica":
            history = {current.generation: current}
            poll()
    poll()
    if ask_whole:
        poll()
    assert held == current


def test_a_delta_carries_only_what_changed_and_names_its_base() -> None:
    back = Service(name="back", endpoints=(Endpoint(id="b1", ip="127.0.0.2", port=1, cell="a", zone="z",
                                                   state="ready"),))
    front = Service(name="front")
    old = Snapshot(generation=4, services=(back, front))
    drained = back.model_copy(update={"endpoints": (back.endpoints[0].model_copy(update={"state": "draining"}),)})
    new = Snapshot(generation=7, services=(drained,))
    delta = snapshot_delta(old, new)
    assert (delta.base, delta.generation, [s.name for s in delta.changed], delta.removed, delta.coloring) == \
        (4, 7, ["back"], ("front",), None)
    assert absorb(Snapshot(generation=5), wire(delta.to_json())) is None, "a delta applies to its base alone"
    assert answer_for(4, new, {4: old}).get("base") == 4
    assert "base" not in answer_for(3, new, {4: old}), "a base no longer kept: the whole snapshot"
