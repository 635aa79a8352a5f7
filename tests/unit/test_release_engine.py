"""Spec of the release engine's pure decision: `decide(release, instances, now)` on hand-built views.

Time is virtual (`NOW`); "the agent" is a few lines below that do what agents report. Instance ids carry their
cell in the first letter: a* are in cell-a, b* in cell-b.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from ballast.core.release_engine import (
    Action,
    CreateReplacement,
    Decision,
    Direction,
    InstanceView,
    Phase,
    ReleaseView,
    Retire,
    SetRevision,
    SlotKind,
    decide,
    slot_state,
)
from ballast.core.release_plan import Group, PauseMode, Slot, Strategy, UpgradeMode

NOW = 10_000.0
CELL = {"a": "cell-a", "b": "cell-b"}


def inst(id: str, rev: int = 1, *, running: int | None = -1, ready: bool = True, phase: str = "Running",
         desired: str = "running", replaces: str | None = None, changed_at: float = NOW - 3600,
         message: str = "") -> InstanceView:
    """An instance; by default it runs its desired revision and is ready."""
    return InstanceView(id=id, cell=CELL[id[0]], revision=rev, running_revision=rev if running == -1 else running,
                        ready=ready, phase=phase, desired=desired, replaces=replaces, changed_at=changed_at,
                        message=message)


def at(rev: int, *ids: str) -> dict[str, InstanceView]:
    """These instances run `rev` and are ready."""
    return {i: inst(i, rev) for i in ids}


def changing(rev: int, *ids: str, since: float = NOW - 10) -> dict[str, InstanceView]:
    """These instances were told to run `rev` at `since` and are still starting."""
    return {i: inst(i, rev, running=None, ready=False, phase="Starting", changed_at=since) for i in ids}


IDS = ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "b4"]
BETA, G1, G2 = ["a0", "b0"], ["a1", "a2", "b1", "b2"], ["a3", "a4", "b3", "b4"]


def world(*overrides: dict[str, InstanceView], without: tuple[str, ...] = ()) -> dict[str, InstanceView]:
    """The 5+5 app, every instance ready at revision 1, with the given instances overridden."""
    out = at(1, *IDS)
    for o in overrides:
        out.update(o)
    for gone in without:
        del out[gone]
    return out


def groups(*members: list[str]) -> tuple[Group, ...]:
    names = ["beta"] + [f"group-{i}" for i in range(1, len(members))]
    return tuple(Group(i, names[i], tuple(Slot(m, CELL[m[0]]) for m in ms)) for i, ms in enumerate(members))


GROUPS = groups(BETA, G1, G2)


def release(*, phase: Phase = Phase.RUNNING, direction: Direction = Direction.FORWARD, completed: int = 0,
            pause_until: float | None = None, fast: bool = False, plan: tuple[Group, ...] = GROUPS,
            **strategy: Any) -> ReleaseView:
    """Release 1 → 2 of the 5+5 app (beta a0 b0; group-1 a1 a2 b1 b2; group-2 a3 a4 b3 b4)."""
    if direction is Direction.ROLLBACK and phase is Phase.RUNNING:
        phase = Phase.ROLLING_BACK
    return ReleaseView(app="shop", from_revision=1, to_revision=2, strategy=Strategy(**strategy), groups=plan,
                       phase=phase, direction=direction, completed_groups=completed, pause_until=pause_until,
                       fast=fast, reason="")


def to(rev: int, *ids: str) -> set[Action]:
    return {SetRevision(i, rev) for i in ids}


# --- forward ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    actions: set[Action]
    phase: Phase | None = None          # None: no transition
    completed: int | None = None
    pause_until: float | None = None
    reason: tuple[str, ...] = ()        # words the transition's reason must contain


FORWARD: list[tuple[str, ReleaseView, dict[str, InstanceView], Expect]] = [
    ("start: beta changes one instance per cell",
     release(), world(), Expect(to(2, "a0", "b0"))),
    ("group-1 starts at most maxUnavailablePerCell (1) per cell",
     release(completed=1), world(at(2, *BETA)), Expect(to(2, "a1", "b1"))),
    ("maxUnavailablePerCell 2 starts two per cell",
     release(completed=1, max_unavailable_per_cell=2), world(at(2, *BETA)), Expect(to(2, "a1", "a2", "b1", "b2"))),
    ("an instance still changing uses up its cell's budget; the other cell proceeds",
     release(completed=1), world(at(2, *BETA), changing(2, "a1")), Expect(to(2, "b1"))),
    ("a changed instance that is ready frees its cell's budget",
     release(completed=1), world(at(2, *BETA, "a1"), changing(2, "b1")), Expect(to(2, "a2"))),
    ("nothing new while every cell is at its budget",
     release(completed=1), world(at(2, *BETA), changing(2, "a1", "b1")), Expect(set())),
    ("beta done, pause manual: Paused with completed_groups advanced",
     release(), world(at(2, *BETA)), Expect(set(), Phase.PAUSED, 1, reason=("beta done", "group-1"))),
    ("beta done, pause auto: Running until now + pauseSeconds",
     release(pause=PauseMode.AUTO, pause_seconds=30), world(at(2, *BETA)),
     Expect(set(), Phase.RUNNING, 1, pause_until=NOW + 30)),
    ("beta done, pause none: Running straight on",
     release(pause=PauseMode.NONE), world(at(2, *BETA)), Expect(set(), Phase.RUNNING, 1)),
    ("during an automatic pause nothing starts",
     release(completed=1, pause=PauseMode.AUTO, pause_seconds=30, pause_until=NOW + 5), world(at(2, *BETA)),
     Expect(set())),
    ("after an automatic pause the next group starts",
     release(completed=1, pause=PauseMode.AUTO, pause_seconds=30, pause_until=NOW - 1), world(at(2, *BETA)),
     Expect(to(2, "a1", "b1"))),
    ("group-1 done, manual: Paused before group-2",
     release(completed=1), world(at(2, *BETA, *G1)), Expect(set(), Phase.PAUSED, 2, reason=("group-1 done",))),
    ("last group done: Succeeded",
     release(completed=2), world(at(2, *IDS)), Expect(set(), Phase.SUCCEEDED, 3)),
    ("paused between groups: nothing starts",
     release(phase=Phase.PAUSED, completed=1), world(at(2, *BETA)), Expect(set())),
    ("paused mid-group: the change in progress is left alone, nothing new starts",
     release(phase=Phase.PAUSED, completed=1), world(at(2, *BETA), changing(2, "a1")), Expect(set())),
    ("an updated instance in BackOff pauses the release, naming it",
     release(), world({"a0": inst("a0", 2, ready=False, phase="BackOff", message="exit status 3")}, changing(2, "b0")),
     Expect(set(), Phase.PAUSED, reason=("a0", "BackOff", "exit status 3"))),
    ("an updated instance failing its health check pauses the release",
     release(), world({"a0": inst("a0", 2, ready=False, phase="Unhealthy", message="GET /health: 503")},
                      changing(2, "b0")),
     Expect(set(), Phase.PAUSED, reason=("a0", "Unhealthy", "503"))),
    ("a failure stops every new start, in every cell",
     release(completed=1), world(at(2, *BETA, "b1"), {"a1": inst("a1", 2, ready=False, phase="Failed")}),
     Expect(set(), Phase.PAUSED, reason=("a1", "Failed"))),
    ("a failure seen while paused does not transition again",
     release(phase=Phase.PAUSED), world({"a0": inst("a0", 2, ready=False, phase="BackOff")}, changing(2, "b0")),
     Expect(set())),
    ("not ready within progressDeadlineSeconds: Paused, naming the instance and the deadline",
     release(), world(changing(2, "a0", since=NOW - 121), changing(2, "b0")),
     Expect(set(), Phase.PAUSED, reason=("a0", "120s"))),
    ("just within progressDeadlineSeconds: still waiting",
     release(), world(changing(2, "a0", since=NOW - 119), changing(2, "b0")), Expect(set())),
    ("an instance that no longer exists counts as done",
     release(), world(at(2, "b0"), without=("a0",)), Expect(set(), Phase.PAUSED, 1)),
    ("a release already past its last group is Succeeded",
     release(completed=3), world(at(2, *IDS)), Expect(set(), Phase.SUCCEEDED)),
]


@pytest.mark.parametrize(("rel", "instances", "expect"), [c[1:] for c in FORWARD], ids=[c[0] for c in FORWARD])
def test_forward_decisions(rel: ReleaseView, instances: dict[str, InstanceView], expect: Expect) -> None:
    """Forward: what starts, and which transition follows, from the observed instances alone."""
    check(decide(rel, instances, NOW), expect)


def check(decision: Decision, expect: Expect) -> None:
    assert set(decision.actions) == expect.actions
    assert len(decision.actions) == len(expect.actions), "an action was issued twice"
    if expect.phase is None:
        assert decision.transition is None
        return
    t = decision.transition
    assert t is not None and t.phase is expect.phase, t
    assert (t.completed_groups, t.pause_until) == (expect.completed, expect.pause_until)
    for word in expect.reason:
        assert word in t.reason, t.reason


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK])
def test_finished_releases_decide_nothing(phase: Phase) -> None:
    """A release that has ended never touches instances again."""
    assert decide(release(phase=phase), world(), NOW) == Decision()


# --- rollback --------------------------------------------------------------------------------------------------------

INSIDE_GROUP_1 = world(at(2, *BETA, "a1"), changing(2, "b1"))

ROLLBACK: list[tuple[str, ReleaseView, dict[str, InstanceView], Expect]] = [
    ("inside group-1: group-1's changed instances go back first, beta waits",
     release(direction=Direction.ROLLBACK, completed=1), INSIDE_GROUP_1, Expect(to(1, "a1", "b1"))),
    ("group-1 going back: beta still waits",
     release(direction=Direction.ROLLBACK, completed=1), world(at(2, *BETA), changing(1, "a1"), at(2, "b1")),
     Expect(to(1, "b1"))),
    ("group-1 back at the old revision: then beta",
     release(direction=Direction.ROLLBACK, completed=1), world(at(2, *BETA)), Expect(to(1, "a0", "b0"))),
    ("every instance back: RolledBack",
     release(direction=Direction.ROLLBACK, completed=1), world(), Expect(set(), Phase.ROLLED_BACK)),
    ("maxUnavailablePerCell holds while rolling back",
     release(direction=Direction.ROLLBACK, completed=1), world(at(2, *BETA, *G1)), Expect(to(1, "a1", "b1"))),
    ("fast: every changed instance of every touched group at once",
     release(direction=Direction.ROLLBACK, completed=1, fast=True), world(at(2, *BETA, *G1)),
     Expect(to(1, *BETA, *G1))),
    ("only touched groups: trouble in an untouched group does not hold the rollback",
     release(direction=Direction.ROLLBACK, completed=1), world({"a3": inst("a3", 1, ready=False, phase="BackOff")}),
     Expect(set(), Phase.ROLLED_BACK)),
    ("a rollback paused by a user starts nothing",
     release(direction=Direction.ROLLBACK, phase=Phase.PAUSED, completed=1), INSIDE_GROUP_1, Expect(set())),
    ("an instance failing at the old revision pauses the rollback, naming it",
     release(direction=Direction.ROLLBACK, completed=1),
     world(at(2, *BETA), {"a1": inst("a1", 1, ready=False, phase="BackOff")}),
     Expect(set(), Phase.PAUSED, reason=("rollback of group-1", "a1", "BackOff"))),
    ("an instance gone while rolling back counts as done",
     release(direction=Direction.ROLLBACK, completed=0), world(at(2, "b0"), without=("a0",)), Expect(to(1, "b0"))),
]


@pytest.mark.parametrize(("rel", "instances", "expect"), [c[1:] for c in ROLLBACK], ids=[c[0] for c in ROLLBACK])
def test_rollback_decisions(rel: ReleaseView, instances: dict[str, InstanceView], expect: Expect) -> None:
    """Rollback: reverse group order, only groups the release touched, fast = all at once."""
    check(decide(rel, instances, NOW), expect)


# --- replace mode ----------------------------------------------------------------------------------------------------


def agent_applies(actions: tuple[Action, ...], instances: dict[str, InstanceView],
                  now: float = NOW) -> dict[str, InstanceView]:
    """What the release controller writes for these actions (idempotently, like the store's guarded updates)."""
    out = dict(instances)
    for a in actions:
        if isinstance(a, SetRevision) and out[a.instance].revision != a.revision:
            out[a.instance] = replace(out[a.instance], revision=a.revision, changed_at=now)
        elif isinstance(a, Retire) and out[a.instance].desired == "running":
            out[a.instance] = replace(out[a.instance], desired="deleted", changed_at=now)
        elif isinstance(a, CreateReplacement) and not any(i.replaces == a.replaces for i in out.values()):
            new = a.replaces + "+"
            out[new] = inst(new, a.revision, running=None, ready=False, phase="Pending", replaces=a.replaces,
                            changed_at=now)
    return out


def agent_runs_desired(instances: dict[str, InstanceView], *ids: str) -> dict[str, InstanceView]:
    """The agents report these instances ready at their desired revision."""
    return {**instances, **{i: inst(i, instances[i].revision, replaces=instances[i].replaces,
                                    desired=instances[i].desired, changed_at=instances[i].changed_at) for i in ids}}


def test_replace_mode_creates_a_replacement_then_retires_the_old_once_it_is_ready() -> None:
    """Replace: a surge instance at the new revision first; the old one is retired only after it is ready."""
    rel = release(upgrade=UpgradeMode.REPLACE)
    first = decide(rel, world(), NOW)
    assert set(first.actions) == {CreateReplacement("a0", "cell-a", 2), CreateReplacement("b0", "cell-b", 2)}
    assert first.transition is None

    created = agent_applies(first.actions, world())
    assert {"a0+", "b0+"} <= set(created)
    waiting = decide(rel, created, NOW + 1)
    assert (waiting.actions, waiting.transition) == ((), None), "replacements not ready yet: nothing to do"

    ready = agent_runs_desired(created, "a0+")
    assert decide(rel, ready, NOW + 2).actions == (Retire("a0"),)

    retired = agent_applies((Retire("a0"),), ready)
    assert decide(rel, retired, NOW + 3).actions == ()
    both = agent_runs_desired(retired, "b0+")
    finishing = decide(rel, both, NOW + 4)
    assert finishing.actions == (Retire("b0"),) and finishing.transition is None

    gone = {k: v for k, v in agent_applies(finishing.actions, both).items() if k not in ("a0", "b0")}
    done = decide(rel, gone, NOW + 5)
    assert done.actions == () and done.transition is not None
    assert (done.transition.phase, done.transition.completed_groups) == (Phase.PAUSED, 1)


def test_replace_mode_finishes_retirements_while_paused_but_creates_nothing() -> None:
    """Paused: a replacement that is ready still retires its old instance; no new replacement is begun."""
    state = world({"a0+": inst("a0+", 2, replaces="a0", changed_at=NOW - 5)})
    decision = decide(release(upgrade=UpgradeMode.REPLACE, phase=Phase.PAUSED), state, NOW)
    assert decision.actions == (Retire("a0"),)
    assert decision.transition is None


@pytest.mark.parametrize("upgrade", [UpgradeMode.IN_PLACE, UpgradeMode.REPLACE])
def test_deciding_again_after_a_crash_repeats_nothing(upgrade: UpgradeMode) -> None:
    """Crash safety: deciding twice on one state gives one answer, and once its actions are written (the
    transition lost in a crash) the next decision begins no change a second time."""
    rel = release(completed=1, upgrade=upgrade)
    state = world(at(2, *BETA)) if upgrade is UpgradeMode.IN_PLACE else world(
        {"a0+": inst("a0+", 2, replaces="a0"), "b0+": inst("b0+", 2, replaces="b0")},
        {"a0": inst("a0", desired="deleted"), "b0": inst("b0", desired="deleted")})
    first = decide(rel, state, NOW)
    assert first.actions and decide(rel, state, NOW) == first
    after = agent_applies(first.actions, state)
    again = decide(rel, after, NOW + 1)
    assert not set(again.actions) & set(first.actions), again.actions
    assert again.actions == (), "with the budget in use nothing else may start"


def test_rollback_in_replace_mode_creates_a_replacement_at_the_old_revision() -> None:
    """Rolling back a replaced instance creates another replacement, at the old revision, then retires the new one."""
    state = world({"a0+": inst("a0+", 2, replaces="a0")}, without=("a0",))
    rel = release(upgrade=UpgradeMode.REPLACE, direction=Direction.ROLLBACK, completed=0)
    first = decide(rel, state, NOW)
    assert first.actions == (CreateReplacement("a0+", "cell-a", 1),)
    back = agent_runs_desired(agent_applies(first.actions, state), "a0++")
    assert decide(rel, back, NOW + 1).actions == (Retire("a0+"),)
    finished = decide(rel, agent_applies((Retire("a0+"),), back), NOW + 2)
    assert finished.transition is not None and finished.transition.phase is Phase.ROLLED_BACK


# --- ordered mode ----------------------------------------------------------------------------------------------------

ORDERED = tuple(Group(i, name, tuple(Slot(f"{'a' if n % 2 == 0 else 'b'}{n}", CELL["a" if n % 2 == 0 else "b"], n)
                                     for n in ordinals))
                for i, (name, ordinals) in enumerate([("beta", [9, 8]), ("group-1", [7, 6, 5, 4]),
                                                      ("group-2", [3, 2, 1, 0])]))
ORDERED_IDS = [s.instance for g in ORDERED for s in g.slots]


def test_ordered_mode_changes_one_instance_at_a_time_globally_highest_first() -> None:
    """Ordered: one instance at a time across all cells (even with a larger budget), highest ordinal first."""
    rel = release(plan=ORDERED, upgrade=UpgradeMode.ORDERED, max_unavailable_per_cell=5, pause=PauseMode.NONE)
    state = at(1, *ORDERED_IDS)
    order: list[str] = []
    for step in range(40):
        decision = decide(rel, state, NOW + step)
        assert len(decision.actions) <= 1, decision.actions
        changed = [a.instance for a in decision.actions if isinstance(a, SetRevision)]
        order += changed
        state = agent_applies(decision.actions, state, NOW + step)
        if not changed:  # the agent catches up only when nothing new was started this step
            state = agent_runs_desired(state, *[i for i, v in state.items() if v.running_revision != v.revision])
        if decision.transition is not None:
            t = decision.transition
            rel = replace(rel, phase=t.phase, completed_groups=t.completed_groups or rel.completed_groups)
            if t.phase is Phase.SUCCEEDED:
                break
    assert rel.phase is Phase.SUCCEEDED
    assert order == ["b9", "a8", "b7", "a6", "b5", "a4", "b3", "a2", "b1", "a0"]


def test_ordered_rollback_is_one_at_a_time_too() -> None:
    """Rolling back an ordered release also moves one instance at a time."""
    rel = release(plan=ORDERED, upgrade=UpgradeMode.ORDERED, direction=Direction.ROLLBACK, completed=1)
    state = {**at(1, *ORDERED_IDS), **at(2, "b9", "a8", "b7", "a6")}
    assert decide(rel, state, NOW).actions == (SetRevision("b7", 1),)


# --- a whole release, driven with an obedient agent ------------------------------------------------------------------


def test_the_issue_example_runs_group_by_group_with_at_most_one_per_cell_changing() -> None:
    """5+5, beta + 3 groups, manual pauses: each pass starts at most one per cell; pauses after beta and group-1."""
    rel, state = release(), world()
    passes: list[tuple[str, ...]] = []
    for step in range(30):
        decision = decide(rel, state, NOW + step)
        started = tuple(sorted(a.instance for a in decision.actions if isinstance(a, SetRevision)))
        if started:
            passes.append(started)
        state = agent_runs_desired(agent_applies(decision.actions, state, NOW + step), *started)
        t = decision.transition
        if t is not None:
            passes.append(t.phase.value)
            rel = replace(rel, phase=t.phase, completed_groups=t.completed_groups or rel.completed_groups)
            if t.phase is Phase.PAUSED:
                rel = replace(rel, phase=Phase.RUNNING)  # a user resumes
            if t.phase is Phase.SUCCEEDED:
                break
    assert passes == [("a0", "b0"), "Paused",
                      ("a1", "b1"), ("a2", "b2"), "Paused",
                      ("a3", "b3"), ("a4", "b4"), "Succeeded"]
    assert {i.revision for i in state.values()} == {2}


# --- slot state ------------------------------------------------------------------------------------------------------

SLOTS: list[tuple[str, UpgradeMode, dict[str, InstanceView], SlotKind, str | None]] = [
    ("not yet changed", UpgradeMode.IN_PLACE, at(1, "a0"), SlotKind.TODO, "a0"),
    ("told, still starting", UpgradeMode.IN_PLACE, changing(2, "a0"), SlotKind.PROGRESS, "a0"),
    ("ready at the target", UpgradeMode.IN_PLACE, at(2, "a0"), SlotKind.DONE, "a0"),
    ("running the target but not ready", UpgradeMode.IN_PLACE, {"a0": inst("a0", 2, ready=False, changed_at=NOW - 5)},
     SlotKind.PROGRESS, "a0"),
    ("BackOff at the target", UpgradeMode.IN_PLACE, {"a0": inst("a0", 2, ready=False, phase="BackOff")},
     SlotKind.FAILED, "a0"),
    ("gone", UpgradeMode.IN_PLACE, {}, SlotKind.DONE, None),
    ("replace: replacement ready, old still running", UpgradeMode.REPLACE,
     {**at(1, "a0"), "a0+": inst("a0+", 2, replaces="a0")}, SlotKind.PROGRESS, "a0+"),
    ("replace: replacement ready, old retired", UpgradeMode.REPLACE,
     {"a0": inst("a0", desired="deleted"), "a0+": inst("a0+", 2, replaces="a0")}, SlotKind.DONE, "a0+"),
]


@pytest.mark.parametrize(("mode", "instances", "kind", "holder"), [c[1:] for c in SLOTS], ids=[c[0] for c in SLOTS])
def test_slot_state(mode: UpgradeMode, instances: dict[str, InstanceView], kind: SlotKind, holder: str | None) -> None:
    """A slot's state toward revision 2 follows from its instances alone."""
    st = slot_state(Slot("a0", "cell-a"), 2, mode, instances, NOW, 120.0)
    assert (st.kind, st.holder) == (kind, holder)


def test_rolling_back_an_unfinished_replacement_retires_it_and_keeps_the_original() -> None:
    """Replace mode: a replacement not yet ready is simply retired on rollback; the original keeps serving."""
    from ballast.core.release_engine import InstanceView, Retire, SlotKind, slot_state
    from ballast.core.release_plan import Slot, UpgradeMode

    original = InstanceView("shop-a", "cell-a", 1, 1, True, "Running", "running", None, 0.0)
    replacement = InstanceView("shop-b", "cell-a", 2, 2, False, "Starting", "running", "shop-a", 1.0)
    state = slot_state(Slot("shop-a", "cell-a"), 1, UpgradeMode.REPLACE,
                       {"shop-a": original, "shop-b": replacement}, now=2.0, deadline=120.0, rollback=True)
    assert state.kind is SlotKind.PROGRESS and state.finish == (Retire("shop-b"),) and not state.start
    retired = InstanceView("shop-b", "cell-a", 2, 2, False, "Stopping", "deleted", "shop-a", 1.0)
    after = slot_state(Slot("shop-a", "cell-a"), 1, UpgradeMode.REPLACE,
                       {"shop-a": original, "shop-b": retired}, now=3.0, deadline=120.0, rollback=True)
    assert after.kind is SlotKind.DONE and after.holder == "shop-a"
