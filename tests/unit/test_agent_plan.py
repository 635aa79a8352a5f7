"""Spec of the agent's decisions as values: what to do about each instance, and how health checks count."""

from __future__ import annotations

from typing import Any

import pytest

from ballast.agent.plan import Begin, Health, HealthCount, Replace, ReportStopped, Retire, StopOrphan, plan
from ballast.wire.assignments import Assignment, Template


def assigned(instance: str, revision: int = 1, desired: str = "running", template: bool = True) -> Assignment:
    return Assignment(id=instance, app="shop", revision=revision, desired=desired, cell="cell-a",  # type: ignore[arg-type]
                      zone="z", ip="127.0.0.2", port=None,
                      template=Template(command=["app"]) if template else None)


A1, A2 = assigned("a", 1), assigned("a", 2)


@pytest.mark.parametrize(("wanted", "supervised", "stopping", "remembered", "expected"), [
    ([A1], {}, set(), set(), [Begin(A1)]),                                          # new: start it
    ([A1], {}, set(), {"a"}, [Begin(A1)]),                                          # left by an earlier agent: adopt
    ([A1], {"a": 1}, set(), {"a"}, []),                                             # as wanted: nothing
    ([A2], {"a": 1}, set(), {"a"}, [Replace(A2)]),                                  # granted a new revision
    ([A1], {}, {"a"}, {"a"}, []),                                                   # still stopping: wait
    ([assigned("a", template=False)], {}, set(), set(), []),                        # its revision is gone
    ([assigned("a", desired="deleted")], {"a": 1}, set(), {"a"}, [Retire("a")]),   # granted deletion
    ([assigned("a", desired="deleted")], {}, set(), set(), [ReportStopped("a")]),  # deleted, nothing runs
    # deleted while the node was away (fenced): the earlier agent's process is stopped, never adopted
    ([assigned("a", desired="deleted")], {}, set(), {"a"}, [StopOrphan("a"), ReportStopped("a")]),
    ([assigned("a", desired="deleted")], {}, {"a"}, set(), []),                     # deleted, stopping now
    ([], {"a": 1}, set(), {"a"}, [Retire("a")]),                                    # no longer assigned here
    ([], {}, set(), {"a"}, [StopOrphan("a")]),                                      # remembered, unwanted
    ([], {}, {"a"}, {"a"}, []),                                                     # being stopped already
    ([A1, assigned("b", desired="deleted")], {"b": 1, "c": 3}, set(), {"b", "c", "d"},
     [Begin(A1), Retire("b"), Retire("c"), StopOrphan("d")]),
])
def test_plan(wanted: list[Assignment], supervised: dict[str, int], stopping: set[str], remembered: set[str],
              expected: list[Any]) -> None:
    assert plan(wanted, supervised, stopping, remembered) == expected


def test_planning_twice_from_the_outcome_does_nothing_more() -> None:
    """Level-triggered: once the actions are carried out, the same assignments plan nothing."""
    wanted = [A2, assigned("b")]
    first = plan(wanted, {"a": 1}, set(), {"a", "x"})
    assert first == [Replace(A2), Begin(assigned("b")), StopOrphan("x")]
    assert plan(wanted, {"a": 2, "b": 1}, set(), {"a", "b"}) == []


# passed, answered -> health, per step, from a fresh counter with threshold 3
@pytest.mark.parametrize(("steps", "expected"), [
    ([(False, False)] * 5, [Health.STARTING] * 5),                       # not listening yet: just starting
    ([(False, True)] * 3, [Health.STARTING, Health.STARTING, Health.UNHEALTHY]),   # failing answers count
    ([(True, True), (False, False), (False, False), (False, False)],
     [Health.READY, Health.UNCHANGED, Health.UNCHANGED, Health.UNHEALTHY]),        # after a pass all failures count
    ([(True, True), (False, True), (True, True), (False, True), (False, True)],
     [Health.READY, Health.UNCHANGED, Health.READY, Health.UNCHANGED, Health.UNCHANGED]),  # a pass starts over
])
def test_health_counting(steps: list[tuple[bool, bool]], expected: list[Health]) -> None:
    count, seen = HealthCount(threshold=3), []
    for passed, answered in steps:
        count, health = count.observe(passed, answered)
        seen.append(health)
    assert seen == expected


def test_probes_are_fast_until_the_first_pass() -> None:
    fresh = HealthCount(threshold=3)
    assert fresh.next_probe(2.0) == 0.2 and fresh.next_probe(0.1) == 0.1
    assert fresh.observe(True, True)[0].next_probe(2.0) == 2.0
