"""Nodes and instances as the control plane records them.

Agents register their node, report heartbeats with instance status, and
long-poll for their assignments (the instances the scheduler placed on
them). Telemetry (heartbeats, status) is not audited; registration is.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Sequence

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.digests import canonical_json, digest
from ballast.core.endpoints import MESH
from ballast.core.release_engine import ACTIVE_PHASES
from ballast.core.manifests import stored_spec
from ballast.errors import Conflict, FieldProblem, InvalidInput, NotFound
from ballast.core.identity import NODE
from ballast.services import component_credentials
from ballast.services.endpoints import bump_registry
from ballast.services.instances import record_deletions
from ballast.store.engine import EVERYTHING, GRANTS, HEARTBEAT, INSTANCE_STATUS, Store, Tx
from ballast.store.schema import apps, cells, components, instances, isolation_groups, nodes, release_events, releases, revisions
from ballast.wire.assignments import Assignment, Assignments, DrainSettings, Template
from ballast.wire.reports import InstanceReport, NodeConditions, NodeRegistration

ACTIVE = tuple(p.value for p in ACTIVE_PHASES)
ASSIGNMENT_TOPICS = frozenset({EVERYTHING, GRANTS})

_REPORTED_FIELDS = ("phase", "ready", "pid", "port", "mesh_port", "restarts", "message", "running_revision", "drain")


_NODE_FIELDS = ("cell", "zone", "ip", "cpu_millis", "memory_bytes", "labels", "agent_version", "metrics_address")


def _node_digest(node: Any) -> str:
    """What a node's registration records, as its audit digests cover it (not its heartbeat)."""
    get = node.get if isinstance(node, dict) else lambda k: getattr(node, k)
    return digest({k: get(k) for k in _NODE_FIELDS})


async def register_node(tx: Tx, name: str, body: NodeRegistration, actor: str) -> dict[str, Any]:
    cell = (await tx.conn.execute(select(cells).where(cells.c.name == body.cell))).first()
    if cell is None:
        raise InvalidInput("unknown cell", problems=[FieldProblem("cell", body.cell, "an existing cell")])
    row = (await tx.conn.execute(select(nodes).where(nodes.c.name == name))).first()
    values = dict(cell=cell.name, zone=cell.zone, ip=body.ip, cpu_millis=body.cpu_millis,
                  memory_bytes=body.memory_bytes, labels=dict(body.labels), agent_version=body.agent_version,
                  last_heartbeat=tx.now, resource_version=tx.rv, metrics_address=body.metrics_address)
    if row is None:
        await tx.conn.execute(insert(nodes).values(name=name, registered_at=tx.now, **values))
        outcome = "created"
        # Its agent is the mesh component for the node's sidecars: from now on it must acknowledge.
        await tx.conn.execute(delete(components).where(components.c.kind == MESH, components.c.name == name))
        await tx.conn.execute(insert(components).values(kind=MESH, name=name, address=body.ip, acked_generation=0,
                                                        applied_hash="", error="", registered_at=tx.now,
                                                        last_seen=tx.now))
    else:
        if row.cell != cell.name:
            live = (await tx.conn.execute(select(instances.c.id).where(instances.c.node == name).limit(1))).first()
            if live is not None:
                raise Conflict(f"node {name!r} is in cell {row.cell!r} and still has instances; delete the node before moving it to {cell.name!r}")
        await tx.conn.execute(update(nodes).where(nodes.c.name == name).values(**values))
        outcome = "re-registered"
    await tx.audit(actor=actor, action="node.register", resource=f"Node/{name}",
                   before=_node_digest(row) if row is not None else "", after=_node_digest(values),
                   detail={"outcome": outcome, "cell": cell.name, "ip": body.ip})
    return {"name": name, "outcome": outcome, "cell": cell.name, "zone": cell.zone}


def conditions_record(conditions: NodeConditions, now: float) -> dict[str, Any]:
    """What is kept of an agent's health report: its figures, and its clock's offset to the control plane's.

    The offset is the agent's own round-trip estimate, with its uncertainty. Without one (an agent's first
    report) the difference of the two clocks on arrival is shown but has no uncertainty, so nobody judges it:
    a report that waited in a loaded control plane's queue would look like a clock running behind."""
    if conditions.clock_offset_seconds is not None and conditions.clock_uncertainty_seconds is not None:
        offset, uncertainty = conditions.clock_offset_seconds, conditions.clock_uncertainty_seconds
    else:
        offset, uncertainty = conditions.clock - now, None
    return {"clockOffsetSeconds": round(offset, 3),
            "clockUncertaintySeconds": round(uncertainty, 3) if uncertainty is not None else None,
            "dataDirFreeBytes": conditions.data_dir_free_bytes,
            "dataDirTotalBytes": conditions.data_dir_total_bytes,
            "failingSidecars": [{"instance": f.instance, "restarts": f.restarts} for f in conditions.failing_sidecars],
            "livenessPort": conditions.liveness_port, "reportedAt": now}


