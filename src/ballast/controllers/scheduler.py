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

from ballast.core.manifests import AppServiceSpec
from ballast.core.placement import NodeView, PlacedInstance, Placement, Resources, even_spread, place
from ballast.errors import RetryableConflict
from ballast.services.registry import NODE_TIMEOUT_SECONDS
from ballast.store.engine import Store
from ballast.store.schema import apps, cells, instances, nodes

log = logging.getLogger("ballast.scheduler")
ACTOR = "controller/scheduler"


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
    app_rows = (await conn.execute(select(apps).order_by(apps.c.name))).all()
    cell_names = list((await conn.execute(select(cells.c.name))).scalars())
    node_views = [NodeView(name=n.name, cell=n.cell, ready=now - n.last_heartbeat < NODE_TIMEOUT_SECONDS,
                           capacity=Resources(n.cpu_millis, n.memory_bytes))
                  for n in (await conn.execute(select(nodes))).all()]
    templates: dict[str, Resources] = {}
    for a in app_rows:
        templates[a.name] = AppServiceSpec.model_validate(a.spec).template.resources.request()
    placed = [PlacedInstance(id=i.id, app=i.app, node=i.node, cell=i.cell,
                             request=templates.get(i.app, Resources(0, 0)), created_seq=i.created_seq)
              for i in (await conn.execute(select(instances).where(instances.c.desired == "running"))).all()]
    return app_rows, cell_names, node_views, placed


async def reconcile_once(store: Store) -> int:
    """One pass over every app; returns how many instance records it created or retired."""
    async with store.read() as conn:
        app_rows, cell_names, node_views, placed = await _snapshot(conn, store.clock())
    changes = 0
    node_ip = {n.name: n for n in node_views}
    for row in app_rows:
        spec = AppServiceSpec.model_validate(row.spec)
        decision = place(row.name, wanted_per_cell(spec, cell_names), spec.template.resources.request(), placed, node_views)
        decision = enforce_fixed_port(decision, row.name, spec.template.port, placed)
        status = {"unplaced": [{"cell": c, "count": n, "reason": r} for c, n, r in decision.unplaced]}
        if not decision.create and not decision.remove and status == row.status:
            continue
        try:
            created = await _write(store, row, decision, status, spec.template.port, node_ip)
        except RetryableConflict:
            continue  # the app changed under us; the next pass decides again from fresh state
        changes += len(created) + len(decision.remove)
        placed = [p for p in placed if p.id not in decision.remove] + created
    return changes


async def _write(store: Store, row: Any, decision: Placement, status: dict[str, Any], port: int | None,
                 node_views: dict[str, NodeView]) -> list[PlacedInstance]:
    async with store.write() as tx:
        guard = await tx.conn.execute(update(apps).where(apps.c.name == row.name,
                                                         apps.c.resource_version == row.resource_version)
                                      .values(status=status, resource_version=tx.rv))
        if guard.rowcount != 1:
            raise RetryableConflict(f"app {row.name} changed")
        ips = {n.name: n.ip for n in (await tx.conn.execute(select(nodes.c.name, nodes.c.ip, nodes.c.zone))).all()}
        zones = {n.name: n.zone for n in (await tx.conn.execute(select(nodes.c.name, nodes.c.zone))).all()}
        created: list[PlacedInstance] = []
        request = AppServiceSpec.model_validate(row.spec).template.resources.request()
        for seq, new in enumerate(decision.create):
            instance_id = f"{row.name}-{secrets.token_hex(3)}"
            await tx.conn.execute(insert(instances).values(
                id=instance_id, app=row.name, revision=row.deployed_revision, node=new.node, cell=new.cell,
                zone=zones[new.node], ip=ips[new.node], port=port, desired="running", phase="Pending", ready=False,
                restarts=0, pid=None, message="", created_seq=tx.rv * 10_000 + seq, desired_version=tx.rv,
                created_at=tx.now, updated_at=tx.now, resource_version=tx.rv))
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
    rv = 0
    while not stop.is_set():
        try:
            await reconcile_once(store)
        except Exception:
            log.exception("scheduler pass failed; retrying")
            await asyncio.sleep(1.0)
        rv = await store.wait_for_change(rv, idle_seconds)
