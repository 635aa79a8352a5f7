"""The scheduler hands `place()` a condensed view (own instances + one stand-in per node for the others);
the decision must be exactly the one the full view gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ballast.core.placement import NodeView, PlacedInstance, Resources, place
from ballast.core.scheduling import condensed, index_placed

NODES = [NodeView(f"n{i}", "cell-a" if i < 3 else "cell-b", i != 2, Resources(4000, 8 * 2**30)) for i in range(6)]

instance = st.builds(
    lambda n, app, cpu, mem, seq: PlacedInstance(f"{app}-{seq}", app, f"n{n}", "cell-a" if n < 3 else "cell-b",
                                                 Resources(cpu, mem), seq),
    st.integers(0, 5), st.sampled_from(["shop", "pay", "ledger"]), st.sampled_from([100, 250, 500, 1000]),
    st.sampled_from([64 * 2**20, 512 * 2**20, 2**30]), st.integers(0, 10**6))


@settings(max_examples=200, deadline=None)
@given(st.lists(instance, max_size=40, unique_by=lambda i: i.id), st.integers(0, 12), st.integers(0, 12),
       st.sampled_from([Resources(250, 128 * 2**20), Resources(1000, 2**30)]))
def test_condensed_view_gives_the_same_placement(placed: list[PlacedInstance], a: int, b: int,
                                                 request: Resources) -> None:
    """Same creations, removals and unplaced reasons from the condensed view as from every instance."""
    by_app, usage = index_placed(placed)
    wanted = {"cell-a": a, "cell-b": b}
    assert place("shop", wanted, request, condensed("shop", by_app, usage), NODES) == \
        place("shop", wanted, request, placed, NODES)
