"""Spec of the scheduler's pure placement decision and its quantity helpers."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ballast.core.placement import (
    NewInstance,
    NodeView,
    PlacedInstance,
    Placement,
    Resources,
    even_spread,
    format_cpu,
    format_memory,
    parse_cpu,
    parse_memory,
    place,
)

MI = 2**20
GI = 2**30
SMALL = Resources(cpu_millis=250, memory_bytes=128 * MI)


def node(name: str, cell: str, cpu: int = 4000, mem: int = 8 * GI, ready: bool = True) -> NodeView:
    return NodeView(name=name, cell=cell, ready=ready, capacity=Resources(cpu, mem))


def inst(
    id: str, node: str, cell: str, seq: int = 0, app: str = "web", request: Resources = SMALL
) -> PlacedInstance:
    return PlacedInstance(id=id, app=app, node=node, cell=cell, request=request, created_seq=seq)


def per_node_after(
    app: str, result: Placement, instances: list[PlacedInstance]
) -> dict[str, int]:
    """Counts of `app` per node once the placement has been applied."""
    gone = set(result.remove)
    counts = Counter(i.node for i in instances if i.app == app and i.id not in gone)
    counts.update(c.node for c in result.create)
    return {name: n for name, n in sorted(counts.items()) if n}


TWO_BY_TWO = [node("a1", "cell-a"), node("a2", "cell-a"), node("b1", "cell-b"), node("b2", "cell-b")]


# --- quantities -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "millis"),
    [("250m", 250), ("1", 1000), ("0.5", 500), (2, 2000), (0.25, 250), ("0", 0), (" 1.5 ", 1500),
     ("1000m", 1000), (".1", 100)],
)
def test_parse_cpu_accepts_cores_and_millicores(value: str | int | float, millis: int) -> None:
    """Cores and millicores in every accepted spelling convert to millicores."""
    assert parse_cpu(value) == millis


@pytest.mark.parametrize(
    ("value", "message"),
    [("-1", "negative"), (-0.5, "negative"), ("1.5m", "finer"), ("0.0001", "finer"), ("abc", "invalid"),
     ("", "invalid"), ("1k", "invalid"), ("1e3", "invalid"), (True, "invalid"), (float("nan"), "finite")],
)
def test_parse_cpu_rejects_bad_values(value: str | int | float, message: str) -> None:
    """Malformed, negative or sub-millicore cpu is refused with a message naming the problem."""
    with pytest.raises(ValueError, match=message):
        parse_cpu(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [("128Mi", 128 * MI), ("1Gi", GI), ("512M", 512 * 10**6), ("1G", 10**9), ("100Ki", 102400),
     ("100k", 100_000), (4096, 4096), ("4096", 4096), ("1.5Gi", 3 * GI // 2), ("0", 0)],
)
def test_parse_memory_accepts_binary_and_decimal_units(value: str | int, size: int) -> None:
    """Binary (Ki..Ei), decimal (k..E) and plain byte quantities convert to bytes."""
    assert parse_memory(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [("-1Mi", "negative"), (-5, "negative"), ("1MB", "unit"), ("1K", "unit"), ("Mi", "invalid"),
     ("0.5", "finer"), ("lots", "invalid"), (False, "invalid")],
)
def test_parse_memory_rejects_bad_values(value: str | int, message: str) -> None:
    """Unknown units, negatives and fractional bytes are refused with a message naming the problem."""
    with pytest.raises(ValueError, match=message):
        parse_memory(value)


@pytest.mark.parametrize(
    ("millis", "text"), [(250, "250m"), (2000, "2"), (0, "0"), (1500, "1500m"), (1, "1m")]
)
def test_format_cpu(millis: int, text: str) -> None:
    """Whole cores print as cores, everything else as millicores."""
    assert format_cpu(millis) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [(128 * MI, "128Mi"), (GI, "1Gi"), (1536 * MI, "1536Mi"), (102400, "100Ki"), (1000, "1000"), (0, "0")],
)
def test_format_memory(size: int, text: str) -> None:
    """Memory prints in the largest exact binary unit, else in bytes."""
    assert format_memory(size) == text


@pytest.mark.parametrize("fmt", [format_cpu, format_memory])
def test_format_rejects_negative(fmt: object) -> None:
    """Negative quantities cannot be formatted."""
    with pytest.raises(ValueError, match="negative"):
        fmt(-1)  # type: ignore[operator]


@given(st.integers(min_value=0, max_value=10**9))
def test_cpu_round_trips(millis: int) -> None:
    """Every formatted cpu parses back to the same millicores."""
    assert parse_cpu(format_cpu(millis)) == millis


@given(st.integers(min_value=0, max_value=2**62))
def test_memory_round_trips(size: int) -> None:
    """Every formatted memory size parses back to the same bytes."""
    assert parse_memory(format_memory(size)) == size


# --- even_spread ------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "cells", "spread"),
    [(10, ["a", "b"], {"a": 5, "b": 5}), (7, ["a", "b", "c"], {"a": 3, "b": 2, "c": 2}),
     (7, ["c", "b", "a"], {"c": 3, "b": 2, "a": 2}), (1, ["a", "b"], {"a": 1, "b": 0}),
     (0, ["a"], {"a": 0}), (0, [], {})],
)
def test_even_spread(replicas: int, cells: list[str], spread: dict[str, int]) -> None:
    """Replicas split evenly, the remainder going to the first cells in the order given."""
    assert even_spread(replicas, cells) == spread


@pytest.mark.parametrize(("replicas", "cells"), [(1, []), (-1, ["a"]), (2, ["a", "a"])])
def test_even_spread_rejects_impossible_input(replicas: int, cells: list[str]) -> None:
    """No cells for a positive count, a negative count or duplicate cells are errors."""
    with pytest.raises(ValueError):
        even_spread(replicas, cells)


# --- place: scale-up ----------------------------------------------------------


def test_ten_over_two_cells_of_two_nodes_splits_five_and_three_two() -> None:
    """Ten instances over two cells of two nodes each land 5 per cell and 3/2 per node."""
    result = place("web", {"cell-a": 5, "cell-b": 5}, SMALL, [], TWO_BY_TWO)
    assert Counter(c.cell for c in result.create) == {"cell-a": 5, "cell-b": 5}
    assert sorted(Counter(c.node for c in result.create).values()) == [2, 2, 3, 3]
    assert result.remove == () and result.unplaced == ()


@pytest.mark.parametrize(
    ("existing", "wanted", "expected"),
    [
        ({"a1": 2}, 5, {"a1": 3, "a2": 2}),
        ({"a1": 3}, 4, {"a1": 3, "a2": 1}),
        ({"a1": 1, "a2": 1}, 4, {"a1": 2, "a2": 2}),
        ({"a2": 4}, 6, {"a1": 2, "a2": 4}),
        ({}, 1, {"a1": 1}),
    ],
)
def test_scale_up_on_existing_instances_fills_the_emptiest_node(
    existing: dict[str, int], wanted: int, expected: dict[str, int]
) -> None:
    """New instances go to the node with fewest of this app, evening out the spread."""
    instances = [inst(f"{n}-{k}", n, "cell-a", seq=k) for n, count in existing.items() for k in range(count)]
    result = place("web", {"cell-a": wanted}, SMALL, instances, TWO_BY_TWO)
    assert per_node_after("web", result, instances) == expected


def test_ties_go_to_most_free_cpu_then_node_name() -> None:
    """With equal counts of this app, the node with more free cpu wins, then the lower name."""
    nodes = [node("n2", "c", cpu=1000), node("n1", "c", cpu=1000), node("n0", "c", cpu=500)]
    result = place("web", {"c": 1}, SMALL, [], nodes)
    assert result.create == (NewInstance(cell="c", node="n1"),)


def test_never_places_on_another_cells_node_even_when_own_cell_is_full() -> None:
    """A full cell leaves instances unplaced rather than borrowing a node of another cell."""
    nodes = [node("a1", "cell-a", cpu=100), node("b1", "cell-b")]
    result = place("web", {"cell-a": 2}, SMALL, [], nodes)
    assert result.create == ()
    assert [(cell, n) for cell, n, _ in result.unplaced] == [("cell-a", 2)]


def test_capacity_is_shared_with_other_apps_and_with_this_calls_creations() -> None:
    """Other apps' requests and instances created earlier in the call both consume free capacity."""
    nodes = [node("n1", "c", cpu=1000), node("n2", "c", cpu=500)]
    other = [inst("db-1", "n1", "c", app="db", request=Resources(900, MI))]
    result = place("web", {"c": 3}, SMALL, other, nodes)
    assert result.create == (NewInstance("c", "n2"), NewInstance("c", "n2"))
    assert [(cell, n) for cell, n, _ in result.unplaced] == [("c", 1)]


