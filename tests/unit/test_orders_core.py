"""Release orders, pure: the dependency graph, change windows, the order engine's decisions, statistics."""

from __future__ import annotations

from datetime import datetime, time, timezone

import pytest

from ballast.core.orders import (Freeze, ItemView, OrderOutcome, OrderPhase, OrderView, ReleaseSeen, WeeklyRange,
                                 Window, check_windows, decide, dependency_order, find_cycle, graph_problems, stats,
                                 template_diff)


def test_graph_problems_name_the_field_and_the_cycle() -> None:
    assert graph_problems([("a", []), ("b", ["a"]), ("c", ["b"])], "r") == []
    [dup] = graph_problems([("a", []), ("a", [])], "r")
    assert dup.path == "r[1].app"
    [unknown] = graph_problems([("a", []), ("b", ["zz"])], "r")
    assert (unknown.path, unknown.value) == ("r[1].after[0]", "zz") and "a, b" in unknown.expected
    [self_ref] = graph_problems([("a", ["a"])], "r")
    assert "itself" in self_ref.expected
    [cycle] = graph_problems([("a", ["c"]), ("b", ["a"]), ("c", ["b"])], "r")
    assert "a → c → b → a" in cycle.expected


def test_cycles_and_dependency_order() -> None:
    assert find_cycle({"a": (), "b": ("a",)}) == []
    assert set(find_cycle({"a": ("b",), "b": ("a",), "c": ()})) == {"a", "b"}
    assert dependency_order({"c": ("b",), "b": ("a",), "a": (), "d": ()}) == ["a", "d", "b", "c"]
    with pytest.raises(ValueError):
        dependency_order({"a": ("b",), "b": ("a",)})


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize("moment, open_", [
    ("2026-12-01T21:59:00+00:00", False),   # Tuesday, before the range
    ("2026-12-01T22:00:00+00:00", True),
    ("2026-12-02T01:59:00+00:00", True),    # Wednesday early: still Tuesday's range (past midnight)
    ("2026-12-02T02:00:00+00:00", False),
    ("2026-12-05T23:00:00+00:00", False),   # Saturday
])
def test_a_weekly_range_may_run_past_midnight(moment: str, open_: bool) -> None:
    night = WeeklyRange(days=(0, 1, 2, 3), start=time(22, 0), end=time(2, 0))
    window = Window("nights", "UTC", (night,), (), None)
    assert check_windows([window], ["a"], at(moment)).allowed is open_


def test_time_zones_freezes_and_scopes() -> None:
    office = WeeklyRange(days=(0, 1, 2, 3, 4), start=time(9, 0), end=time(17, 0))
    zurich = Window("office", "Europe/Zurich", (office,), (), None)
    assert check_windows([zurich], ["a"], at("2026-12-02T08:30:00+00:00")).allowed      # 09:30 in Zurich
    assert not check_windows([zurich], ["a"], at("2026-12-02T16:30:00+00:00")).allowed  # 17:30 in Zurich
    peak = Freeze(datetime(2026, 12, 2, tzinfo=timezone.utc), datetime(2026, 12, 3, tzinfo=timezone.utc), "peak sales")
    frozen = Window("peak", "UTC", (), (peak,), ("shop",))
    verdict = check_windows([zurich, frozen], ["shop"], at("2026-12-02T10:00:00+00:00"))
    assert not verdict.allowed and "frozen" in verdict.reasons[0] and "peak sales" in verdict.reasons[0]
    assert verdict.windows == ("office", "peak")
    assert check_windows([frozen], ["pay"], at("2026-12-02T10:00:00+00:00")).allowed, "the freeze covers shop only"
    assert check_windows([], ["pay"], 0).allowed, "no window declared: no restriction"


def item(app: str, after: tuple[str, ...] = (), phase: str | None = None, *, deployed: int = 1, undo: str | None = None,
         rolling_back: bool = False, busy: str = "") -> ItemView:
    rel = ReleaseSeen(10 + ord(app[0]), phase, f"{app} says why", rolling_back) if phase else None
    return ItemView(app=app, after=after, to_revision=2, deployed_revision=deployed, release=rel,
                    undo=ReleaseSeen(50 + ord(app[0]), undo, "back", False) if undo else None, busy=busy)