async def report_status(tx: Tx, name: str, reports: Sequence[InstanceReport],
                        conditions: NodeConditions | None = None, sequence: int = 0) -> bool:
    """Record a node's report; False (nothing changed) for a report older than one already recorded."""
    row = (await tx.conn.execute(select(nodes.c.conditions).where(nodes.c.name == name))).first()
    if row is None:
        raise NotFound(f"node {name!r} is not registered")
    kept = row.conditions if isinstance(row.conditions, dict) else {}
    if sequence and int(kept.get("reportSequence") or 0) >= sequence:
        tx.only(HEARTBEAT)
        return False
    heard: dict[str, Any] = {"last_heartbeat": tx.now}
    if conditions is not None:
        heard["conditions"] = {**conditions_record(conditions, tx.now), "reportSequence": sequence}
    elif sequence:
        heard["conditions"] = {**kept, "reportSequence": sequence}
    await tx.conn.execute(update(nodes).where(nodes.c.name == name).values(**heard))
    rows = {r.id: r for r in (await tx.conn.execute(select(instances).where(instances.c.node == name))).all()}
    tx.only(HEARTBEAT)  # the node is alive; anything more is said below
    for report in reports:
        row = rows.get(report.id)
        if row is None:
            continue
        rep: dict[str, Any] = {"phase": report.phase, "ready": report.ready, "pid": report.pid, "port": report.port,
                               "mesh_port": report.mesh_port, "restarts": report.restarts, "message": report.message,
                               "running_revision": report.revision,
                               "drain": report.drain.to_json() if report.drain is not None else row.drain}
        if row.granted_desired == "deleted" and rep["phase"] == "Stopped":
            await record_deletions(tx, instances.c.id == row.id)
            await tx.conn.execute(delete(instances).where(instances.c.id == row.id))
            tx.touch(EVERYTHING)  # an instance is gone: capacity, endpoints and releases may all move
            continue
        if rep["drain"] != row.drain and (rep["drain"] or {}).get("timedOut"):
            await _drain_timed_out(tx, name, row, rep["drain"])
        changed = {f: rep[f] for f in _REPORTED_FIELDS if getattr(row, f) != rep[f]}
        if changed:
            tx.touch(INSTANCE_STATUS)
            await tx.conn.execute(update(instances).where(instances.c.id == row.id).values(
                updated_at=tx.now, resource_version=tx.rv, **changed))
    return True


async def _drain_timed_out(tx: Tx, node: str, row: Any, drain: dict[str, Any]) -> None:
    """The agent stopped an instance with requests still in flight: say so loudly, on the audit log and
    on the app's release."""
    detail = {"instance": row.id, "node": node, **drain}
    await tx.audit(actor=f"agent/{node}", action="drain.timeout", resource=f"AppService/{row.app}",
                   result="stopped with requests in flight", detail=detail)
    release = (await tx.conn.execute(select(releases.c.id, releases.c.phase).where(releases.c.app == row.app)
                                     .order_by(releases.c.id.desc()))).first()
    if release is not None and release.phase in ACTIVE:
        await tx.conn.execute(insert(release_events).values(release_id=release.id, ts=tx.now, actor=f"agent/{node}",
                                                            action="drain-timeout", phase=release.phase,
                                                            detail=detail))


def assignment_fingerprint(rows: Sequence[Any]) -> str:
    body = canonical_json(sorted([r.id, r.desired_version] for r in rows))
    return hashlib.sha256(body.encode()).hexdigest()[:32]