def test_not_ready_nodes_are_never_chosen() -> None:
    """A not-ready node is skipped however much room it has."""
    nodes = [node("big", "c", cpu=64000, ready=False), node("small", "c", cpu=1000)]
    result = place("web", {"c": 2}, SMALL, [], nodes)
    assert {c.node for c in result.create} == {"small"}


@pytest.mark.parametrize(
    ("nodes", "instances", "reason"),
    [
        ([node("a1", "cell-a")], [], "no ready node in cell cell-b"),
        ([node("b1", "cell-b", ready=False)], [], "no ready node in cell cell-b"),
        (
            [node("b1", "cell-b", cpu=1000, mem=2 * GI), node("b2", "cell-b", cpu=100, mem=4 * GI)],
            [inst("x", "b1", "cell-b", app="db", request=Resources(900, GI))],
            "insufficient capacity in cell cell-b: needs cpu 250m, memory 128Mi per instance; "
            "largest free is cpu 100m, memory 4Gi on node b2",
        ),
        (
            [node("b1", "cell-b", cpu=2000, mem=64 * MI)],
            [],
            "insufficient capacity in cell cell-b: needs cpu 250m, memory 128Mi per instance; "
            "largest free is cpu 2, memory 64Mi on node b1",
        ),
    ],
)
def test_unplaced_reason_tells_no_node_from_no_capacity(
    nodes: list[NodeView], instances: list[PlacedInstance], reason: str
) -> None:
    """An unplaceable cell is reported once with its shortfall and a sentence saying why."""
    result = place("web", {"cell-b": 3}, SMALL, instances, nodes)
    assert result.unplaced == (("cell-b", 3, reason),)


