"""The scheduler controller: desired instance counts per cell → instance records.

Level-triggered: each pass re-reads apps, nodes and instances, asks the pure
`place()` what to create and remove, and writes that in one transaction
guarded by the app's resource version (a concurrent apply makes it retry on
the next pass, never half-write). Agents pick the records up by long-poll.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.manifests import AppServiceSpec, stored_spec
from ballast.core.placement import NodeView, PlacedInstance, Placement, Resources, even_spread, place
from ballast.errors import RetryableConflict
from ballast.services.registry import NODE_TIMEOUT_SECONDS
from ballast.controllers.loop import run_passes
from ballast.store.engine import Store, Tx
from ballast.core.release_engine import ACTIVE_PHASES
from ballast.core.release_plan import Slot
from ballast.services import releases as release_records
from ballast.store.schema import apps, cells, instances, nodes, releases

log = logging.getLogger("ballast.scheduler")
ACTOR = "controller/scheduler"


def instance_id_for(app: str, ordinal: int | None) -> str:
    """Ordered apps have stable identities APP-0, APP-1, ...; others a random suffix."""
    return f"{app}-{ordinal}" if ordinal is not None else f"{app}-{secrets.token_hex(3)}"


def ordinals_for(count: int, taken: set[int]) -> list[int]:
    """The lowest free ordinals, so identities are reused after scale-in and scale-out."""
    out: list[int] = []
    candidate = 0
    while len(out) < count:
        if candidate not in taken:
            out.append(candidate)
        candidate += 1
    return out


def highest_ordinals_first(decision: Placement, app_instances: list[Any]) -> Placement:
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
    if spec.cells is not None:
        return dict(spec.cells)
    return even_spread(spec.replicas or 0, sorted(all_cells)) if all_cells else {}


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


async def _snapshot(conn: AsyncConnection, now: float) -> tuple[list[Any], list[str], list[NodeView], list[PlacedInstance]]:
    releasing = set((await conn.execute(select(releases.c.app).where(
        releases.c.phase.in_([p.value for p in ACTIVE_PHASES])))).scalars())
    # An app under release belongs to the release engine (surge instances, replacements) until it ends.
    app_rows = [a for a in (await conn.execute(select(apps).order_by(apps.c.name))).all() if a.name not in releasing]
    cell_names = list((await conn.execute(select(cells.c.name))).scalars())
    node_views, placed = await placement_inputs(conn, now)
    return app_rows, cell_names, node_views, placed


async def placement_inputs(conn: AsyncConnection, now: float) -> tuple[list[NodeView], list[PlacedInstance]]:
    """Nodes and every live instance with its app's request: what `place()` needs, for any caller.

    Requests come from every app, those under release included: their instances occupy capacity too.
    """
    node_views = [NodeView(name=n.name, cell=n.cell,
                           ready=now - n.last_heartbeat < NODE_TIMEOUT_SECONDS and not n.cordoned,
                           capacity=Resources(n.cpu_millis, n.memory_bytes))
                  for n in (await conn.execute(select(nodes))).all()]
    requests = {a.name: stored_spec(a.spec).template.resources.request()
                for a in (await conn.execute(select(apps.c.name, apps.c.spec))).all()}
    placed = [PlacedInstance(id=i.id, app=i.app, node=i.node, cell=i.cell,
                             request=requests.get(i.app, Resources(0, 0)), created_seq=i.created_seq)
              for i in (await conn.execute(select(instances).where(instances.c.desired == "running"))).all()]
    return node_views, placed


async def insert_instance(tx: Tx, *, instance_id: str, app: str, revision: int, node: Any, port: int | None,
                          ordinal: int | None, replaces: str | None, created_seq: int) -> None:
    """One new instance record, Pending on `node` (a row with name, cell, zone, ip) until its agent reports."""
    await tx.conn.execute(insert(instances).values(
        id=instance_id, app=app, revision=revision, node=node.name, cell=node.cell, zone=node.zone, ip=node.ip,
        port=port, desired="running", granted_revision=revision, granted_desired="running",
        phase="Pending", ready=False, restarts=0, pid=None, message="",
        created_seq=created_seq, desired_version=tx.rv, running_revision=None, replaces=replaces, ordinal=ordinal,
        changed_at=tx.now, created_at=tx.now, updated_at=tx.now, resource_version=tx.rv))


async def reconcile_once(store: Store) -> int:
    """One pass over every app; returns how many instance records it created or retired."""
    async with store.read() as conn:
        app_rows, cell_names, node_views, placed = await _snapshot(conn, store.clock())
        live = (await conn.execute(select(instances.c.id, instances.c.app, instances.c.cell, instances.c.ordinal)
                                   .where(instances.c.desired == "running"))).all()
    live_by_app: dict[str, list[Any]] = {}
    for i in live:  # one grouping per pass, not one scan of every instance per app
        live_by_app.setdefault(i.app, []).append(i)
    placed_by_app, usage = _index(placed)
    changes = 0
    for row in app_rows:
        spec = stored_spec(row.spec)
        declared = wanted_per_cell(spec, cell_names)
        committed = row.status.get("placedCounts")
        # After a scale release was rolled back, the counts it left stand until the app is applied again.
        held = committed is not None and row.status.get("heldGeneration") == row.generation
        wanted = committed if held else declared
        view = condensed(row.name, placed_by_app, usage)
        decision = place(row.name, wanted, spec.template.resources.request(), view, node_views)
        decision = enforce_fixed_port(decision, row.name, spec.template.port, view)
        ordered = spec.strategy.upgrade == "ordered"
        if ordered:
            decision = highest_ordinals_first(decision, live_by_app.get(row.name, []))
        status: dict[str, Any] = {"unplaced": [{"cell": c, "count": n, "reason": r} for c, n, r in decision.unplaced],
                                  "placedCounts": wanted}
        if held:
            status["heldGeneration"] = row.generation
            if declared != wanted:
                status["message"] = (f"declared counts {declared} are not applied: their scale release was rolled "
                                     f"back; running {wanted}. Apply the app again to retry.")
        mine = live_by_app.get(row.name, [])
        # A change of the declared counts of a running app goes through the grouped engine; catching up on
        # counts already declared (instances not placed yet, or lost) is the scheduler's own work.
        if mine and committed is not None and committed != wanted and (decision.create or decision.remove):
            # A running app changes its instance counts through the grouped engine, like a release.
            try:
                await _start_scale(store, row, decision, {**status, "previousCounts": committed}, mine, ordered)
            except RetryableConflict:
                continue
            changes += len(decision.create) + len(decision.remove)
            continue
        if not decision.create and not decision.remove and status == row.status:
            continue
        try:
            created = await _write(store, row, decision, status, spec.template.port, ordered)
        except RetryableConflict:
            continue  # the app changed under us; the next pass decides again from fresh state
        changes += len(created) + len(decision.remove)
        placed = [p for p in placed if p.id not in decision.remove] + created
        placed_by_app, usage = _index(placed)
    return changes


def _index(placed: list[PlacedInstance]) -> tuple[dict[str, list[PlacedInstance]], dict[tuple[str, str], Resources]]:
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


async def _guard_app(tx: Tx, row: Any, status: dict[str, Any]) -> None:
    """Write the decision only if the app is as it was read (compare-and-set on its resource version)."""
    guard = await tx.conn.execute(update(apps).where(apps.c.name == row.name,
                                                     apps.c.resource_version == row.resource_version)
                                  .values(status=status, resource_version=tx.rv))
    if guard.rowcount != 1:
        raise RetryableConflict(f"app {row.name} changed")


async def _free_ordinals(tx: Tx, app: str, count: int) -> list[int]:
    taken = set((await tx.conn.execute(select(instances.c.ordinal).where(
        instances.c.app == app, instances.c.ordinal.is_not(None)))).scalars())
    return ordinals_for(count, taken)


async def _start_scale(store: Store, row: Any, decision: Placement, status: dict[str, Any], mine: list[Any],
                       ordered: bool) -> None:
    adds: dict[str, int] = {}
    for new in decision.create:
        adds[new.cell] = adds.get(new.cell, 0) + 1
    by_id = {i.id: i for i in mine}
    removes = [Slot(i, by_id[i].cell, by_id[i].ordinal) for i in decision.remove]
    async with store.write() as tx:
        await _guard_app(tx, row, status)
        ordinals = await _free_ordinals(tx, row.name, len(decision.create)) if ordered else []
        await release_records.start_scale(tx, row, adds, removes, secrets.token_hex(4), ordinals, ACTOR)


async def _write(store: Store, row: Any, decision: Placement, status: dict[str, Any], port: int | None,
                 ordered: bool) -> list[PlacedInstance]:
    async with store.write() as tx:
        await _guard_app(tx, row, status)
        node_rows = {n.name: n for n in (await tx.conn.execute(
            select(nodes.c.name, nodes.c.cell, nodes.c.ip, nodes.c.zone))).all()}
        created: list[PlacedInstance] = []
        request = stored_spec(row.spec).template.resources.request()
        ordinals: list[int | None] = [None] * len(decision.create)
        if ordered:
            ordinals = list(await _free_ordinals(tx, row.name, len(decision.create)))
        for seq, (new, ordinal) in enumerate(zip(decision.create, ordinals)):
            instance_id = instance_id_for(row.name, ordinal)
            await insert_instance(tx, instance_id=instance_id, app=row.name, revision=row.deployed_revision,
                                  node=node_rows[new.node], port=port, ordinal=ordinal, replaces=None,
                                  created_seq=tx.rv * 10_000 + seq)
            created.append(PlacedInstance(id=instance_id, app=row.name, node=new.node, cell=new.cell,
                                          request=request, created_seq=tx.rv * 10_000 + seq))
        if decision.remove:
            await tx.conn.execute(update(instances).where(instances.c.id.in_(decision.remove))
                                  .values(desired="deleted", desired_version=tx.rv, resource_version=tx.rv))
        if decision.create or decision.remove:
            await tx.audit(actor=ACTOR, action="schedule", resource=f"AppService/{row.name}",
                           detail={"created": [{"id": c.id, "node": c.node, "cell": c.cell} for c in created],
                                   "removed": list(decision.remove), "unplaced": status["unplaced"]})
        return created


async def run(store: Store, stop: asyncio.Event, *, idle_seconds: float = 2.0) -> None:
    # Status reports are frequent writes: at most one pass per 0.25 s.
    await run_passes("scheduler", reconcile_once, store, stop, idle_seconds=idle_seconds, min_interval=0.25)
