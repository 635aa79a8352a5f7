"""Scale releases, pure parts: how count changes are grouped, and how ADD/REMOVE slots move and roll back."""

from __future__ import annotations

import pytest

from ballast.core.release_engine import CreateReplacement, InstanceView, Retire, SlotKind, slot_state
from ballast.core.release_plan import Slot, SlotOp, Strategy, UpgradeMode, plan_scale


def inst(id: str, *, desired: str = "running", ready: bool = True, replaces: str | None = None,
         revision: int = 1, phase: str = "Running") -> InstanceView:
    return InstanceView(id, "cell-a", revision, revision, ready, phase, desired, replaces, 0.0)


def test_count_changes_are_grouped_per_cell_with_a_beta_group() -> None:
    """+5 in cell-a and -2 in cell-b over 3 groups: every cell is in the beta group, the rest split later."""
    groups = plan_scale({"cell-a": 5}, [Slot("b1", "cell-b"), Slot("b2", "cell-b")], Strategy(groups=3), "k")
    assert [g.cells() for g in groups] == [{"cell-a": 1, "cell-b": 1}, {"cell-a": 2}, {"cell-a": 2, "cell-b": 1}]
    assert {s.op for s in groups[0].slots} == {SlotOp.ADD, SlotOp.REMOVE}
    assert len({s.instance for g in groups for s in g.slots}) == 7  # unique keys for new instances


@pytest.mark.parametrize("beta", [1, 5])
def test_a_beta_larger_than_the_change_is_clamped_not_refused(beta: int) -> None:
    """Scaling one cell by one instance is a beta of one, whatever the strategy's beta size."""
    groups = plan_scale({"cell-a": 1}, [], Strategy(groups=3, beta_size=beta), "k")
    assert [len(g.slots) for g in groups] == [1, 0, 0]


def test_ordinals_are_handed_to_new_instances_in_turn() -> None:
    """Ordered apps: the new instances take the free ordinals given."""
    groups = plan_scale({"cell-a": 2}, [], Strategy(groups=1, upgrade=UpgradeMode.ORDERED), "k", ordinals=[4, 5])
    assert sorted(s.ordinal for s in groups[0].slots) == [4, 5]


ADD = Slot("k-cell-a-0", "cell-a", None, SlotOp.ADD)
REMOVE = Slot("shop-1", "cell-a", None, SlotOp.REMOVE)


@pytest.mark.parametrize("slot, instances, rollback, kind, start", [
    (ADD, {}, False, SlotKind.TODO, (CreateReplacement("k-cell-a-0", "cell-a", 1),)),
    (ADD, {"n": inst("n", replaces="k-cell-a-0", ready=False, phase="Starting")}, False, SlotKind.PROGRESS, ()),
    (ADD, {"n": inst("n", replaces="k-cell-a-0")}, False, SlotKind.DONE, ()),
    (ADD, {"n": inst("n", replaces="k-cell-a-0")}, True, SlotKind.TODO, (Retire("n"),)),
    (ADD, {"n": inst("n", replaces="k-cell-a-0", desired="deleted")}, True, SlotKind.DONE, ()),
    (ADD, {}, True, SlotKind.DONE, ()),
    (REMOVE, {"shop-1": inst("shop-1")}, False, SlotKind.TODO, (Retire("shop-1"),)),
    (REMOVE, {"shop-1": inst("shop-1", desired="deleted")}, False, SlotKind.DONE, ()),
    (REMOVE, {}, False, SlotKind.DONE, ()),
    (REMOVE, {"shop-1": inst("shop-1")}, True, SlotKind.DONE, ()),
    (REMOVE, {}, True, SlotKind.TODO, (CreateReplacement("shop-1", "cell-a", 1),)),
    (REMOVE, {"shop-1": inst("shop-1", desired="deleted")}, True, SlotKind.TODO,
     (CreateReplacement("shop-1", "cell-a", 1),)),
    (REMOVE, {"r": inst("r", replaces="shop-1")}, True, SlotKind.DONE, ()),
], ids=["add-todo", "add-starting", "add-done", "add-undo", "add-undone", "add-never-made", "remove-todo",
        "remove-done", "remove-gone", "remove-never-done", "remove-recreate", "remove-recreate-while-stopping",
        "remove-recreated"])
def test_scale_slots_forward_and_back(slot: Slot, instances: dict[str, InstanceView], rollback: bool,
                                      kind: SlotKind, start: tuple[object, ...]) -> None:
    """Each ADD/REMOVE slot state and its next action, forward and when rolled back."""
    state = slot_state(slot, 1, UpgradeMode.IN_PLACE, instances, now=1.0, deadline=120.0, rollback=rollback)
    assert (state.kind, state.start) == (kind, start)
