"""Release planning: which instance is changed in which group, per cell. Pure.

A plan has an optional beta group (`betaSize` instances of every cell) and
then groups that split the rest of each cell proportionally, later groups
taking the remainder (a cautious ramp). `groups` counts every group,
including the beta group. Explicit `groupSizes` give the per-cell size of
each group instead; the last group takes whatever remains. A cell with fewer
instances than groups simply has empty groups. The executed release follows
the stored plan exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Sequence

from ballast.core.verification import Verification
from ballast.errors import FieldProblem, InvalidInput


class PauseMode(str, Enum):
    MANUAL = "manual"
    AUTO = "auto"
    NONE = "none"


class UpgradeMode(str, Enum):
    IN_PLACE = "inPlace"
    REPLACE = "replace"
    ORDERED = "ordered"


@dataclass(frozen=True)
class BetaTraffic:
    """What the new revision receives while only the first group runs it, independent of instance counts: a share
    of calls (percent), or only the calls that match (a dark launch; the match as its JSON, a hashable value)."""

    beta_weight: float | None = None
    beta_match_json: str | None = None


@dataclass(frozen=True)
class Strategy:
    beta_size: int = 1
    groups: int = 3
    group_sizes: tuple[int, ...] | None = None
    pause: PauseMode = PauseMode.MANUAL
    pause_seconds: float = 0.0
    max_unavailable_per_cell: int = 1
    upgrade: UpgradeMode = UpgradeMode.IN_PLACE
    progress_deadline_seconds: float = 120.0
    verify: Verification | None = None     # judge each group from its traffic before going on
    traffic: BetaTraffic | None = None     # route the beta group's share by rule, not by its instances


class SlotOp(str, Enum):
    UPDATE = "update"   # change the instance's revision
    ADD = "add"         # scale-out: a new instance in the cell
    REMOVE = "remove"   # scale-in: retire the instance


@dataclass(frozen=True)
class Slot:
    """One instance position in the plan; `instance` is the id it had when the release started
    (for an ADD slot, a key the created instance points at through `replaces`)."""

    instance: str
    cell: str
    ordinal: int | None = None
    op: SlotOp = SlotOp.UPDATE
    group: str = ""     # the isolation group's code; each group is its own part of every release group


@dataclass(frozen=True)
class Group:
    index: int
    name: str
    slots: tuple[Slot, ...]

    def cells(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.slots:
            out[s.cell] = out.get(s.cell, 0) + 1
        return out


def validate(strategy: Strategy, cell_sizes: dict[str, int], *, beta_within_cells: bool = True) -> None:
    problems: list[FieldProblem] = []
    if strategy.groups < 1:
        problems.append(FieldProblem("strategy.groups", strategy.groups, "at least 1"))
    if strategy.beta_size < 0:
        problems.append(FieldProblem("strategy.betaSize", strategy.beta_size, "0 or more"))
    for cell, size in sorted(cell_sizes.items()):
        if beta_within_cells and strategy.group_sizes is None and strategy.groups > 1 and strategy.beta_size > size:
            problems.append(FieldProblem("strategy.betaSize", strategy.beta_size,
                                         f"at most {size}: cell {cell} has only {size} instance(s)"))
    if strategy.group_sizes is not None:
        if not strategy.group_sizes or any(s < 0 for s in strategy.group_sizes):
            problems.append(FieldProblem("strategy.groupSizes", list(strategy.group_sizes),
                                         "a non-empty list of per-cell sizes, each 0 or more"))
    if strategy.max_unavailable_per_cell < 1:
        problems.append(FieldProblem("strategy.maxUnavailablePerCell", strategy.max_unavailable_per_cell, "at least 1"))
    if strategy.pause_seconds < 0:
        problems.append(FieldProblem("strategy.pauseSeconds", strategy.pause_seconds, "0 or more"))
    if strategy.progress_deadline_seconds <= 0:
        problems.append(FieldProblem("strategy.progressDeadlineSeconds", strategy.progress_deadline_seconds, "more than 0"))
    if problems:
        raise InvalidInput("invalid release strategy; nothing was started", problems=problems)


def per_cell_sizes(strategy: Strategy, cell_size: int) -> list[int]:
    """How many of one cell's instances each group changes (sums to cell_size)."""
    if strategy.group_sizes is not None:
        sizes, left = [], cell_size
        for want in strategy.group_sizes:
            take = min(want, left)
            sizes.append(take)
            left -= take
        sizes[-1] += left
        return sizes
    if strategy.groups == 1:
        return [cell_size]
    if strategy.beta_size == 0:
        return _split(cell_size, strategy.groups)
    beta = min(strategy.beta_size, cell_size)
    return [beta] + _split(cell_size - beta, strategy.groups - 1)


