"""The release engine's decision, as a pure function of (release, observed instances, now).

Nothing here remembers events: every pass derives each slot's state from the
instance records (desired revision, running revision, readiness, the
`replaces` chain), so a control plane killed at any line and restarted
decides the same next step and never changes an instance twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Mapping, Sequence

from ballast.core.release_plan import Group, PauseMode, Slot, SlotOp, Strategy, UpgradeMode
from ballast.core.verification import OnFailure, Verdict

FAILING_PHASES = ("BackOff", "Failed", "Unhealthy")


class Phase(str, Enum):
    RUNNING = "Running"
    PAUSED = "Paused"
    ROLLING_BACK = "RollingBack"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"


ACTIVE_PHASES = (Phase.RUNNING, Phase.PAUSED, Phase.ROLLING_BACK)


class Direction(str, Enum):
    FORWARD = "forward"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class ReleaseView:
    app: str
    from_revision: int
    to_revision: int
    strategy: Strategy
    groups: tuple[Group, ...]
    phase: Phase
    direction: Direction
    completed_groups: int
    pause_until: float | None = None
    fast: bool = False
    reason: str = ""


@dataclass(frozen=True)
class InstanceView:
    id: str
    cell: str
    revision: int                 # desired
    running_revision: int | None  # what the agent reports running
    ready: bool
    phase: str
    desired: str                  # running | deleted
    replaces: str | None
    changed_at: float             # when the desired revision last changed (or the instance was created)
    message: str = ""
    serving: bool = True          # its endpoint is ready and every traffic component has added it
    blocked: str = ""             # why its drain or its return to traffic is stuck (a component is silent)


@dataclass(frozen=True)
class GroupCheck:
    """The newest live verification of a group (an abandoned attempt is none): its verdict, and whether a person
    resumed the release past it."""

    verdict: Verdict
    summary: str = ""
    window_end: float | None = None
    accepted_by: str | None = None


# --- actions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SetRevision:
    instance: str
    revision: int


@dataclass(frozen=True)
class CreateReplacement:
    replaces: str
    cell: str
    revision: int
    ordinal: int | None = None
    group: str = ""      # the isolation group of the slot (an existing instance's own group wins)


@dataclass(frozen=True)
class Retire:
    instance: str


Action = SetRevision | CreateReplacement | Retire


@dataclass(frozen=True)
class Transition:
    phase: Phase
    reason: str
    completed_groups: int | None = None
    pause_until: float | None = None
    direction: Direction | None = None


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...] = ()
    transition: Transition | None = None
    waiting: str = ""


# --- slot state --------------------------------------------------------------------------
class SlotKind(str, Enum):
    DONE = "done"
    TODO = "waiting"
    PROGRESS = "in progress"
    FAILED = "failed"


@dataclass(frozen=True)
class SlotState:
    kind: SlotKind
    holder: str | None
    start: tuple[Action, ...] = ()    # what begins the change of this slot
    finish: tuple[Action, ...] = ()   # what completes a change already begun (safe while paused)
    reason: str = ""


def chain(slot: Slot, instances: Mapping[str, InstanceView]) -> list[InstanceView]:
    """The slot's instances, oldest first: the original and each replacement after it."""
    successor = {i.replaces: i for i in sorted(instances.values(), key=lambda i: i.changed_at) if i.replaces}
    out: list[InstanceView] = []
    current_id: str | None = slot.instance
    seen: set[str] = set()
    while current_id is not None and current_id not in seen:
        seen.add(current_id)
        if current_id in instances:
            out.append(instances[current_id])
        nxt = successor.get(current_id)
        current_id = nxt.id if nxt is not None else None
    return out


def _at(inst: InstanceView, revision: int) -> bool:
    """Done: running the revision, healthy, and back in traffic everywhere it is routed."""
    return inst.running_revision == revision and inst.ready and inst.phase == "Running" and inst.serving


