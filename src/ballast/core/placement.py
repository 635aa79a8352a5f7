"""The scheduler's pure decision: which nodes this app's instances go to.

The placement controller fetches nodes and instances, calls `place`, and
writes the resulting creations and removals in one transaction. The decision
lives here, free of I/O, clock and randomness, so it can be tested from tables
and re-run on every reconcile: the same observed state gives the same answer.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "NewInstance", "NodeView", "PlacedInstance", "Placement", "Resources", "even_spread",
    "format_cpu", "format_memory", "parse_cpu", "parse_memory", "place",
]


@dataclass(frozen=True)
class Resources:
    cpu_millis: int
    memory_bytes: int


@dataclass(frozen=True)
class NodeView:
    name: str
    cell: str
    ready: bool
    capacity: Resources


@dataclass(frozen=True)
class PlacedInstance:
    """An existing, not-yet-deleted instance of any app; it holds capacity."""

    id: str
    app: str
    node: str
    cell: str
    request: Resources
    created_seq: int  # higher = newer
    group: str = ""   # its isolation group's code; "": the app's own instances


@dataclass(frozen=True)
class NewInstance:
    cell: str
    node: str


@dataclass(frozen=True)
class Placement:
    create: tuple[NewInstance, ...]
    remove: tuple[str, ...]
    unplaced: tuple[tuple[str, int, str], ...]  # (cell, count, reason)


_ZERO = Resources(0, 0)


def place(
    app: str,
    wanted: Mapping[str, int],
    request: Resources,
    instances: Sequence[PlacedInstance],
    nodes: Sequence[NodeView],
    *,
    group: str = "",
) -> Placement:
    """Decide creations and removals that bring `app` (its isolation group `group`) to `wanted` per cell.

    Capacity counts every instance given, including those removed by this same
    decision: removal may finish after creation, so freed room is not reused
    until the next reconcile observes it gone.
    """
    for cell, count in wanted.items():
        if count < 0:
            raise ValueError(f"wanted[{cell!r}] must be >= 0, got {count}")
    if request.cpu_millis < 0 or request.memory_bytes < 0:
        raise ValueError(f"request must not be negative, got {request}")
    node_by_name = {n.name: n for n in nodes}
    if len(node_by_name) != len(nodes):
        raise ValueError("node names must be unique")

    used: dict[str, Resources] = {}
    for inst in instances:
        used[inst.node] = _plus(used.get(inst.node, _ZERO), inst.request)
    mine = [i for i in instances if i.app == app and i.group == group]
    # The spread counts every instance of the app: a group lands beside the app's own, not on top of them.
    per_node = Counter(i.node for i in instances if i.app == app)
    by_cell: dict[str, list[PlacedInstance]] = {}
    for inst in mine:
        by_cell.setdefault(inst.cell, []).append(inst)

    create: list[NewInstance] = []
    remove: list[str] = []
    unplaced: list[tuple[str, int, str]] = []
    for cell in sorted(set(wanted) | set(by_cell)):
        current = by_cell.get(cell, [])
        target = wanted.get(cell, 0)
        if len(current) > target:
            remove.extend(_pick_removals(current, len(current) - target, node_by_name))
            continue
        missing = target - len(current)
        ready = sorted((n for n in nodes if n.cell == cell and n.ready), key=lambda n: n.name)
        for done in range(missing):
            node = _pick_node(ready, request, used, per_node)
            if node is None:
                unplaced.append((cell, missing - done, _reason(cell, ready, request, used)))
                break
            create.append(NewInstance(cell=cell, node=node.name))
            used[node.name] = _plus(used.get(node.name, _ZERO), request)
            per_node[node.name] += 1
    return Placement(create=tuple(create), remove=tuple(remove), unplaced=tuple(unplaced))


def _plus(a: Resources, b: Resources) -> Resources:
    return Resources(a.cpu_millis + b.cpu_millis, a.memory_bytes + b.memory_bytes)


def _fits(request: Resources, free: Resources) -> bool:
    return request.cpu_millis <= free.cpu_millis and request.memory_bytes <= free.memory_bytes


def _free(node: NodeView, used: Mapping[str, Resources]) -> Resources:
    u = used.get(node.name, _ZERO)
    return Resources(
        node.capacity.cpu_millis - u.cpu_millis, node.capacity.memory_bytes - u.memory_bytes
    )


def _pick_node(
    ready: Sequence[NodeView],
    request: Resources,
    used: Mapping[str, Resources],
    per_node: Mapping[str, int],
) -> NodeView | None:
    """Fewest of this app first keeps the spread even; most free cpu breaks ties."""
    fits = [n for n in ready if _fits(request, _free(n, used))]
    return min(
        fits,
        key=lambda n: (per_node.get(n.name, 0), -_free(n, used).cpu_millis, n.name),
        default=None,
    )


def _reason(
    cell: str, ready: Sequence[NodeView], request: Resources, used: Mapping[str, Resources]
) -> str:
    if not ready:
        return f"no ready node in cell {cell}"
    roomiest = min(
        ready,
        key=lambda n: (-_free(n, used).cpu_millis, -_free(n, used).memory_bytes, n.name),
    )
    free = _free(roomiest, used)
    return (
        f"insufficient capacity in cell {cell}: needs cpu {format_cpu(request.cpu_millis)}, "
        f"memory {format_memory(request.memory_bytes)} per instance; largest free is "
        f"cpu {format_cpu(max(free.cpu_millis, 0))}, "
        f"memory {format_memory(max(free.memory_bytes, 0))} on node {roomiest.name}"
    )


def _pick_removals(
    current: Sequence[PlacedInstance], excess: int, node_by_name: Mapping[str, NodeView]
) -> list[str]:
    """Drop instances on dead nodes first, then from the fullest node, newest first."""
    remaining = list(current)
    counts = Counter(i.node for i in remaining)
    chosen: list[str] = []
    for _ in range(excess):
        victim = min(
            remaining,
            key=lambda i: (
                i.node in node_by_name and node_by_name[i.node].ready,
                -counts[i.node],
                -i.created_seq,
                i.id,
            ),
        )
        remaining.remove(victim)
        counts[victim.node] -= 1
        chosen.append(victim.id)
    return chosen


def even_spread(replicas: int, cells: Sequence[str]) -> dict[str, int]:
    """Split replicas over cells; the remainder goes to the first cells given."""
    if replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {replicas}")
    if len(set(cells)) != len(cells):
        raise ValueError(f"cells must be unique, got {list(cells)}")
    if not cells:
        if replicas:
            raise ValueError(f"cannot spread {replicas} replicas over no cells")
        return {}
    base, extra = divmod(replicas, len(cells))
    return {cell: base + (1 if i < extra else 0) for i, cell in enumerate(cells)}


_NUMBER = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(\D*)$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_MEMORY_UNITS = {"": 1, **_BINARY, **_DECIMAL}


def _split_quantity(kind: str, value: str, expected: str) -> tuple[Decimal, str]:
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"{kind} must not be negative, got {value!r}")
    match = _NUMBER.match(text)
    if match is None:
        raise ValueError(f"invalid {kind} {value!r}: expected {expected}")
    return Decimal(match.group(1)), match.group(2)


def _whole(kind: str, value: object, amount: Decimal, unit: str) -> int:
    if amount != amount.to_integral_value():
        raise ValueError(f"invalid {kind} {value!r}: finer than 1 {unit}")
    return int(amount)


def parse_cpu(value: str | int | float) -> int:
    """Cores or millicores ("250m", "0.5", 2) to millicores."""
    expected = 'cores such as "1" or "0.5", or millicores such as "250m"'
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"invalid cpu {value!r}: expected {expected}")
    if isinstance(value, str):
        amount, suffix = _split_quantity("cpu", value, expected)
        if suffix not in ("", "m"):
            raise ValueError(f"invalid cpu {value!r}: expected {expected}")
        millis = amount if suffix == "m" else amount * 1000
    else:
        if not math.isfinite(value):
            raise ValueError(f"invalid cpu {value!r}: expected a finite number")
        if value < 0:
            raise ValueError(f"cpu must not be negative, got {value!r}")
        millis = Decimal(str(value)) * 1000
    return _whole("cpu", value, millis, "millicore")


def parse_memory(value: str | int) -> int:
    """Bytes, binary ("128Mi") or decimal ("512M", "100k") quantities to bytes."""
    expected = 'bytes, or a number with one of Ki Mi Gi Ti Pi Ei k M G T P E (e.g. "128Mi")'
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"invalid memory {value!r}: expected {expected}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory must not be negative, got {value!r}")
        return value
    amount, suffix = _split_quantity("memory", value, expected)
    if suffix not in _MEMORY_UNITS:
        raise ValueError(f"invalid memory {value!r}: unknown unit {suffix!r}; expected {expected}")
    return _whole("memory", value, amount * _MEMORY_UNITS[suffix], "byte")


def format_cpu(millis: int) -> str:
    """Whole cores as "2", anything else as millicores "250m"."""
    if millis < 0:
        raise ValueError(f"cpu must not be negative, got {millis}")
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(b: int) -> str:
    """The largest binary unit that divides exactly, else plain bytes."""
    if b < 0:
        raise ValueError(f"memory must not be negative, got {b}")
    for unit, factor in reversed(_BINARY.items()):
        if b and b % factor == 0:
            return f"{b // factor}{unit}"
    return str(b)
