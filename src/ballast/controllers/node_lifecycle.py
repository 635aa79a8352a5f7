"""The node lifecycle controller: heartbeats and reports → Ready / NotReady / Degraded, and what follows.

- NotReady (silent past nodeGraceSeconds, and its agent does not answer a direct probe): the registry takes its endpoints out of routing at once (nobody
  waits for the dead node's acknowledgement); this controller retires its instances so the scheduler replaces
  them on ready nodes of the same cell. Ordered instances keep their data there: they wait for the node, or for
  `ballast instance move`. Apps under a release belong to the release engine and are left to it.
- Ready again: what was replaced meanwhile is fenced — its records say `deleted`, so the returning agent stops
  those processes and no endpoint of theirs is ever put back.
- Degraded: cordoned and evacuated with the lossless `evacuate` release.
Every decision is on the audit log (resource Node/NAME), which `ballast describe node` shows.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import select, update

from ballast.controllers.endpoints import heard_nodes
from ballast.controllers.hearing import agent_answering
from ballast.controllers.loop import run_passes
from ballast.core.digests import digest
from ballast.core.manifests import stored_spec
from ballast.core.node_lifecycle import HealthPolicy, Judgement, NodeFacts, NodeState, judge
from ballast.core.nodes import DisruptionPolicy
from ballast.errors import Conflict
from ballast.services import evacuation
from ballast.services.releases import active_release
from ballast.store.engine import EVERYTHING, HEARTBEAT, Store, Tx
from ballast.store.schema import apps, instances, nodes

log = logging.getLogger("ballast.node-lifecycle")
ACTOR = "controller/node-lifecycle"
REPLACED = "replaced: node {node} is NotReady"


async def reconcile_once(store: Store, policy: DisruptionPolicy = DisruptionPolicy(),
                         health: HealthPolicy = HealthPolicy()) -> int:
    now = store.clock()
    answering = agent_answering(store, now)
    async with store.read() as conn:
        rows = (await conn.execute(select(nodes))).all()
        heard = await heard_nodes(conn, now, policy, store.hearing_since, answering)
    facts = [NodeFacts(name=r.name, state=NodeState(r.lifecycle),
                       silent_seconds=now - max(r.last_heartbeat, store.hearing_since),
                       silent=r.name in heard.silent, suspended=r.name in heard.suspended,
                       answering=r.name in heard.answering, conditions=r.conditions)
             for r in rows]
    changes = judge(facts, policy.grace_seconds, health)
    for change in changes:
        await _record(store, change)
    state = {r.name: NodeState(r.lifecycle) for r in rows} | {c.node: c.state for c in changes}
    retired = 0
    for name in sorted(n for n, s in state.items() if s is NodeState.NOT_READY and heard.judged_dead(n)):
        retired += await _retire_instances(store, name)
    return len(changes) + retired


async def _record(store: Store, change: Judgement) -> None:
    async with store.write() as tx:
        row = (await tx.conn.execute(select(nodes).where(nodes.c.name == change.node))).first()
        if row is None or row.lifecycle == change.state.value:
            return   # deleted, or judged by another pass meanwhile
        await tx.conn.execute(update(nodes).where(nodes.c.name == change.node).values(
            lifecycle=change.state.value, lifecycle_since=tx.now, lifecycle_reason=change.reason,
            resource_version=tx.rv))
        action = {NodeState.NOT_READY: "node.not-ready", NodeState.READY: "node.ready",
                  NodeState.DEGRADED: "node.degraded"}[change.state]
        log.warning("node %s: %s -> %s (%s)", change.node, row.lifecycle, change.state.value, change.reason)
        await tx.audit(actor=ACTOR, action=action, resource=f"Node/{change.node}", result=change.state.value,
                       before=digest({"lifecycle": row.lifecycle}), after=digest({"lifecycle": change.state.value}),
                       detail={"from": row.lifecycle, "to": change.state.value, "reason": change.reason})
        if change.state is NodeState.READY and row.lifecycle == NodeState.NOT_READY.value:
            await _fence(tx, change.node)
        if change.state is NodeState.DEGRADED and not row.cordoned:
            await _cordon_and_evacuate(tx, change.node, change.reason)


async def _fence(tx: Tx, node: str) -> None:
    """The node is back: the instances retired while it was away (replaced elsewhere) are no longer its own."""
    stale = (await tx.conn.execute(select(instances.c.id, instances.c.app).where(
        instances.c.node == node, instances.c.desired == "deleted").order_by(instances.c.id))).all()
    if not stale:
        return
    await tx.audit(actor=ACTOR, action="node.fence", resource=f"Node/{node}", result="fenced",
                   detail={"instances": [{"instance": s.id, "app": s.app} for s in stale],
                           "why": "replaced while the node was NotReady: its agent is told to stop them, and no "
                                  "endpoint of theirs is registered again"})


async def _cordon_and_evacuate(tx: Tx, node: str, reason: str) -> None:
    try:
        async with tx.conn.begin_nested():
            result = await evacuation.drain(tx, node, ACTOR)
        detail: dict[str, Any] = {"reason": reason, "evacuation": result["releases"]}
    except Conflict as exc:   # a release holds one of its apps, or an ordered app: cordon, evacuate later by hand
        await tx.conn.execute(update(nodes).where(nodes.c.name == node).values(cordoned=True, resource_version=tx.rv))
        detail = {"reason": reason, "evacuation": [], "notEvacuated": exc.message}
    await tx.audit(actor=ACTOR, action="node.cordon", resource=f"Node/{node}", result="cordoned",
                   before=digest({"node": node, "cordoned": False}), after=digest({"node": node, "cordoned": True}),
                   detail=detail)


async def _retire_instances(store: Store, node: str) -> int:
    """Retire a NotReady node's instances so the scheduler replaces them in the same cell."""
    async with store.read() as conn:
        live = (await conn.execute(select(instances.c.id, instances.c.app).where(
            instances.c.node == node, instances.c.desired == "running"))).all()
    if not live:
        return 0
    async with store.write() as tx:
        row = (await tx.conn.execute(select(nodes.c.lifecycle).where(nodes.c.name == node))).first()
        if row is None or row.lifecycle != NodeState.NOT_READY.value:
            return 0
        live = (await tx.conn.execute(select(instances.c.id, instances.c.app).where(
            instances.c.node == node, instances.c.desired == "running").order_by(instances.c.id))).all()
        specs = {a.name: stored_spec(a.spec) for a in (await tx.conn.execute(
            select(apps.c.name, apps.c.spec).where(apps.c.name.in_({i.app for i in live})))).all()}
        retire, waiting = [], []
        for i in live:
            spec = specs.get(i.app)
            if spec is None:
                continue
            if spec.strategy.upgrade == "ordered":
                waiting.append(i)   # its data is on the node: it waits (the app's status says so)
            elif await active_release(tx.conn, i.app) is None:
                retire.append(i)
        if not retire:
            return 0
        await tx.conn.execute(update(instances).where(instances.c.id.in_([i.id for i in retire])).values(
            desired="deleted", message=REPLACED.format(node=node), desired_version=tx.rv, updated_at=tx.now,
            resource_version=tx.rv))
        await tx.audit(actor=ACTOR, action="node.replace-instances", resource=f"Node/{node}", result="replacing",
                       detail={"instances": [{"instance": i.id, "app": i.app} for i in retire],
                               "waiting": [{"instance": i.id, "app": i.app} for i in waiting],
                               "why": "the node is NotReady: the scheduler places replacements in its cell"})
    log.warning("node %s is NotReady: retired %d instance(s) for replacement in its cell", node, len(retire))
    return len(retire)


async def run(store: Store, stop: asyncio.Event, *, policy: DisruptionPolicy = DisruptionPolicy(),
              health: HealthPolicy = HealthPolicy(), idle_seconds: float = 0.25) -> None:
    # Silence writes nothing: the short idle pass is what notices a node's grace running out.
    await run_passes("node-lifecycle", lambda s: reconcile_once(s, policy, health), store, stop,
                     idle_seconds=idle_seconds, min_interval=0.1, topics=frozenset({EVERYTHING, HEARTBEAT}))