def _trouble(inst: InstanceView, revision: int, now: float, deadline: float) -> str | None:
    if inst.blocked:
        return f"instance {inst.id}: {inst.blocked}"
    if inst.running_revision == revision and inst.phase in FAILING_PHASES:
        return f"instance {inst.id} is {inst.phase} at revision {revision}: {inst.message or 'no detail'}"
    if now - inst.changed_at > deadline:
        return f"instance {inst.id} not ready at revision {revision} within {deadline:g}s ({inst.phase}: {inst.message or 'no detail'})"
    return None


def slot_state(slot: Slot, target: int, mode: UpgradeMode, instances: Mapping[str, InstanceView],
               now: float, deadline: float, rollback: bool = False) -> SlotState:
    if slot.op is not SlotOp.UPDATE:
        return _scale_slot_state(slot, target, instances, now, deadline, rollback)
    members = chain(slot, instances)
    if not members:
        return SlotState(SlotKind.DONE, None, reason="instance no longer exists")
    latest = members[-1]
    if mode is UpgradeMode.REPLACE:
        running = [m for m in members if m.desired == "running"]
        latest = running[-1] if running else latest
        if latest.revision != target:
            keep = [m for m in running[:-1] if m.revision == target]
            if keep:
                # Rolling back a replacement begun but not finished: the original still runs; retire the new one.
                return SlotState(SlotKind.PROGRESS, keep[-1].id, finish=(Retire(latest.id),))
            return SlotState(SlotKind.TODO, latest.id, start=(CreateReplacement(latest.id, slot.cell, target,
                                                                                       group=slot.group),))
        if _at(latest, target):
            retire = tuple(Retire(m.id) for m in running if m.id != latest.id)
            return SlotState(SlotKind.PROGRESS if retire else SlotKind.DONE, latest.id, finish=retire)
    else:
        if latest.revision != target:
            return SlotState(SlotKind.TODO, latest.id, start=(SetRevision(latest.id, target),))
        if _at(latest, target):
            return SlotState(SlotKind.DONE, latest.id)
    trouble = _trouble(latest, target, now, deadline)
    if trouble:
        return SlotState(SlotKind.FAILED, latest.id, reason=trouble)
    return SlotState(SlotKind.PROGRESS, latest.id, reason=f"{latest.id}: {latest.phase}")


def _scale_slot_state(slot: Slot, target: int, instances: Mapping[str, InstanceView], now: float, deadline: float,
                      rollback: bool) -> SlotState:
    """ADD and REMOVE slots; rolling back undoes them (retire what was added, recreate what was removed)."""
    members = chain(slot, instances)
    latest = members[-1] if members else None
    adding = (slot.op is SlotOp.ADD) != rollback
    if not adding:
        victims = [m for m in members if m.desired == "running"]
        if not victims:
            return SlotState(SlotKind.DONE, None)
        return SlotState(SlotKind.TODO, victims[-1].id, start=tuple(Retire(m.id) for m in victims))
    if latest is None or latest.desired != "running":
        replaces = latest.id if latest is not None else slot.instance
        return SlotState(SlotKind.TODO, None, start=(CreateReplacement(replaces, slot.cell, target, slot.ordinal,
                                                                                  slot.group),))
    if latest.id == slot.instance or _at(latest, target):
        return SlotState(SlotKind.DONE, latest.id)
    trouble = _trouble(latest, target, now, deadline)
    if trouble:
        return SlotState(SlotKind.FAILED, latest.id, reason=trouble)
    return SlotState(SlotKind.PROGRESS, latest.id, reason=f"{latest.id}: {latest.phase}")


# --- the decision ------------------------------------------------------------------------
def _work_on(slots: Sequence[Slot], states: Sequence[SlotState], strategy: Strategy, unlimited: bool,
             may_start: bool) -> list[Action]:
    """Finish what is begun; begin more while each cell stays within its unavailability budget."""
    actions: list[Action] = [a for st in states for a in st.finish]
    if not may_start:
        return actions
    ordered = strategy.upgrade is UpgradeMode.ORDERED
    busy: dict[str, int] = {}
    for slot, st in zip(slots, states):
        if st.kind in (SlotKind.PROGRESS, SlotKind.FAILED):
            key = "*" if ordered else slot.cell
            busy[key] = busy.get(key, 0) + 1
    budget = 1 if ordered else strategy.max_unavailable_per_cell
    for slot, st in zip(slots, states):
        if st.kind is not SlotKind.TODO:
            continue
        key = "*" if ordered else slot.cell
        if unlimited or busy.get(key, 0) < budget:
            actions.extend(st.start)
            busy[key] = busy.get(key, 0) + 1
    return actions


