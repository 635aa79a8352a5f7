"""The store side of placement: what `place()` needs to decide, and the record of an instance it placed.

Both the scheduler and the release engine (a surge or replacement instance) place instances; they share
this module rather than one controller importing the other.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.manifests import stored_spec
from ballast.core.nodes import DEFAULT_NODE_GRACE_SECONDS, schedulable
from ballast.core.placement import NodeView, PlacedInstance, Resources
from ballast.store.engine import Tx
from ballast.store.schema import apps, instances, nodes


async def node_inputs(conn: AsyncConnection, now: float, grace: float = DEFAULT_NODE_GRACE_SECONDS) -> list[NodeView]:
    """Every node as placement sees it: whether it takes new instances now, and its capacity."""
    return [NodeView(name=n.name, cell=n.cell,
                     ready=schedulable(n.last_heartbeat, n.cordoned, now, grace) and n.lifecycle != "NotReady",
                     capacity=Resources(n.cpu_millis, n.memory_bytes))
            for n in (await conn.execute(select(nodes))).all()]


async def placement_inputs(conn: AsyncConnection, now: float, grace: float = DEFAULT_NODE_GRACE_SECONDS
                           ) -> tuple[list[NodeView], list[PlacedInstance]]:
    """Nodes and every live instance with its app's request: what `place()` needs, for any caller.

    Requests come from every app, those under release included: their instances occupy capacity too.
    """
    node_views = await node_inputs(conn, now, grace)
    requests = {a.name: stored_spec(a.spec).template.resources.request()
                for a in (await conn.execute(select(apps.c.name, apps.c.spec))).all()}
    placed = [PlacedInstance(id=i.id, app=i.app, node=i.node, cell=i.cell,
                             request=requests.get(i.app, Resources(0, 0)), created_seq=i.created_seq,
                             group=i.group_code)
              for i in (await conn.execute(select(instances).where(instances.c.desired == "running"))).all()]
    return node_views, placed


async def insert_instance(tx: Tx, *, instance_id: str, app: str, revision: int, node: Any, port: int | None,
                          ordinal: int | None, replaces: str | None, created_seq: int, group_code: str = "") -> None:
    """One new instance record, Pending on `node` (a row with name, cell, zone, ip) until its agent reports."""
    await tx.conn.execute(insert(instances).values(
        id=instance_id, app=app, revision=revision, node=node.name, cell=node.cell, zone=node.zone, ip=node.ip,
        port=port, group_code=group_code, desired="running", granted_revision=revision, granted_desired="running",
        phase="Pending", ready=False, restarts=0, pid=None, message="",
        created_seq=created_seq, desired_version=tx.rv, running_revision=None, replaces=replaces, ordinal=ordinal,
        changed_at=tx.now, created_at=tx.now, updated_at=tx.now, resource_version=tx.rv))
