"""The scheduler controller: desired instance counts per cell → instance records.

Level-triggered: each pass re-reads apps, nodes and instances, asks the pure
`place()` (and `core.scheduling` around it: counts per cell, fixed ports,
ordered identities) what to create and remove, and writes that in one transaction
guarded by the app's resource version (a concurrent apply makes it retry on
the next pass, never half-write). Agents pick the records up by long-poll.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.controllers.loop import run_passes
from ballast.core.digests import digest
from ballast.core.manifests import stored_spec
from ballast.core.placement import NodeView, PlacedInstance, Placement, place
from ballast.core.release_engine import ACTIVE_PHASES
from ballast.core.release_plan import Slot
from ballast.core.scheduling import (condensed, enforce_fixed_port, highest_ordinals_first, index_placed,
                                     instance_id_for, ordinals_for, spill_to_failover, wanted_per_cell)
from ballast.errors import RetryableConflict
from ballast.services import releases as release_records
from ballast.services.placement import insert_instance, node_inputs, placement_inputs
from ballast.store.engine import ACKS, HEARTBEAT, Store, Tx
from ballast.store.schema import apps, cells, instances, isolation_groups, nodes, releases
from ballast.services.isolation_groups import wanted as group_wanted
from ballast.core.manifests import IsolationGroupSpec

log = logging.getLogger("ballast.scheduler")
ACTOR = "controller/scheduler"
QUIET = "scheduler-quiet"   # memo: (content mark, node views) of the last pass that changed nothing


async def _snapshot(conn: AsyncConnection, now: float, grace: float) -> tuple[list[Any], list[str], list[NodeView], list[PlacedInstance]]:
    releasing = set((await conn.execute(select(releases.c.app).where(
        releases.c.phase.in_([p.value for p in ACTIVE_PHASES])))).scalars())
    # An app under release belongs to the release engine (surge instances, replacements) until it ends.
    app_rows = [a for a in (await conn.execute(select(apps).order_by(apps.c.name))).all() if a.name not in releasing]
    cell_names = list((await conn.execute(select(cells.c.name))).scalars())
    node_views, placed = await placement_inputs(conn, now, grace)
    return app_rows, cell_names, node_views, placed


async def reconcile_once(store: Store) -> int:
    """One pass over every app; returns how many instance records it created or retired."""
    # Heartbeats and acknowledgements change no placement input but the nodes' readiness, read every pass;
    # anything else written moves the mark. A pass that would see what the last quiet one saw is skipped.
    mark = await store.content_mark(ignoring=frozenset({HEARTBEAT, ACKS}))
    async with store.read() as conn:
        views = sorted(await node_inputs(conn, store.clock(), store.node_grace_seconds), key=lambda v: v.name)
        if mark is not None and store.memo.get(QUIET) == (mark, views):
            return 0
    store.memo.pop(QUIET, None)
    changes = await _pass(store)
    if changes == 0:
        store.memo[QUIET] = (mark, views)
    return changes


async def _pass(store: Store) -> int:
    async with store.read() as conn:
        app_rows, cell_names, node_views, placed = await _snapshot(conn, store.clock(), store.node_grace_seconds)
        live = (await conn.execute(select(instances.c.id, instances.c.app, instances.c.cell, instances.c.ordinal)
                                   .where(instances.c.desired == "running"))).all()
    live_by_app: dict[str, list[Any]] = {}
    for i in live:  # one grouping per pass, not one scan of every instance per app
        live_by_app.setdefault(i.app, []).append(i)
    placed_by_app, usage = index_placed(placed)
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
        spilled: dict[str, int] | None = None
        if spec.failover is not None and decision.unplaced:
            # The app allows it: what its own cell cannot hold goes to a failover cell, until the cell can again.
            spilled = spill_to_failover(wanted, decision.unplaced, spec.failover.cells)
            decision = place(row.name, spilled, spec.template.resources.request(), view, node_views)
        decision = enforce_fixed_port(decision, row.name, spec.template.port, view)
        ordered = spec.strategy.upgrade == "ordered"
        if ordered:
            decision = highest_ordinals_first(decision, live_by_app.get(row.name, []))
        status: dict[str, Any] = {"unplaced": [{"cell": c, "count": n, "reason": r} for c, n, r in decision.unplaced],
                                  "placedCounts": wanted}
        if spilled is not None and spilled != wanted:
            status["failover"] = {c: n - wanted.get(c, 0) for c, n in spilled.items() if n != wanted.get(c, 0)}
            status["message"] = "cells short of capacity run instances in failover cells: " + ", ".join(
                f"{c} {n:+d}" for c, n in sorted(status["failover"].items()))
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
        placed_by_app, usage = index_placed(placed)
    return changes + await _place_groups(store, app_rows, cell_names, node_views, placed)


async def _place_groups(store: Store, app_rows: list[Any], cell_names: list[str], node_views: list[NodeView],
                        placed: list[PlacedInstance]) -> int:
    """Each isolation group to its counts. A group changes size here, not through the grouped engine: a new
    instance takes calls only once ready and acknowledged, a retired one is drained first, and no default
    pool ever holds either, so no caller's traffic moves."""
    async with store.read() as conn:
        group_rows = (await conn.execute(select(isolation_groups).order_by(isolation_groups.c.name))).all()
    specs = {a.name: a for a in app_rows}   # apps under release are absent: the release engine owns them
    changes = 0
    for group in group_rows:
        app_row = specs.get(group.app)
        if app_row is None:
            continue
        spec = stored_spec(app_row.spec)
        placed_by_app, usage = index_placed(placed)
        view = condensed(group.app, placed_by_app, usage)
        counts = group_wanted(IsolationGroupSpec.model_validate(group.spec), cell_names)
        decision = place(group.app, counts, spec.template.resources.request(), view, node_views, group=group.code)
        decision = enforce_fixed_port(decision, group.app, spec.template.port, view)
        status = {"unplaced": [{"cell": c, "count": n, "reason": r} for c, n, r in decision.unplaced]}
        if not decision.create and not decision.remove and status == group.status:
            continue
        try:
            created = await _write_group(store, group, app_row, decision, status, spec.template.port)
        except RetryableConflict:
            continue
        changes += len(created) + len(decision.remove)
        placed = [p for p in placed if p.id not in decision.remove] + created
    return changes


