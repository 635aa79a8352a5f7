"""The scheduler's decisions around `place()`: how many instances each cell wants, what a fixed port and
ordered identities change about a placement, what an instance is called, and the condensed view of other
apps that keeps a pass cheap.

Pure: values in, values out. The controllers (`controllers/scheduler.py`, and the release engine when it
places a surge instance) fetch, call these, and write; `services/placement.py` is the store side.
"""

from __future__ import annotations

import secrets
from typing import Callable, Mapping, Protocol, Sequence

from ballast.core.manifests import AppServiceSpec
from ballast.core.placement import PlacedInstance, Placement, Resources, even_spread


class Identity(Protocol):
    """An instance as far as its identity goes (an instance record)."""

    @property
    def id(self) -> str: ...
    @property
    def cell(self) -> str: ...
    @property
    def ordinal(self) -> int | None: ...


def instance_id_for(app: str, ordinal: int | None, token: Callable[[int], str] | None = None) -> str:
    """Ordered apps have stable identities APP-0, APP-1, ...; others a random suffix (drawn from `token`,
    the operating system's randomness unless a test gives its own)."""
    return f"{app}-{ordinal}" if ordinal is not None else f"{app}-{(token or secrets.token_hex)(3)}"


def ordinals_for(count: int, taken: set[int]) -> list[int]:
    """The lowest free ordinals, so identities are reused after scale-in and scale-out."""
    out: list[int] = []
    candidate = 0
    while len(out) < count:
        if candidate not in taken:
            out.append(candidate)
        candidate += 1
    return out


def highest_ordinals_first(decision: Placement, app_instances: Sequence[Identity]) -> Placement:
    """Ordered apps scale in from the highest ordinal, like the upgrade order."""
    if not decision.remove:
        return decision
    per_cell: dict[str, int] = {}
    by_id = {i.id: i for i in app_instances}
    for instance_id in decision.remove:
        per_cell[by_id[instance_id].cell] = per_cell.get(by_id[instance_id].cell, 0) + 1
    remove: list[str] = []
    for cell, count in sorted(per_cell.items()):
        members = sorted((i for i in app_instances if i.cell == cell), key=lambda i: -(i.ordinal or 0))
        remove.extend(i.id for i in members[:count])
    return Placement(create=decision.create, remove=tuple(remove), unplaced=decision.unplaced)


def wanted_per_cell(spec: AppServiceSpec, all_cells: list[str]) -> dict[str, int]:
    """Declared counts per cell, or `replicas` spread evenly over every cell."""
    if spec.cells is not None:
        return dict(spec.cells)
    return even_spread(spec.replicas or 0, sorted(all_cells)) if all_cells else {}


def spill_to_failover(wanted: Mapping[str, int], unplaced: Sequence[tuple[str, int, str]],
                      failover_cells: Sequence[str]) -> dict[str, int]:
    """Counts with what a cell could not place moved to the first failover cell (`spec.failover.cells`) that is
    not itself short. Pure; the next placement decides where in that cell, or leaves it unplaced there too."""
    short = {cell: count for cell, count, _ in unplaced}
    out = dict(wanted)
    for cell, count in short.items():
        target = next((c for c in failover_cells if c != cell and c not in short), None)
        if target is None:
            continue
        out[cell] = out.get(cell, 0) - count
        out[target] = out.get(target, 0) + count
    return out


def enforce_fixed_port(placement: Placement, app: str, port: int | None,
                       existing: list[PlacedInstance]) -> Placement:
    """A fixed listen port allows one instance of the app per node; the rest stay unplaced."""
    if port is None:
        return placement
    used = {i.node for i in existing if i.app == app}
    kept, refused = [], 0
    for new in placement.create:
        if new.node in used:
            refused += 1
            continue
        used.add(new.node)
        kept.append(new)
    if not refused:
        return placement
    reason = (placement.create[0].cell, refused, f"fixed port {port} allows one instance per node")
    return Placement(create=tuple(kept), remove=placement.remove, unplaced=placement.unplaced + (reason,))


def index_placed(placed: list[PlacedInstance]) -> tuple[dict[str, list[PlacedInstance]],
                                                         dict[tuple[str, str], Resources]]:
    """Every live instance grouped by app, and what all of them use per (node, cell): `condensed()`'s inputs,
    built once per pass."""
    by_app: dict[str, list[PlacedInstance]] = {}
    usage: dict[tuple[str, str], Resources] = {}
    for p in placed:
        by_app.setdefault(p.app, []).append(p)
        before = usage.get((p.node, p.cell), Resources(0, 0))
        usage[(p.node, p.cell)] = Resources(before.cpu_millis + p.request.cpu_millis,
                                            before.memory_bytes + p.request.memory_bytes)
    return by_app, usage


def condensed(app: str, by_app: dict[str, list[PlacedInstance]],
              usage: dict[tuple[str, str], Resources]) -> list[PlacedInstance]:
    """The app's own instances plus, per node, one stand-in holding what every other app uses there.

    `place()` needs other apps only for capacity; passing thousands of them per app made a pass
    cost apps x instances.
    """
    mine = by_app.get(app, [])
    own: dict[tuple[str, str], list[int]] = {}
    for p in mine:
        slot = own.setdefault((p.node, p.cell), [0, 0])
        slot[0] += p.request.cpu_millis
        slot[1] += p.request.memory_bytes
    others = []
    for (node, cell), total in sorted(usage.items()):
        cpu, mem = own.get((node, cell), [0, 0])
        rest = Resources(total.cpu_millis - cpu, total.memory_bytes - mem)
        if rest.cpu_millis or rest.memory_bytes:
            others.append(PlacedInstance(id=f"~others@{node}", app="~others", node=node, cell=cell, request=rest,
                                         created_seq=0))
    return list(mine) + others