def running(max_parallel: int = 2) -> OrderView:
    return OrderView("o", OrderPhase.RUNNING, False, max_parallel)


def test_forward_starts_what_its_dependencies_allow_within_max_parallel() -> None:
    apps = [item("a"), item("b", ("a",)), item("c", ("b",)), item("d")]
    d = decide(running(2), apps)
    assert d.start == ("a", "d") and "b waits for a" in d.waiting
    assert decide(running(1), apps).start == ("a",)
    d = decide(running(2), [item("a", phase="Succeeded", deployed=2), item("b", ("a",)), item("c", ("b",)),
                            item("d", phase="Running")])
    assert d.start == ("b",) and "c waits for b" in d.waiting
    d = decide(running(2), [item("a", phase="Succeeded", deployed=2), item("b", ("a",), deployed=2)])
    assert d.unchanged == ("b",), "an app already at its target is not released again"
    d = decide(running(2), [item("a", busy="release 7 (Running, by alice)")])
    assert d.start == () and "release 7" in d.waiting


def test_forward_pauses_on_a_paused_or_failed_release_and_finishes_when_all_are_done() -> None:
    d = decide(running(), [item("a", phase="Succeeded", deployed=2), item("b", ("a",), "Paused")])
    assert d.phase is OrderPhase.PAUSED and "of b paused: b says why" in d.reason and not d.start
    d = decide(running(), [item("a", phase="Failed")])
    assert d.phase is OrderPhase.PAUSED and "ended Failed" in d.reason
    d = decide(running(), [item("a", phase="Succeeded", deployed=2), item("b", ("a",), "Succeeded", deployed=2)])
    assert d.phase is OrderPhase.SUCCEEDED


def rolling() -> OrderView:
    return OrderView("o", OrderPhase.ROLLING_BACK, True, 1)


def test_rollback_goes_in_reverse_dependency_order() -> None:
    apps = [item("a", phase="Succeeded", deployed=2), item("b", ("a",), "Paused"), item("c", ("b",)),
            item("d", phase="Succeeded", deployed=2)]
    d = decide(rolling(), apps)
    assert d.roll_back == ("b",) and d.undo == ("d",) and "a goes back after b" in d.waiting
    apps[1] = item("b", ("a",), "RollingBack")
    assert decide(rolling(), apps).undo == ("d",)
    apps[1] = item("b", ("a",), "RolledBack")
    apps[3] = item("d", phase="Succeeded", deployed=1, undo="Running")
    d = decide(rolling(), apps)
    assert d.undo == ("a",) and d.roll_back == ()
    apps[0] = item("a", phase="Succeeded", undo="Succeeded")
    apps[3] = item("d", phase="Succeeded", undo="Succeeded")
    assert decide(rolling(), apps).phase is OrderPhase.ROLLED_BACK


def test_a_rollback_that_stops_pauses_the_order() -> None:
    d = decide(rolling(), [item("a", phase="Paused", rolling_back=True)])
    assert d.phase is OrderPhase.PAUSED and "rollback of a" in d.reason
    d = decide(rolling(), [item("a", phase="Succeeded", undo="Paused")])
    assert d.phase is OrderPhase.PAUSED


def test_statistics_and_template_diffs() -> None:
    s = stats([OrderOutcome("Succeeded", 0, 10), OrderOutcome("Succeeded", 0, 30), OrderOutcome("RolledBack", 0, 20),
               OrderOutcome("Running", 0, None), OrderOutcome("PendingApproval", None, None)])
    assert s.by_phase == {"Succeeded": 2, "RolledBack": 1, "Running": 1, "PendingApproval": 1}
    assert (s.finished, s.success_rate, s.rollback_rate, s.median_duration_seconds) == (3, 0.6667, 0.3333, 20.0)
    assert stats([]).success_rate is None
    diff = template_diff({"env": {"A": "1", "B": "2"}, "command": ["x"]}, {"env": {"A": "1", "B": "3", "C": "4"},
                                                                          "command": ["x"]})
    assert diff == [("env.B", "2", "3"), ("env.C", None, "4")]