def _states(group: Group, target: int, release: ReleaseView, instances: Mapping[str, InstanceView],
            now: float) -> list[SlotState]:
    rollback = release.direction is Direction.ROLLBACK
    return [slot_state(s, target, release.strategy.upgrade, instances, now, release.strategy.progress_deadline_seconds,
                       rollback) for s in group.slots]


def decide(release: ReleaseView, instances: Mapping[str, InstanceView], now: float,
           checks: Mapping[int, GroupCheck] | None = None) -> Decision:
    """The next step. `checks` holds the newest live verification of each group (by group index)."""
    if release.phase not in ACTIVE_PHASES:
        return Decision()
    if release.direction is Direction.ROLLBACK:
        return _decide_rollback(release, instances, now)
    return _decide_forward(release, instances, now, checks or {})


def verifies(release: ReleaseView) -> bool:
    """Groups are judged from their traffic: the strategy asks for it and the revision changes (a scale or an
    evacuation has no new revision to compare with the old)."""
    return release.strategy.verify is not None and release.to_revision != release.from_revision


def verification_due(release: ReleaseView, instances: Mapping[str, InstanceView], now: float) -> Group | None:
    """The group whose traffic must be judged now: the current group going forward, every instance of it done."""
    if not verifies(release) or release.direction is not Direction.FORWARD or release.phase not in (
            Phase.RUNNING, Phase.PAUSED) or release.completed_groups >= len(release.groups):
        return None
    group = release.groups[release.completed_groups]
    if not group.slots:
        return None
    states = _states(group, release.to_revision, release, instances, now)
    return group if all(st.kind is SlotKind.DONE for st in states) else None


def _verdict_step(release: ReleaseView, group: Group, check: GroupCheck | None, now: float) -> Transition | str | None:
    """What a group's verification says: wait (a reason), stop (a transition), or go on (None)."""
    if check is None or check.verdict in (Verdict.VERIFYING, Verdict.ABANDONED):
        # A stable text (the window's end, not the seconds left): the release is written only when it changes.
        until = (f" until {datetime.fromtimestamp(check.window_end, timezone.utc):%H:%M:%S} UTC"
                 if check and check.window_end and check.verdict is Verdict.VERIFYING else "")
        return f"{group.name} done; verifying its traffic{until}"
    if check.verdict is Verdict.PASSED or check.accepted_by:
        return None
    assert release.strategy.verify is not None
    if check.verdict is Verdict.FAILED and release.strategy.verify.on_failure is OnFailure.ROLLBACK:
        return Transition(Phase.ROLLING_BACK, f"verification of {group.name} {check.summary}; rolling back "
                                              f"automatically to revision {release.from_revision}",
                          direction=Direction.ROLLBACK)
    return Transition(Phase.PAUSED, f"verification of {group.name} {check.summary}; resume to accept it "
                                    "(--reverify to judge a new window), or roll back")