# --- place: scale-in ----------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "instances", "wanted", "removed"),
    [
        pytest.param(
            [node("n1", "c"), node("n2", "c")],
            [inst("a", "n1", "c", 1), inst("b", "n1", "c", 2), inst("c", "n1", "c", 3), inst("d", "n2", "c", 4)],
            3, ("c",), id="fullest-node-newest-first",
        ),
        pytest.param(
            [node("n1", "c"), node("n2", "c")],
            [inst("a", "n1", "c", 1), inst("b", "n1", "c", 4), inst("c", "n2", "c", 2), inst("d", "n2", "c", 3)],
            2, ("b", "d"), id="rebalances-after-each-removal",
        ),
        pytest.param(
            [node("n1", "c", ready=False), node("n2", "c")],
            [inst("a", "n1", "c", 1), inst("b", "n2", "c", 2), inst("c", "n2", "c", 3)],
            2, ("a",), id="not-ready-node-first",
        ),
        pytest.param(
            [node("n2", "c")],
            [inst("a", "gone", "c", 1), inst("b", "n2", "c", 2), inst("c", "n2", "c", 3)],
            1, ("a", "c"), id="missing-node-first",
        ),
        pytest.param(
            [node("n1", "c")],
            [inst("b", "n1", "c", 5), inst("a", "n1", "c", 5), inst("c", "n1", "c", 1)],
            1, ("a", "b"), id="same-age-by-id",
        ),
    ],
)
def test_scale_in_removes_dead_then_fullest_then_newest(
    nodes: list[NodeView], instances: list[PlacedInstance], wanted: int, removed: tuple[str, ...]
) -> None:
    """Excess goes from dead nodes first, then the node with most of this app, newest first."""
    result = place("web", {"c": wanted}, SMALL, instances, nodes)
    assert result == Placement(create=(), remove=removed, unplaced=())


