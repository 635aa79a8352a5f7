"""Instances as people read them: the values `GET /v1/instances` renders.

The scheduler and the release engine create instance records, agents report on them, the registry grants
them; this module only reads, inside the caller's connection, and returns frozen values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.nodes import DEFAULT_NODE_GRACE_SECONDS, InstanceReadiness, instance_readiness
from ballast.store.schema import instances, nodes


@dataclass(frozen=True)
class InstanceRecord:
    id: str
    app: str
    created_at: float
    updated_at: float
    resource_version: int
    # The intent: what the control plane wants the instance to run.
    revision: int
    desired: str
    # Where it is placed.
    node: str
    cell: str
    zone: str
    ip: str
    port: int | None
    # What its agent reports (running_revision is None until it first reports).
    running_revision: int | None
    phase: str
    ready: bool                      # as last reported
    readiness: InstanceReadiness     # what is known now: Unknown once its node stopped heartbeating
    restarts: int
    pid: int | None
    message: str
    mesh_port: int | None
    drain: dict[str, Any] | None
    # What the agent has been told: the intent, once the drain protocol allowed it.
    granted_revision: int
    granted_desired: str
    group: str = ""          # its isolation group's code; "": the app's own instances


async def list_instances(conn: AsyncConnection, now: float, *, app: str | None = None, node: str | None = None,
                         instance_id: str | None = None,
                         grace: float = DEFAULT_NODE_GRACE_SECONDS) -> list[InstanceRecord]:
    """Instances matching every filter given, by app, cell and id, with their readiness as known at `now`."""
    query = select(instances).order_by(instances.c.app, instances.c.cell, instances.c.id)
    if app is not None:
        query = query.where(instances.c.app == app)
    if node is not None:
        query = query.where(instances.c.node == node)
    if instance_id is not None:
        query = query.where(instances.c.id == instance_id)
    heartbeats = {n.name: n.last_heartbeat for n in (await conn.execute(select(nodes.c.name, nodes.c.last_heartbeat)))}
    return [InstanceRecord(id=r.id, app=r.app, created_at=r.created_at, updated_at=r.updated_at,
                           resource_version=r.resource_version, revision=r.revision, desired=r.desired,
                           node=r.node, cell=r.cell, zone=r.zone, ip=r.ip, port=r.port,
                           running_revision=r.running_revision, phase=r.phase, ready=r.ready,
                           readiness=instance_readiness(r.ready, heartbeats.get(r.node), now, grace), restarts=r.restarts,
                           pid=r.pid, message=r.message, mesh_port=r.mesh_port, drain=r.drain,
                           granted_revision=r.granted_revision, granted_desired=r.granted_desired,
                           group=r.group_code)
            for r in (await conn.execute(query)).all()]
