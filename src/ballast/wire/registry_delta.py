"""Registry deltas: what changed between two snapshots, service by service.

A component that holds generation B long-polls with `known=B`. When the control plane still has snapshot B
(it keeps the last few it built), it answers with a delta from B: the services new or different (each whole),
the names of those gone, and the marking rules if they changed. The component applies it to its own snapshot B
and gets exactly the newer snapshot; a delta from any other base is not applied, and the component asks for a
whole snapshot instead (`known` unset), as it does after a restart. `answer_for` (control plane) and `absorb`
(component) are the two halves; tests/unit/test_registry_delta.py checks that after any sequence of changes,
missed generations and restarts, deltas leave a component with the same snapshot a whole one would.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import Field

from ballast.wire.message import Message
from ballast.wire.registry import Service, Snapshot
from ballast.wire.traffic import ColoringInEffect


class SnapshotDelta(Message):
    generation: int = Field(ge=0)
    base: int = Field(ge=0)                                 # the generation it applies to, and to no other
    changed: tuple[Service, ...] = ()                       # new or different services, whole, ordered by name
    removed: tuple[str, ...] = ()                           # services gone, by name
    coloring: tuple[ColoringInEffect, ...] | None = None    # the marking rules, when they changed


class BaseMismatch(Exception):
    """A delta for a generation other than the one held."""


def snapshot_delta(old: Snapshot, new: Snapshot) -> SnapshotDelta:
    before = {s.name: s for s in old.services}
    after = {s.name: s for s in new.services}
    return SnapshotDelta(generation=new.generation, base=old.generation,
                         changed=tuple(s for name, s in sorted(after.items()) if before.get(name) != s),
                         removed=tuple(sorted(set(before) - set(after))),
                         coloring=None if new.coloring == old.coloring else new.coloring)


def apply_delta(old: Snapshot, delta: SnapshotDelta) -> Snapshot:
    if old.generation != delta.base:
        raise BaseMismatch(f"a delta from generation {delta.base} does not apply to generation {old.generation}")
    services = {s.name: s for s in old.services}
    for name in delta.removed:
        services.pop(name, None)
    services.update((s.name, s) for s in delta.changed)
    return Snapshot(generation=delta.generation, services=tuple(s for _, s in sorted(services.items())),
                    coloring=old.coloring if delta.coloring is None else delta.coloring)


def answer_for(known: int | None, current: Snapshot, history: Mapping[int, Snapshot]) -> dict[str, Any]:
    """The control plane's answer to a component holding `known`: a delta when it still has that snapshot and
    something changed since, else the whole snapshot."""
    base = history.get(known) if known is not None else None
    if base is None or known == current.generation:
        return current.to_json()
    return snapshot_delta(base, current).to_json()


def absorb(held: Snapshot | None, answer: Mapping[str, Any]) -> Snapshot | None:
    """The component's side: the snapshot it holds after `answer`; None when it must ask for a whole one."""
    if "base" not in answer:
        return Snapshot.from_json(answer)
    if held is None:
        return None
    try:
        return apply_delta(held, SnapshotDelta.from_json(answer))
    except BaseMismatch:
        return None


def remember(history: dict[int, Snapshot], snapshot: Snapshot, keep: int) -> None:
    """Keep the newest `keep` snapshots by generation (the bases deltas can be made from)."""
    history[snapshot.generation] = snapshot
    for old in sorted(history)[:-keep] if len(history) > keep else ():
        del history[old]