async def assignments(store: Store, node: str, known: str | None, timeout: float) -> dict[str, Any]:
    """Long-poll: answer when the node's assignments differ from `known`, or at `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        seen = store.topic_version(ASSIGNMENT_TOPICS)
        async with store.read() as conn:
            if (await conn.execute(select(nodes.c.name).where(nodes.c.name == node))).first() is None:
                raise NotFound(f"node {node!r} is not registered")
            rows = (await conn.execute(select(instances).where(instances.c.node == node).order_by(instances.c.id))).all()
            fingerprint = assignment_fingerprint(rows)
            if fingerprint != known or loop.time() >= deadline or store.closing:
                return Assignments(fingerprint=fingerprint, instances=await _assignments(conn, rows)).to_json()
        seen = await store.wait_for_topics(ASSIGNMENT_TOPICS, seen, max(0.0, deadline - loop.time()))


async def _assignments(conn: AsyncConnection, rows: Sequence[Any]) -> tuple[Assignment, ...]:
    templates: dict[tuple[str, int], Template | None] = {}
    drain: dict[str, DrainSettings] = {}
    for a in (await conn.execute(select(apps.c.name, apps.c.spec).where(apps.c.name.in_({r.app for r in rows})))).all():
        t = stored_spec(a.spec).traffic
        drain[a.name] = DrainSettings(drain=t.drain, drain_timeout_seconds=t.drain_timeout_seconds)
    out = []
    for r in rows:
        key = (r.app, r.granted_revision)
        if key not in templates:
            rev = (await conn.execute(select(revisions.c.template).where(
                revisions.c.app == r.app, revisions.c.number == r.granted_revision))).first()
            templates[key] = Template.from_json(rev.template) if rev is not None else None
        out.append(Assignment(id=r.id, app=r.app, revision=r.granted_revision, desired=r.granted_desired, cell=r.cell,
                              zone=r.zone, ip=r.ip, port=r.port, template=templates[key],
                              traffic=drain.get(r.app, DrainSettings()), group=r.group_code))
    return tuple(out)


async def delete_node(tx: Tx, name: str, actor: str) -> None:
    row = (await tx.conn.execute(select(nodes).where(nodes.c.name == name))).first()
    if row is None:
        raise NotFound(f"node {name!r} not found")
    await record_deletions(tx, instances.c.node == name)
    gone = (await tx.conn.execute(delete(instances).where(instances.c.node == name))).rowcount
    await tx.conn.execute(delete(nodes).where(nodes.c.name == name))
    await tx.conn.execute(delete(components).where(components.c.kind == MESH, components.c.name == name))
    revoked = await component_credentials.revoke(tx, NODE, name, actor)
    await tx.audit(actor=actor, action="node.delete", resource=f"Node/{name}", before=_node_digest(row),
                   detail={"instancesForgotten": gone, "credentialsRevoked": revoked})


async def delete_app(tx: Tx, name: str, actor: str) -> int:
    row = (await tx.conn.execute(select(apps).where(apps.c.name == name))).first()
    if row is None:
        raise NotFound(f"app {name!r} not found")
    stopping = (await tx.conn.execute(update(instances).where(instances.c.app == name, instances.c.desired != "deleted")
                                      .values(desired="deleted", desired_version=tx.rv, resource_version=tx.rv))).rowcount
    await tx.conn.execute(delete(apps).where(apps.c.name == name))
    # Its isolation groups go with it (their instances are among those stopping), each on the record.
    groups = (await tx.conn.execute(select(isolation_groups.c.name, isolation_groups.c.spec).where(
        isolation_groups.c.app == name))).all()
    await tx.conn.execute(delete(isolation_groups).where(isolation_groups.c.app == name))
    for g in groups:
        await tx.audit(actor=actor, action="delete", resource=f"IsolationGroup/{g.name}", before=digest(g.spec),
                       detail={"reason": f"its app {name} was deleted"})
    await bump_registry(tx)  # its routes leave every component
    await tx.audit(actor=actor, action="delete", resource=f"AppService/{name}", before=digest(row.spec),
                   detail={"instancesStopping": stopping, "groupsDeleted": [g.name for g in groups]})
    return int(stopping)


async def delete_cell(tx: Tx, name: str, actor: str) -> None:
    row = (await tx.conn.execute(select(cells).where(cells.c.name == name))).first()
    if row is None:
        raise NotFound(f"cell {name!r} not found")
    node_names = (await tx.conn.execute(select(nodes.c.name).where(nodes.c.cell == name))).scalars().all()
    if node_names:
        raise Conflict(f"cell {name!r} still has nodes: {', '.join(node_names)}")
    users = [a.name for a in (await tx.conn.execute(select(apps.c.name, apps.c.spec))).all()
             if name in (a.spec.get("cells") or {})]
    if users:
        raise Conflict(f"cell {name!r} is used by apps: {', '.join(sorted(users))}")
    await tx.conn.execute(delete(cells).where(cells.c.name == name))
    await tx.audit(actor=actor, action="delete", resource=f"Cell/{name}", before=digest(row.spec))