def _decide_forward(release: ReleaseView, instances: Mapping[str, InstanceView], now: float,
                    checks: Mapping[int, GroupCheck]) -> Decision:
    index = release.completed_groups
    if index >= len(release.groups):
        return Decision(transition=Transition(Phase.SUCCEEDED, f"all {len(release.groups)} groups at revision {release.to_revision}"))
    group = release.groups[index]
    states = _states(group, release.to_revision, release, instances, now)
    paused = release.phase is Phase.PAUSED
    waiting_auto = release.pause_until is not None and now < release.pause_until
    failed = [st for st in states if st.kind is SlotKind.FAILED]
    # A failure stops every new start, in every cell: the release pauses and never continues on its own. A fast
    # release (a rollback after the fact with --fast) changes the whole group at once.
    actions = _work_on(group.slots, states, release.strategy, unlimited=release.fast,
                       may_start=not paused and not waiting_auto and not failed)
    if failed and not paused:
        return Decision(tuple(actions), Transition(Phase.PAUSED, f"{group.name}: {failed[0].reason}; paused, never continued on failure"))
    if paused:
        return Decision(tuple(actions), waiting=release.reason or "paused; resume to continue")
    if waiting_auto:
        return Decision(tuple(actions), waiting=f"automatic pause before {group.name} until {release.pause_until:.0f}")
    if all(st.kind is SlotKind.DONE for st in states):
        accepted = False
        if verifies(release) and group.slots:
            step = _verdict_step(release, group, checks.get(index), now)
            if isinstance(step, str):
                return Decision(tuple(actions), waiting=step)
            if isinstance(step, Transition):
                return Decision(tuple(actions), step)
            accepted = bool(checks[index].accepted_by)
        done = index + 1
        while done < len(release.groups) and not release.groups[done].slots:
            done += 1  # an empty group has nothing to verify: no pause before it
        if done == len(release.groups):
            return Decision(tuple(actions), Transition(Phase.SUCCEEDED, f"all {done} groups at revision {release.to_revision}",
                                                       completed_groups=done))
        nxt = release.groups[done].name
        # A person who resumed past a verdict has decided on this group: no second pause for it.
        mode = PauseMode.NONE if accepted else release.strategy.pause
        if mode is PauseMode.MANUAL:
            return Decision(tuple(actions), Transition(Phase.PAUSED, f"{group.name} done; resume to start {nxt}",
                                                       completed_groups=done))
        until = now + release.strategy.pause_seconds if mode is PauseMode.AUTO else None
        return Decision(tuple(actions), Transition(Phase.RUNNING, f"{group.name} done; starting {nxt}",
                                                   completed_groups=done, pause_until=until))
    busy = sum(1 for st in states if st.kind is not SlotKind.DONE)
    return Decision(tuple(actions), waiting=f"{group.name}: {busy} instance(s) changing or waiting")


def _decide_rollback(release: ReleaseView, instances: Mapping[str, InstanceView], now: float) -> Decision:
    target = release.from_revision
    last = min(release.completed_groups, len(release.groups) - 1)
    touched = list(reversed(release.groups[:last + 1]))
    paused = release.phase is Phase.PAUSED
    if release.fast:
        slots = [s for g in touched for s in g.slots]
        states = [st for g in touched for st in _states(g, target, release, instances, now)]
        failing = any(st.kind is SlotKind.FAILED for st in states)
        actions = _work_on(slots, states, release.strategy, unlimited=True, may_start=not paused and not failing)
        pending = [st for st in states if st.kind is not SlotKind.DONE]
        name = "all groups"
    else:
        actions, pending, states, name = [], [], [], ""
        for group in touched:  # reverse group order: the newest changes go back first
            states = _states(group, target, release, instances, now)
            pending = [st for st in states if st.kind is not SlotKind.DONE]
            if pending:
                failing = any(st.kind is SlotKind.FAILED for st in states)
                actions = _work_on(group.slots, states, release.strategy, unlimited=False,
                                   may_start=not paused and not failing)
                name = group.name
                break
    if not pending:
        return Decision(tuple(actions), Transition(Phase.ROLLED_BACK, f"every instance back at revision {target}"))
    failed = [st for st in pending if st.kind is SlotKind.FAILED]
    if failed and not paused:
        return Decision(tuple(actions), Transition(Phase.PAUSED, f"rollback of {name}: {failed[0].reason}"))
    if paused:
        return Decision(tuple(actions), waiting=release.reason or "rollback paused; resume to continue")
    return Decision(tuple(actions), waiting=f"rolling back {name}: {len(pending)} instance(s) to revision {target}")



