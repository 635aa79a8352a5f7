"""Cells and nodes as people read them: the values `GET /v1/cells` and `GET /v1/nodes` render.

The writes (registration, deletion, cordoning) live with the records they guard, in `registry` and
`evacuation`; this module only reads, inside the caller's connection, and returns frozen values, so the
API layer renders without knowing a table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.nodes import DEFAULT_NODE_GRACE_SECONDS, node_ready
from ballast.store.schema import cells, instances, nodes


@dataclass(frozen=True)
class CellRecord:
    name: str
    labels: dict[str, Any]
    created_at: float
    resource_version: int
    spec: dict[str, Any]
    nodes: tuple[str, ...]   # names of the cell's nodes, in name order


@dataclass(frozen=True)
class NodeRecord:
    name: str
    labels: dict[str, Any]
    registered_at: float
    resource_version: int
    cell: str
    zone: str
    ip: str
    cpu_millis: int
    memory_bytes: int
    metrics_address: str | None
    last_heartbeat: float
    seconds_since_heartbeat: float   # at the moment of the read
    ready: bool                      # heard from recently enough to hold running instances
    instances: int                   # instances desired running on it
    agent_version: str
    cordoned: bool
    lifecycle: str = "Ready"          # the node lifecycle controller's judgement: Ready | NotReady | Degraded
    lifecycle_since: float | None = None
    lifecycle_reason: str = ""
    conditions: dict[str, Any] | None = None   # the agent's last report of its own health


async def list_cells(conn: AsyncConnection, name: str | None = None) -> list[CellRecord]:
    """Every cell (or the one named) with its nodes' names, in name order."""
    query = select(cells).order_by(cells.c.name)
    node_query = select(nodes.c.name, nodes.c.cell).order_by(nodes.c.name)
    if name is not None:
        query, node_query = query.where(cells.c.name == name), node_query.where(nodes.c.cell == name)
    by_cell: dict[str, list[str]] = {}
    for n in (await conn.execute(node_query)).all():
        by_cell.setdefault(n.cell, []).append(n.name)
    return [CellRecord(name=r.name, labels=r.labels, created_at=r.created_at, resource_version=r.resource_version,
                       spec=r.spec, nodes=tuple(by_cell.get(r.name, ())))
            for r in (await conn.execute(query)).all()]


async def list_nodes(conn: AsyncConnection, now: float, name: str | None = None,
                     grace: float = DEFAULT_NODE_GRACE_SECONDS) -> list[NodeRecord]:
    """Every node (or the one named) as of `now`, with how many instances are desired running on it, in name
    order."""
    query = select(nodes).order_by(nodes.c.name)
    count_query = select(instances.c.node).where(instances.c.desired == "running")
    if name is not None:
        query, count_query = query.where(nodes.c.name == name), count_query.where(instances.c.node == name)
    rows = (await conn.execute(query)).all()
    counts = Counter((await conn.execute(count_query)).scalars())
    return [NodeRecord(name=r.name, labels=r.labels, registered_at=r.registered_at,
                       resource_version=r.resource_version, cell=r.cell, zone=r.zone, ip=r.ip,
                       cpu_millis=r.cpu_millis, memory_bytes=r.memory_bytes, metrics_address=r.metrics_address,
                       last_heartbeat=r.last_heartbeat, seconds_since_heartbeat=now - r.last_heartbeat,
                       ready=node_ready(r.last_heartbeat, now, grace), instances=counts[r.name],
                       agent_version=r.agent_version, cordoned=r.cordoned, lifecycle=r.lifecycle,
                       lifecycle_since=r.lifecycle_since, lifecycle_reason=r.lifecycle_reason,
                       conditions=r.conditions)
            for r in rows]
