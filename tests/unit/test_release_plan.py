"""Spec of the pure release planner: which instance of which cell each group changes."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ballast.core.release_plan import Group, Slot, Strategy, UpgradeMode, plan
from ballast.errors import InvalidInput


def fleet(**sizes: int) -> list[Slot]:
    """`fleet(a=5, b=5)`: slots a-00..a-04 in cell a and b-00..b-04 in cell b (ids sort like their numbers)."""
    return [Slot(f"{cell}-{n:02d}", cell) for cell, size in sizes.items() for n in range(size)]


def shape(groups: list[Group]) -> list[tuple[str, dict[str, int]]]:
    """Each group as (name, instances per cell), cells with nothing to change left out."""
    return [(g.name, g.cells()) for g in groups]


def ids(group: Group) -> list[str]:
    return [s.instance for s in group.slots]


def test_the_issue_example_five_plus_five_with_beta_and_three_groups() -> None:
    """10 instances over two cells, beta + 3 groups: beta 1+1, group-1 2+2, group-2 2+2, in a stable order."""
    groups = plan(fleet(a=5, b=5), Strategy(beta_size=1, groups=3))
    assert shape(groups) == [("beta", {"a": 1, "b": 1}), ("group-1", {"a": 2, "b": 2}), ("group-2", {"a": 2, "b": 2})]
    assert [ids(g) for g in groups] == [
        ["a-00", "b-00"],
        ["a-01", "a-02", "b-01", "b-02"],
        ["a-03", "a-04", "b-03", "b-04"],
    ]
    assert [g.index for g in groups] == [0, 1, 2]


# (cells, strategy, expected (name, per-cell counts) per group)
SHAPES: list[tuple[str, dict[str, int], Strategy, list[tuple[str, dict[str, int]]]]] = [
    ("uneven 7+3 splits proportionally, both cells in beta", {"a": 7, "b": 3}, Strategy(beta_size=1, groups=3),
     [("beta", {"a": 1, "b": 1}), ("group-1", {"a": 3, "b": 1}), ("group-2", {"a": 3, "b": 1})]),
    ("a cell smaller than the number of groups has empty groups, the rest late", {"a": 5, "b": 2},
     Strategy(beta_size=1, groups=4),
     [("beta", {"a": 1, "b": 1}), ("group-1", {"a": 1}), ("group-2", {"a": 1}), ("group-3", {"a": 2, "b": 1})]),
    ("more groups than instances: empty groups first, never a gap between changes", {"a": 4},
     Strategy(beta_size=1, groups=6),
     [("beta", {"a": 1}), ("group-1", {}), ("group-2", {}), ("group-3", {"a": 1}), ("group-4", {"a": 1}),
      ("group-5", {"a": 1})]),
    ("a one-instance cell is changed in beta only", {"a": 4, "b": 1}, Strategy(beta_size=1, groups=3),
     [("beta", {"a": 1, "b": 1}), ("group-1", {"a": 1}), ("group-2", {"a": 2})]),
    ("betaSize 2 takes two of every cell first", {"a": 5, "b": 5}, Strategy(beta_size=2, groups=3),
     [("beta", {"a": 2, "b": 2}), ("group-1", {"a": 1, "b": 1}), ("group-2", {"a": 2, "b": 2})]),
    ("betaSize 0: no beta group, groups numbered from 1", {"a": 5, "b": 5}, Strategy(beta_size=0, groups=3),
     [("group-1", {"a": 1, "b": 1}), ("group-2", {"a": 2, "b": 2}), ("group-3", {"a": 2, "b": 2})]),
    ("groups 1: everything at once, no beta", {"a": 5, "b": 5}, Strategy(beta_size=1, groups=1),
     [("group-1", {"a": 5, "b": 5})]),
    ("groups 1 ignores a betaSize larger than a cell", {"a": 2}, Strategy(beta_size=3, groups=1),
     [("group-1", {"a": 2})]),
    ("groups 2: beta then the rest", {"a": 5, "b": 5}, Strategy(beta_size=1, groups=2),
     [("beta", {"a": 1, "b": 1}), ("group-1", {"a": 4, "b": 4})]),
    ("groupSizes: the remainder goes to the last group", {"a": 5, "b": 5}, Strategy(group_sizes=(1, 2)),
     [("group-1", {"a": 1, "b": 1}), ("group-2", {"a": 4, "b": 4})]),
    ("groupSizes: per cell, uneven cells", {"a": 7, "b": 3}, Strategy(group_sizes=(1, 2, 2)),
     [("group-1", {"a": 1, "b": 1}), ("group-2", {"a": 2, "b": 2}), ("group-3", {"a": 4})]),
    ("groupSizes: fewer instances than sizes leaves later groups empty", {"a": 2, "b": 1},
     Strategy(group_sizes=(2, 2, 2)), [("group-1", {"a": 2, "b": 1}), ("group-2", {}), ("group-3", {})]),
    ("groupSizes of zeros: the last group takes everything", {"a": 3}, Strategy(group_sizes=(0, 0)),
     [("group-1", {}), ("group-2", {"a": 3})]),
]


@pytest.mark.parametrize(("cells", "strategy", "expected"), [c[1:] for c in SHAPES], ids=[c[0] for c in SHAPES])
def test_group_shapes(cells: dict[str, int], strategy: Strategy, expected: list[tuple[str, dict[str, int]]]) -> None:
    """Each group changes the expected number of instances in each cell."""
    assert shape(plan(fleet(**cells), strategy)) == expected


def test_ordered_mode_goes_from_the_highest_ordinal_down_across_cells() -> None:
    """Ordered upgrades take each cell's highest ordinals first, and within a group run highest-first, cells mixed."""
    slots = [Slot(f"db-{n}", "a" if n % 2 == 0 else "b", n) for n in range(10)]
    random.Random(7).shuffle(slots)
    groups = plan(slots, Strategy(beta_size=1, groups=3, upgrade=UpgradeMode.ORDERED))
    assert [(g.name, ids(g)) for g in groups] == [
        ("beta", ["db-9", "db-8"]),
        ("group-1", ["db-7", "db-6", "db-5", "db-4"]),
        ("group-2", ["db-3", "db-2", "db-1", "db-0"]),
    ]


