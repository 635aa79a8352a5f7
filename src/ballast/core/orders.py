"""Release orders, pure: the dependency graph, change windows, and what the order engine does next.

A release order is one change request over several apps: each app's release runs after the releases it
depends on (`after:`) succeeded, at most `maxParallel` at a time. Rolling an order back undoes its apps in
reverse dependency order: an app goes back only once every app that depends on it is back. `decide()`
sees the order and its apps' releases as values and says which releases to start, roll back or undo, and
which phase the order moves to; the controller writes that (controllers/orders.py).
"""

from __future__ import annotations

import enum
import statistics
from dataclasses import dataclass, field
from datetime import datetime, time, timezone
from typing import Iterable, Sequence
from zoneinfo import ZoneInfo

from ballast.errors import FieldProblem


class OrderPhase(str, enum.Enum):
    PENDING_APPROVAL = "PendingApproval"
    APPROVED = "Approved"
    REJECTED = "Rejected"
    RUNNING = "Running"
    PAUSED = "Paused"
    ROLLING_BACK = "RollingBack"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"


EDITABLE = frozenset({OrderPhase.PENDING_APPROVAL, OrderPhase.APPROVED, OrderPhase.REJECTED})
ACTIVE = frozenset({OrderPhase.RUNNING, OrderPhase.PAUSED, OrderPhase.ROLLING_BACK})
FINISHED = frozenset({OrderPhase.SUCCEEDED, OrderPhase.ROLLED_BACK})

# Phases of an app release (core/release_engine.Phase values), as the order sees them.
IN_FLIGHT = frozenset({"Running", "RollingBack"})
ENDED_BADLY = frozenset({"Failed", "RolledBack"})


# --- the dependency graph ------------------------------------------------------------------------------
def graph_problems(items: Sequence[tuple[str, Sequence[str]]], where: str) -> list[FieldProblem]:
    """Each app once, every `after` an app of the order, no cycle."""
    problems: list[FieldProblem] = []
    index: dict[str, int] = {}
    for k, (app, _) in enumerate(items):
        if app in index:
            problems.append(FieldProblem(f"{where}[{k}].app", app, f"an app not already in {where}[{index[app]}]"))
        index.setdefault(app, k)
    for k, (app, after) in enumerate(items):
        for j, dep in enumerate(after):
            if dep not in index:
                problems.append(FieldProblem(f"{where}[{k}].after[{j}]", dep,
                                             "an app of this order (one of: " + ", ".join(sorted(index)) + ")"))
            elif dep == app:
                problems.append(FieldProblem(f"{where}[{k}].after[{j}]", dep, "another app: an app cannot wait for itself"))
    if problems:
        return problems
    cycle = find_cycle({app: tuple(after) for app, after in items})
    if cycle:
        problems.append(FieldProblem(f"{where}[{index[cycle[0]]}].after", list(dict(items)[cycle[0]]),
                                     "dependencies without a cycle; found " + " → ".join([*cycle, cycle[0]])))
    return problems