@pytest.mark.parametrize("wanted", [{"cell-a": 1}, {"cell-a": 1, "cell-b": 0}])
def test_cells_no_longer_wanted_are_emptied_of_this_app_only(wanted: dict[str, int]) -> None:
    """Every instance of this app in a cell absent from (or zero in) wanted is removed; other apps stay."""
    instances = [
        inst("w-a", "a1", "cell-a"), inst("w-b1", "b1", "cell-b", 1), inst("w-b2", "b2", "cell-b", 2),
        inst("db-b", "b1", "cell-b", app="db"),
    ]
    result = place("web", wanted, SMALL, instances, TWO_BY_TWO)
    assert result == Placement(create=(), remove=("w-b2", "w-b1"), unplaced=())


def test_negative_wanted_is_rejected() -> None:
    """A negative count per cell is a caller error, not a request to remove."""
    with pytest.raises(ValueError, match="cell-a"):
        place("web", {"cell-a": -1}, SMALL, [], TWO_BY_TWO)


def test_same_input_in_any_order_gives_the_same_placement() -> None:
    """The decision depends only on the values given, not on call count or input order."""
    instances = [inst("x", "a1", "cell-a", 1), inst("y", "b2", "cell-b", 2), inst("z", "b2", "cell-b", 3)]
    wanted = {"cell-b": 1, "cell-a": 4}
    first = place("web", wanted, SMALL, instances, TWO_BY_TWO)
    assert first == place("web", wanted, SMALL, instances, TWO_BY_TWO)
    assert first == place("web", dict(reversed(wanted.items())), SMALL, instances[::-1], TWO_BY_TWO[::-1])
    assert first.remove == ("z",)


# --- place: properties --------------------------------------------------------

CELLS = ["cell-a", "cell-b", "cell-c"]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[str, int], Resources, list[PlacedInstance], list[NodeView]]:
    nodes = [
        node(f"n{i}", draw(st.sampled_from(CELLS)), cpu=draw(st.integers(0, 4000)),
             mem=draw(st.integers(0, 4 * GI)), ready=draw(st.booleans()))
        for i in range(draw(st.integers(0, 6)))
    ]
    cell_of = {n.name: n.cell for n in nodes}
    instances = []
    for seq in range(draw(st.integers(0, 12))):
        where = draw(st.sampled_from([*cell_of, "gone"]))
        cell = cell_of.get(where) or draw(st.sampled_from(CELLS))
        request = Resources(draw(st.integers(0, 1000)), draw(st.integers(0, GI)))
        instances.append(inst(f"i{seq}", where, cell, seq=draw(st.integers(0, 5)),
                              app=draw(st.sampled_from(["web", "db"])), request=request))
    wanted = draw(st.dictionaries(st.sampled_from(CELLS), st.integers(0, 8)))
    request = Resources(draw(st.integers(0, 1000)), draw(st.integers(0, GI)))
    return wanted, request, instances, nodes


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_placement_invariants(
    world: tuple[dict[str, int], Resources, list[PlacedInstance], list[NodeView]],
) -> None:
    """Creations stay in their cell on ready nodes within capacity, and counts end at wanted minus unplaced."""
    wanted, request, instances, nodes = world
    result = place("web", wanted, request, instances, nodes)
    by_name = {n.name: n for n in nodes}
    for new in result.create:
        assert by_name[new.node].cell == new.cell and by_name[new.node].ready

    for name in {c.node for c in result.create}:
        used = [i.request for i in instances if i.node == name] + [
            request for c in result.create if c.node == name
        ]
        assert sum(r.cpu_millis for r in used) <= by_name[name].capacity.cpu_millis
        assert sum(r.memory_bytes for r in used) <= by_name[name].capacity.memory_bytes

    web_ids = {i.id for i in instances if i.app == "web"}
    assert len(set(result.remove)) == len(result.remove) and set(result.remove) <= web_ids
    short = {cell: n for cell, n, _ in result.unplaced}
    assert all(n > 0 for n in short.values())
    after = Counter(i.cell for i in instances if i.id in web_ids - set(result.remove))
    after.update(c.cell for c in result.create)
    for cell in CELLS:
        assert after[cell] == wanted.get(cell, 0) - short.get(cell, 0)