def _split(total: int, parts: int) -> list[int]:
    # Sizes differ by at most one and never shrink: the larger groups come last (a cautious ramp).
    base, extra = divmod(total, parts)
    return [base] * (parts - extra) + [base + 1] * extra


def plan(slots: Sequence[Slot], strategy: Strategy) -> list[Group]:
    """Group the app's instances. Ordered mode takes the highest ordinals first.

    The instances of an isolation group are split like a cell of their own, so every release group changes
    its share of each unit too (a unit is gray-released like the app): beta first, the ramp after.
    """
    by_part: dict[tuple[str, str], list[Slot]] = {}
    for s in slots:
        by_part.setdefault((s.cell, s.group), []).append(s)
    validate(strategy, {c: len(v) for (c, g), v in by_part.items() if not g})
    return _assemble(by_part, strategy)


def plan_scale(adds: dict[str, int], removes: Sequence[Slot], strategy: Strategy, key: str,
               ordinals: Sequence[int] = (), group_adds: dict[str, dict[str, int]] | None = None) -> list[Group]:
    """Group a change of instance counts like a release: new instances and retirements per cell.

    `key` makes the ADD slots' ids unique; `ordinals` (ordered apps) are handed to new instances in turn;
    `group_adds` are new instances of isolation groups (code → cell → count).
    A beta size larger than a cell's change is clamped: scaling by one is a beta of one.
    """
    free = iter(ordinals)
    by_part: dict[tuple[str, str], list[Slot]] = {}
    for group, counts in sorted({"": adds, **(group_adds or {})}.items()):
        for cell in sorted(counts):
            for k in range(counts[cell]):
                slot_key = f"{key}-{cell}-{k}" if not group else f"{key}-{group}-{cell}-{k}"
                by_part.setdefault((cell, group), []).append(
                    Slot(slot_key, cell, None if group else next(free, None), SlotOp.ADD, group))
    for r in removes:
        by_part.setdefault((r.cell, r.group), []).append(Slot(r.instance, r.cell, r.ordinal, SlotOp.REMOVE, r.group))
    validate(strategy, {c: len(v) for (c, g), v in by_part.items() if not g}, beta_within_cells=False)
    return _assemble(by_part, strategy, keep_order=True)


def _assemble(by_cell: dict[tuple[str, str], list[Slot]], strategy: Strategy, keep_order: bool = False) -> list[Group]:
    for members in by_cell.values() if not keep_order else ():
        if strategy.upgrade is UpgradeMode.ORDERED:
            members.sort(key=lambda s: (-(s.ordinal or 0), s.instance))
        else:
            members.sort(key=lambda s: s.instance)
    count = len(strategy.group_sizes) if strategy.group_sizes is not None else strategy.groups
    has_beta = strategy.group_sizes is None and strategy.groups > 1 and strategy.beta_size > 0
    groups: list[list[Slot]] = [[] for _ in range(count)]
    for cell in sorted(by_cell):
        members = by_cell[cell]
        start = 0
        for index, size in enumerate(per_cell_sizes(strategy, len(members))):
            groups[index].extend(members[start:start + size])
            start += size
    names = [("beta" if has_beta and i == 0 else f"group-{i if has_beta else i + 1}") for i in range(count)]
    result = [Group(i, names[i], tuple(g)) for i, g in enumerate(groups)]
    if strategy.upgrade is UpgradeMode.ORDERED:
        result = [Group(g.index, g.name, tuple(sorted(g.slots, key=lambda s: -(s.ordinal or 0)))) for g in result]
    return result