def find_cycle(after: dict[str, tuple[str, ...]]) -> list[str]:
    """One cycle of the `after` relation (each app waits for the next), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(app: str) -> list[str]:
        state[app] = 1
        path.append(app)
        for dep in after.get(app, ()):
            if state.get(dep) == 1:
                return path[path.index(dep):]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        state[app] = 2
        path.pop()
        return []

    for app in sorted(after):
        if app not in state:
            found = visit(app)
            if found:
                return found
    return []


def dependency_order(after: dict[str, tuple[str, ...]]) -> list[str]:
    """Apps so that each comes after everything it waits for (ties by name, so the order is stable)."""
    done: list[str] = []
    left = dict(after)
    while left:
        ready = sorted(a for a, deps in left.items() if all(d in done for d in deps))
        if not ready:
            raise ValueError("the dependencies have a cycle")
        done.extend(ready)
        for a in ready:
            del left[a]
    return done


# --- change windows --------------------------------------------------------------------------------
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class WeeklyRange:
    days: tuple[int, ...]   # 0 = Monday
    start: time
    end: time               # end <= start: the range runs past midnight into the next day; 00:00 means midnight

    def covers(self, local: datetime) -> bool:
        t, day = local.time().replace(tzinfo=None), local.weekday()
        if self.end > self.start:
            return day in self.days and self.start <= t < self.end
        return (day in self.days and t >= self.start) or ((day - 1) % 7 in self.days and t < self.end)


@dataclass(frozen=True)
class Freeze:
    start: datetime
    end: datetime
    reason: str


@dataclass(frozen=True)
class Window:
    name: str
    zone: str
    allowed: tuple[WeeklyRange, ...]      # empty: any time that is not frozen
    freezes: tuple[Freeze, ...]
    apps: tuple[str, ...] | None          # None: every app

    def applies_to(self, apps: Iterable[str]) -> bool:
        return self.apps is None or any(a in self.apps for a in apps)


@dataclass(frozen=True)
class WindowVerdict:
    allowed: bool
    reasons: tuple[str, ...]     # why not, one per window that refuses
    windows: tuple[str, ...]     # the windows that applied


def check_windows(windows: Sequence[Window], apps: Iterable[str], now: float) -> WindowVerdict:
    """An order may start only when every window that applies to one of its apps allows this moment."""
    apps = tuple(apps)
    instant = datetime.fromtimestamp(now, tz=timezone.utc)
    reasons: list[str] = []
    applied: list[str] = []
    for w in sorted(windows, key=lambda w: w.name):
        if not w.applies_to(apps):
            continue
        applied.append(w.name)
        local = instant.astimezone(ZoneInfo(w.zone))
        for f in w.freezes:
            if f.start <= instant < f.end:
                reasons.append(f"change window {w.name!r}: frozen until {f.end.astimezone(ZoneInfo(w.zone)).isoformat()}"
                               + (f" ({f.reason})" if f.reason else ""))
                break
        else:
            if w.allowed and not any(r.covers(local) for r in w.allowed):
                reasons.append(f"change window {w.name!r}: {local.strftime('%a %H:%M')} {w.zone} is outside its "
                               f"allowed times ({describe_ranges(w.allowed)})")
    return WindowVerdict(not reasons, tuple(reasons), tuple(applied))


def describe_ranges(ranges: Sequence[WeeklyRange]) -> str:
    return "; ".join(",".join(DAYS[d] for d in r.days) + f" {r.start.strftime('%H:%M')}-{r.end.strftime('%H:%M')}"
                     for r in ranges)


def parse_day(value: str) -> int:
    key = value.strip().lower()[:3]
    if key not in DAYS:
        raise ValueError(f"a day of the week ({', '.join(DAYS)})")
    return DAYS.index(key)


# --- the order engine ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseSeen:
    id: int
    phase: str
    reason: str
    rolling_back: bool = False   # the release itself is going back (its direction)


@dataclass(frozen=True)
class ItemView:
    app: str
    after: tuple[str, ...]
    to_revision: int
    deployed_revision: int | None           # None: the app was deleted
    release: ReleaseSeen | None             # the forward release the order started for this app
    undo: ReleaseSeen | None = None         # the release that took a finished app back to its old revision
    unchanged: bool = False                 # the app already ran the target when its turn came
    busy: str = ""                          # another release of this app runs (not the order's)


@dataclass(frozen=True)
class OrderView:
    name: str
    phase: OrderPhase
    rolling_back: bool
    max_parallel: int


@dataclass(frozen=True)
class OrderDecision:
    start: tuple[str, ...] = ()             # apps whose forward release starts now
    unchanged: tuple[str, ...] = ()         # apps already at their target: nothing to release
    roll_back: tuple[str, ...] = ()         # apps whose in-flight release turns round
    undo: tuple[str, ...] = ()              # apps whose finished release is undone by a release back
    phase: OrderPhase | None = None
    reason: str = ""
    waiting: str = ""


def _forward_done(item: ItemView) -> bool:
    return item.unchanged or (item.release is not None and item.release.phase == "Succeeded")


def decide(order: OrderView, items: Sequence[ItemView]) -> OrderDecision:
    if order.phase is OrderPhase.RUNNING:
        return _forward(order, items)
    if order.phase is OrderPhase.ROLLING_BACK:
        return _backward(items)
    return OrderDecision()


def _forward(order: OrderView, items: Sequence[ItemView]) -> OrderDecision:
    by_app = {i.app: i for i in items}
    for item in items:
        rel = item.release
        if rel is not None and rel.phase == "Paused":
            return OrderDecision(phase=OrderPhase.PAUSED, reason=f"release {rel.id} of {item.app} paused: {rel.reason}")
        if rel is not None and rel.phase in ENDED_BADLY:
            return OrderDecision(phase=OrderPhase.PAUSED, reason=f"release {rel.id} of {item.app} ended {rel.phase}: "
                                                                 f"{rel.reason}; resume the order to release it again")
        if item.deployed_revision is None:
            return OrderDecision(phase=OrderPhase.PAUSED, reason=f"app {item.app} was deleted during the order")
    if all(_forward_done(i) for i in items):
        return OrderDecision(phase=OrderPhase.SUCCEEDED, reason="every app runs its target revision")
    running = sum(1 for i in items if i.release is not None and i.release.phase in IN_FLIGHT)
    start: list[str] = []
    unchanged: list[str] = []
    waits: list[str] = []
    for app in dependency_order({i.app: i.after for i in items}):
        item = by_app[app]
        if item.release is not None or item.unchanged:
            continue
        blockers = [d for d in item.after if not _forward_done(by_app[d])]
        if blockers:
            waits.append(f"{app} waits for {', '.join(blockers)}")
        elif item.deployed_revision == item.to_revision:
            unchanged.append(app)
        elif item.busy:
            waits.append(f"{app} waits for {item.busy}")
        elif running + len(start) >= order.max_parallel:
            waits.append(f"{app} waits for a free slot (maxParallel {order.max_parallel})")
        else:
            start.append(app)
    return OrderDecision(start=tuple(start), unchanged=tuple(unchanged), waiting="; ".join(waits))


def _backward(items: Sequence[ItemView]) -> OrderDecision:
    dependents: dict[str, list[str]] = {i.app: [] for i in items}
    for i in items:
        for d in i.after:
            dependents[d].append(i.app)
    by_app = {i.app: i for i in items}

    def back(item: ItemView) -> bool:
        """Nothing of this app's change is left running."""
        rel, undo = item.release, item.undo
        if rel is None or rel.phase in ENDED_BADLY:
            return True
        if rel.phase == "Succeeded":
            return undo is not None and undo.phase == "Succeeded"
        return False

    for item in items:
        if item.undo is not None and item.undo.phase in ("Paused", *ENDED_BADLY):
            return OrderDecision(phase=OrderPhase.PAUSED,
                                 reason=f"release {item.undo.id} taking {item.app} back {item.undo.phase}: {item.undo.reason}")
        if item.release is not None and item.release.phase == "Paused" and item.release.rolling_back:
            return OrderDecision(phase=OrderPhase.PAUSED, reason=f"rollback of {item.app}: {item.release.reason}")
    if all(back(i) for i in items):
        return OrderDecision(phase=OrderPhase.ROLLED_BACK, reason="every app runs its revision from before the order")
    roll_back: list[str] = []
    undo: list[str] = []
    waits: list[str] = []
    for app in reversed(dependency_order({i.app: i.after for i in items})):
        item = by_app[app]
        if back(item):
            continue
        ahead = [d for d in dependents[app] if not back(by_app[d])]
        if ahead:
            waits.append(f"{app} goes back after {', '.join(ahead)}")
            continue
        rel = item.release
        assert rel is not None
        if rel.phase in ("Running", "Paused"):
            roll_back.append(app)
        elif rel.phase == "Succeeded" and item.undo is None:
            if item.busy:
                waits.append(f"{app} waits for {item.busy}")
            else:
                undo.append(app)
    return OrderDecision(roll_back=tuple(roll_back), undo=tuple(undo), waiting="; ".join(waits))