# (case, cells, strategy, expected problems as (path, value, words the expectation must contain))
INVALID: list[tuple[str, dict[str, int], Strategy, list[tuple[str, Any, str]]]] = [
    ("groups 0", {"a": 5}, Strategy(groups=0), [("strategy.groups", 0, "at least 1")]),
    ("groups negative", {"a": 5}, Strategy(groups=-2), [("strategy.groups", -2, "at least 1")]),
    ("betaSize larger than each cell names every cell", {"a": 5, "b": 3}, Strategy(beta_size=6, groups=3),
     [("strategy.betaSize", 6, "cell a has only 5"), ("strategy.betaSize", 6, "cell b has only 3")]),
    ("betaSize larger than the small cell only", {"a": 5, "b": 3}, Strategy(beta_size=4, groups=3),
     [("strategy.betaSize", 4, "cell b has only 3")]),
    ("betaSize negative", {"a": 5}, Strategy(beta_size=-1), [("strategy.betaSize", -1, "0 or more")]),
    ("groupSizes negative", {"a": 5}, Strategy(group_sizes=(2, -1)), [("strategy.groupSizes", [2, -1], "0 or more")]),
    ("groupSizes empty", {"a": 5}, Strategy(group_sizes=()), [("strategy.groupSizes", [], "non-empty")]),
    ("maxUnavailablePerCell 0", {"a": 5}, Strategy(max_unavailable_per_cell=0),
     [("strategy.maxUnavailablePerCell", 0, "at least 1")]),
    ("pauseSeconds negative", {"a": 5}, Strategy(pause_seconds=-1.0), [("strategy.pauseSeconds", -1.0, "0 or more")]),
    ("progressDeadlineSeconds 0", {"a": 5}, Strategy(progress_deadline_seconds=0.0),
     [("strategy.progressDeadlineSeconds", 0.0, "more than 0")]),
    ("several problems at once are all reported", {"a": 5}, Strategy(groups=0, beta_size=-1),
     [("strategy.groups", 0, "at least 1"), ("strategy.betaSize", -1, "0 or more")]),
]


