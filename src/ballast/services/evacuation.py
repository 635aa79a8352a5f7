"""Node evacuation: cordon a node, then move its instances away through the grouped engine.

Per app with instances on the node, one release of kind `evacuate`: first a group that starts as many
new instances elsewhere in the node's cell (the node is cordoned, so placement skips it), then a group
that retires the old ones — each drained like any instance that stops (every traffic component
acknowledges, in-flight requests finish). Nothing is written unless every app can be moved.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from sqlalchemy import select, update

from ballast.core.digests import digest
from ballast.core.manifests import stored_spec
from ballast.core.release_plan import PauseMode, Slot, UpgradeMode
from ballast.core.placement import place
from ballast.errors import Conflict, FieldProblem, InvalidInput, NotFound
from ballast.services import releases
from ballast.services.placement import placement_inputs
from ballast.store.engine import Tx
from ballast.store.schema import apps, instances, nodes


async def _node(tx: Tx, name: str) -> Any:
    row = (await tx.conn.execute(select(nodes).where(nodes.c.name == name))).first()
    if row is None:
        raise NotFound(f"node {name!r} not found")
    return row


def _cordon_digest(node: Any, cordoned: bool) -> str:
    """What a drain or an uncordon changes of a node, as its audit digests cover it."""
    return digest({"node": node.name, "cordoned": bool(cordoned)})


async def drain(tx: Tx, name: str, actor: str) -> dict[str, Any]:
    node = await _node(tx, name)
    rows = (await tx.conn.execute(select(instances).where(instances.c.node == name,
                                                          instances.c.desired == "running"))).all()
    by_app: dict[str, list[Any]] = {}
    for r in rows:
        by_app.setdefault(r.app, []).append(r)
    plans = []
    for app in sorted(by_app):  # check everything before writing anything
        running = await releases.active_release(tx.conn, app)
        if running is not None:
            raise Conflict(f"app {app!r} has release {running.id} {running.phase} ({running.kind}); node {name!r} "
                           f"was not drained: finish, pause-and-roll-back or wait for it, then drain again")
        app_row = (await tx.conn.execute(select(apps).where(apps.c.name == app))).one()
        strategy = stored_spec(app_row.spec).strategy.to_strategy()
        if strategy.upgrade is UpgradeMode.ORDERED:
            raise Conflict(f"app {app!r} has ordered identities with data directories on node {name!r}; moving "
                           f"them to another node is not supported yet, so node {name!r} was not drained")
        plans.append((app_row, by_app[app], strategy))
    await tx.conn.execute(update(nodes).where(nodes.c.name == name).values(cordoned=True, resource_version=tx.rv))
    started = []
    for app_row, moving, strategy in plans:
        count = len(moving)
        # Two halves of every part (the app's own, each group's, per cell): the new instances, then the old ones.
        strategy = dataclasses.replace(strategy, beta_size=0, groups=2, group_sizes=None,
                                       pause=PauseMode.NONE, max_unavailable_per_cell=max(count, 1))
        own = sum(1 for i in moving if not i.group_code)
        group_adds: dict[str, dict[str, int]] = {}
        for i in moving:   # an isolation group's instance moves as one of its group
            if i.group_code:
                group_adds.setdefault(i.group_code, {node.cell: 0})[node.cell] += 1
        release_id = await releases.start_scale(
            tx, app_row, {node.cell: own} if own else {},
            [Slot(i.id, i.cell, i.ordinal, group=i.group_code) for i in moving], secrets.token_hex(4),
            [], actor, kind="evacuate", strategy=strategy, reason=f"evacuating node {name}", group_adds=group_adds)
        started.append({"app": app_row.name, "release": release_id, "instances": [i.id for i in moving]})
    await tx.audit(actor=actor, action="node.drain", resource=f"Node/{name}", before=_cordon_digest(node, node.cordoned),
                   after=_cordon_digest(node, True), detail={"releases": started})
    return {"node": name, "cordoned": True, "releases": started}


async def uncordon(tx: Tx, name: str, actor: str) -> dict[str, Any]:
    node = await _node(tx, name)
    await tx.conn.execute(update(nodes).where(nodes.c.name == name).values(cordoned=False, resource_version=tx.rv))
    await tx.audit(actor=actor, action="node.uncordon", resource=f"Node/{name}",
                   before=_cordon_digest(node, node.cordoned), after=_cordon_digest(node, False))
    return {"node": name, "cordoned": False}


async def move_instance(tx: Tx, instance_id: str, to_node: str | None, actor: str) -> dict[str, Any]:
    """Move an instance of a NotReady node to a ready node of its cell, without its data: the way out for an
    ordered instance, whose data directory stays on the node it cannot leave otherwise. The record keeps its
    identity; the node it leaves stops the old process when it returns (it is no longer assigned there)."""
    row = (await tx.conn.execute(select(instances).where(instances.c.id == instance_id))).first()
    if row is None:
        raise NotFound(f"instance {instance_id!r} not found")
    if row.desired != "running":
        raise Conflict(f"instance {instance_id!r} is being deleted; there is nothing to move")
    old = await _node(tx, row.node)
    if old.lifecycle != "NotReady":
        raise Conflict(f"instance {instance_id!r} is on node {old.name!r}, which is {old.lifecycle}: drain the node "
                       f"instead (`ballast node drain {old.name}`), which moves instances without losing requests")
    if await releases.active_release(tx.conn, row.app) is not None:
        raise Conflict(f"app {row.app!r} is being released; move the instance when its release has ended")
    views, placed = await placement_inputs(tx.conn, tx.now, tx.node_grace_seconds)
    views = [v for v in views if v.cell == row.cell and v.name != row.node and (to_node is None or v.name == to_node)]
    if to_node is not None and not views:
        raise InvalidInput(f"node {to_node!r} is not a node of cell {row.cell!r}",
                           problems=[FieldProblem("node", to_node, f"a ready node of cell {row.cell}")])
    app_row = (await tx.conn.execute(select(apps).where(apps.c.name == row.app))).one()
    request = stored_spec(app_row.spec).template.resources.request()
    others = [p for p in placed if p.id != row.id]
    mine = sum(1 for p in others if p.app == row.app and p.cell == row.cell and p.group == row.group_code)
    decision = place(row.app, {row.cell: mine + 1}, request, others, views, group=row.group_code)
    if not decision.create:
        why = decision.unplaced[0][2] if decision.unplaced else "no ready node"
        raise Conflict(f"instance {instance_id!r} cannot move within cell {row.cell!r}: {why}")
    target = (await tx.conn.execute(select(nodes).where(nodes.c.name == decision.create[0].node))).one()
    before = digest({"instance": row.id, "node": row.node})
    await tx.conn.execute(update(instances).where(instances.c.id == row.id).values(
        node=target.name, zone=target.zone, ip=target.ip, port=None, mesh_port=None, phase="Pending", ready=False,
        pid=None, running_revision=None, drain=None, granted_revision=row.revision, granted_desired="running",
        message=f"moved from node {row.node} without its data", desired_version=tx.rv, changed_at=tx.now,
        updated_at=tx.now, resource_version=tx.rv))
    await tx.audit(actor=actor, action="instance.move", resource=f"Instance/{row.id}", before=before,
                   after=digest({"instance": row.id, "node": target.name}),
                   detail={"app": row.app, "from": row.node, "to": target.name, "withData": False})
    return {"instance": row.id, "from": row.node, "to": target.name}