# --- statistics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrderOutcome:
    phase: str
    started_at: float | None
    finished_at: float | None


@dataclass
class OrderStats:
    by_phase: dict[str, int] = field(default_factory=dict)
    finished: int = 0
    success_rate: float | None = None
    rollback_rate: float | None = None
    median_duration_seconds: float | None = None


def stats(outcomes: Iterable[OrderOutcome]) -> OrderStats:
    out = OrderStats()
    durations: list[float] = []
    succeeded = rolled_back = 0
    for o in outcomes:
        out.by_phase[o.phase] = out.by_phase.get(o.phase, 0) + 1
        if o.phase in (OrderPhase.SUCCEEDED.value, OrderPhase.ROLLED_BACK.value):
            out.finished += 1
            succeeded += o.phase == OrderPhase.SUCCEEDED.value
            rolled_back += o.phase == OrderPhase.ROLLED_BACK.value
            if o.started_at is not None and o.finished_at is not None:
                durations.append(o.finished_at - o.started_at)
    if out.finished:
        out.success_rate = round(succeeded / out.finished, 4)
        out.rollback_rate = round(rolled_back / out.finished, 4)
    if durations:
        out.median_duration_seconds = round(statistics.median(durations), 1)
    return out


def template_diff(before: object, after: object, path: str = "") -> list[tuple[str, object, object]]:
    """Field-by-field differences of two templates: (path, before, after); absent fields are None."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[tuple[str, object, object]] = []
        for key in sorted(set(before) | set(after), key=str):
            out.extend(template_diff(before.get(key), after.get(key), f"{path}.{key}" if path else str(key)))
        return out
    return [] if before == after else [(path or "(template)", before, after)]


def utc(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")