@pytest.mark.parametrize(("cells", "strategy", "problems"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_strategies_name_the_field_and_value(cells: dict[str, int], strategy: Strategy,
                                                     problems: list[tuple[str, Any, str]]) -> None:
    """An invalid strategy is refused before anything is planned, with field path, value and expectation."""
    with pytest.raises(InvalidInput) as caught:
        plan(fleet(**cells), strategy)
    assert "nothing was started" in caught.value.message
    got = caught.value.problems
    assert [(p.path, p.value) for p in got] == [(path, value) for path, value, _ in problems]
    for p, (_, _, words) in zip(got, problems):
        assert words in p.expected, p.render()


# --- properties ------------------------------------------------------------------------------------------------------

cell_sizes = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 12), min_size=1, max_size=4)


@st.composite
def proportional_cases(draw: st.DrawFn) -> tuple[dict[str, int], Strategy]:
    cells = draw(cell_sizes)
    beta = draw(st.integers(0, min(cells.values())))
    return cells, Strategy(beta_size=beta, groups=draw(st.integers(1, 8)))


@st.composite
def explicit_cases(draw: st.DrawFn) -> tuple[dict[str, int], Strategy]:
    sizes = draw(st.lists(st.integers(0, 6), min_size=1, max_size=6))
    return draw(cell_sizes), Strategy(group_sizes=tuple(sizes))


def _check_partition(cells: dict[str, int], strategy: Strategy, groups: list[Group]) -> None:
    slots = fleet(**cells)
    planned = [s for g in groups for s in g.slots]
    assert sorted(planned, key=lambda s: s.instance) == sorted(slots, key=lambda s: s.instance)
    assert len(planned) == len(set(planned)), "a slot is in two groups"
    shuffled = list(slots)
    random.Random(len(slots)).shuffle(shuffled)
    assert plan(shuffled, strategy) == groups, "the plan depends on the order instances were listed in"


@settings(max_examples=300, deadline=None)
@given(proportional_cases())
def test_proportional_plan_properties(case: tuple[dict[str, int], Strategy]) -> None:
    """Every slot in exactly one group; beta holds betaSize of every cell; later groups never shrink; deterministic."""
    cells, strategy = case
    groups = plan(fleet(**cells), strategy)
    assert len(groups) == strategy.groups
    _check_partition(cells, strategy, groups)
    has_beta = strategy.groups > 1 and strategy.beta_size > 0
    assert (groups[0].name == "beta") is has_beta
    rest = groups[1:] if has_beta else groups
    for cell, size in cells.items():
        if has_beta:
            assert groups[0].cells().get(cell, 0) == strategy.beta_size, f"cell {cell} not in beta with betaSize"
        per_group = [g.cells().get(cell, 0) for g in rest]
        assert per_group == sorted(per_group), f"cell {cell} ({size}) split {per_group}: a later group is smaller"
        assert max(per_group) - min(per_group) <= 1, f"cell {cell} ({size}) split {per_group} is not proportional"


@settings(max_examples=200, deadline=None)
@given(explicit_cases())
def test_explicit_group_sizes_properties(case: tuple[dict[str, int], Strategy]) -> None:
    """With groupSizes each group takes its size per cell while instances last, the last group the remainder."""
    cells, strategy = case
    assert strategy.group_sizes is not None
    groups = plan(fleet(**cells), strategy)
    assert len(groups) == len(strategy.group_sizes)
    _check_partition(cells, strategy, groups)
    for cell, size in cells.items():
        left = size
        for g, want in zip(groups[:-1], strategy.group_sizes):
            assert g.cells().get(cell, 0) == min(want, left)
            left -= min(want, left)
        assert groups[-1].cells().get(cell, 0) == left