async def _write_group(store: Store, group: Any, app_row: Any, decision: Placement, status: dict[str, Any],
                       port: int | None) -> list[PlacedInstance]:
    async with store.write() as tx:
        guard = await tx.conn.execute(update(isolation_groups).where(
            isolation_groups.c.name == group.name, isolation_groups.c.resource_version == group.resource_version)
            .values(status=status, resource_version=tx.rv))
        if guard.rowcount != 1:
            raise RetryableConflict(f"isolation group {group.name!r}")
        node_rows = {n.name: n for n in (await tx.conn.execute(
            select(nodes.c.name, nodes.c.cell, nodes.c.ip, nodes.c.zone))).all()}
        request = stored_spec(app_row.spec).template.resources.request()
        created: list[PlacedInstance] = []
        for seq, new in enumerate(decision.create):
            instance_id = instance_id_for(f"{group.app}-{group.code}", None)
            await insert_instance(tx, instance_id=instance_id, app=group.app, revision=app_row.deployed_revision,
                                  node=node_rows[new.node], port=port, ordinal=None, replaces=None,
                                  created_seq=tx.rv * 10_000 + seq, group_code=group.code)
            created.append(PlacedInstance(id=instance_id, app=group.app, node=new.node, cell=new.cell,
                                          request=request, created_seq=tx.rv * 10_000 + seq, group=group.code))
        if decision.remove:
            await tx.conn.execute(update(instances).where(instances.c.id.in_(decision.remove))
                                  .values(desired="deleted", desired_version=tx.rv, resource_version=tx.rv))
        if decision.create or decision.remove:
            await tx.audit(actor=ACTOR, action="schedule", resource=f"IsolationGroup/{group.name}",
                           detail={"app": group.app, "code": group.code,
                                   "created": [{"id": c.id, "node": c.node, "cell": c.cell} for c in created],
                                   "removed": list(decision.remove), "unplaced": status["unplaced"]})
        return created


async def _guard_app(tx: Tx, row: Any, status: dict[str, Any]) -> None:
    """Write the decision only if the app is as it was read (compare-and-set on its resource version)."""
    guard = await tx.conn.execute(update(apps).where(apps.c.name == row.name,
                                                     apps.c.resource_version == row.resource_version)
                                  .values(status=status, resource_version=tx.rv))
    if guard.rowcount != 1:
        raise RetryableConflict(f"app {row.name!r}")


async def _placed_digest(tx: Tx, app: str) -> str:
    """What scheduling changes, as its audit digests cover it: the app's running instances and their nodes."""
    rows = (await tx.conn.execute(select(instances.c.id, instances.c.node).where(
        instances.c.app == app, instances.c.desired == "running").order_by(instances.c.id))).all()
    return digest([[r.id, r.node] for r in rows])


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
        before = await _placed_digest(tx, row.name)
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
            await tx.audit(actor=ACTOR, action="schedule", resource=f"AppService/{row.name}", before=before,
                           after=await _placed_digest(tx, row.name), detail={"created": [{"id": c.id, "node": c.node, "cell": c.cell} for c in created],
                                   "removed": list(decision.remove), "unplaced": status["unplaced"]})
        return created


async def run(store: Store, stop: asyncio.Event, *, idle_seconds: float = 2.0) -> None:
    # Status reports are frequent writes: at most one pass per 0.25 s.
    await run_passes("scheduler", reconcile_once, store, stop, idle_seconds=idle_seconds, min_interval=0.25)
