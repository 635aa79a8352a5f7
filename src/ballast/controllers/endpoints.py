"""The registry controller: endpoint states and drain gates from instance records.

Each pass reads instances, endpoints, traffic components and apps, asks the
pure `core.endpoints.decide()` what to change, and writes it in one
transaction guarded by the resource version it read (a concurrent write makes
the pass start over, never half-apply). Grants are audited with what the
drain achieved; endpoint states are registry data, visible through
`ballast get endpoints`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.controllers.hearing import agent_answering
from ballast.controllers.loop import run_passes
from ballast.core.digests import digest
from ballast.core.endpoints import (MESH, Component, EndpointRecord, InstanceFacts, RegistryDecision, TrafficPolicy, decide,
                                    decided_until, pending_acks)
from ballast.core.manifests import stored_spec
from ballast.core.nodes import DisruptionPolicy, Hearing, NodeHeartbeat, hearing
from ballast.services import endpoints as registry_records
from ballast.store.engine import (ACKS, ENDPOINT_NOTES, EVERYTHING, GRANTS, HEARTBEAT, INSTANCE_STATUS, INTENT, REGISTRY,
                                  Store, Tx)
from ballast.store.schema import apps, components, endpoints, instances, nodes

log = logging.getLogger("ballast.endpoints")
ACTOR = "controller/registry"
QUIET = "registry-quiet"   # memo: (content mark, routable nodes, until) of the last pass that found nothing to do


State = tuple[list[InstanceFacts], dict[str, EndpointRecord], list[Component], dict[str, TrafficPolicy]]


async def heard_nodes(conn: AsyncConnection, now: float, policy: DisruptionPolicy, hearing_since: float,
                      answering: frozenset[str] = frozenset()) -> Hearing:
    """Which nodes are silent. Silence counts only from `hearing_since`, the moment this process last began to
    hear (it started, or its event loop stalled): a stalled control plane judges nobody by the heartbeats it
    could not process. `answering`: nodes whose agent answers a probe (controllers/hearing.py)."""
    rows = (await conn.execute(select(nodes.c.name, nodes.c.cell, nodes.c.last_heartbeat))).all()
    return hearing([NodeHeartbeat(r.name, r.cell, max(r.last_heartbeat, hearing_since)) for r in rows], now, policy,
                   answering)


async def _read(conn: AsyncConnection, heard: Hearing) -> State:
    facts = [InstanceFacts(id=i.id, app=i.app, node=i.node, cell=i.cell, zone=i.zone, ip=i.ip, port=i.port,
                           revision=i.revision, desired=i.desired, granted_revision=i.granted_revision,
                           granted_desired=i.granted_desired, running_revision=i.running_revision,
                           phase=i.phase, ready=i.ready, node_ready=heard.routable(i.node), group=i.group_code)
             for i in (await conn.execute(select(instances))).all()]
    eps = {r.id: registry_records.endpoint_record(r) for r in (await conn.execute(select(endpoints))).all()}
    # A NotReady node's mesh routes nothing any more: nobody waits for its acknowledgement (when it returns it
    # starts from a whole snapshot, and is waited for again from its first heartbeat).
    comps = [Component(f"{c.kind}/{c.name}", c.kind, c.acked_generation)
             for c in (await conn.execute(select(components))).all()
             if c.kind != MESH or heard.routable(c.name)]
    policies = {a.name: stored_spec(a.spec).traffic_policy()
                for a in (await conn.execute(select(apps.c.name, apps.c.spec))).all()}
    return facts, eps, comps, policies


async def reconcile_once(store: Store, policy: DisruptionPolicy = DisruptionPolicy()) -> int:
    answering = agent_answering(store, store.clock())
    # Heartbeats change only who is heard, which is read every pass; anything else written moves the mark.
    mark = await store.content_mark(ignoring=frozenset({HEARTBEAT}))
    async with store.read() as conn:
        heard = await heard_nodes(conn, store.clock(), policy, store.hearing_since, answering)
        routable = frozenset(n for n in heard.known if heard.routable(n))
        still = store.memo.get(QUIET)
        # At 10,000 instances a pass reads and decides for most of a second: one that would see exactly what
        # the last empty one saw, before any acknowledgement can time out, is skipped.
        if mark is not None and still is not None and still[:2] == (mark, routable) and store.clock() < still[2]:
            state = None
        else:
            state = await _read(conn, heard)
    await _record_disruption(store, heard)
    if state is None:
        return 0
    _, eps, comps, policies = state
    log_acknowledged(store.memo, eps, {c.key: c.acked_generation for c in comps}, store.clock())
    now = store.clock()
    if decide(*state, now).empty():
        store.memo[QUIET] = (mark, routable, decided_until(eps, comps, policies, now))
        return 0  # the common pass: nothing to do, nothing written
    store.memo.pop(QUIET, None)
    async with store.write() as tx:
        # Decide again inside the write: what is written follows from exactly what this transaction sees.
        facts, eps, comps, policies = await _read(tx.conn, await heard_nodes(tx.conn, tx.now, policy,
                                                                             store.hearing_since, answering))
        decision = decide(facts, eps, comps, policies, tx.now)
        await _write(tx, decision, {f.id: f for f in facts}, eps)
    return len(decision.puts) + len(decision.notes) + len(decision.drops) + len(decision.grants)


async def _record_disruption(store: Store, heard: Hearing) -> None:
    """Say it loudly, once per change, when the control plane stops (or resumes) judging silent nodes."""
    previous, previous_nodes = store.memo.get("node-disruption", ((), frozenset()))
    if previous == heard.disrupted and previous_nodes == heard.counted:
        return
    if heard.disrupted:
        log.warning("node judgement suspended: %d node(s) quiet or silent (%s) in %s; the control plane assumes it "
                    "cannot hear them and drains nothing until heartbeats flow again", len(heard.counted),
                    ", ".join(sorted(heard.counted)), ", ".join(heard.disrupted))
    else:
        log.warning("node judgement resumed: heartbeats flow again")
    async with store.write() as tx:
        await tx.audit(actor=ACTOR, action="node-disruption.suspend" if heard.disrupted else "node-disruption.resume",
                       resource="Nodes", result="suspended" if heard.disrupted else "ok",
                       before=_judgement_digest(previous), after=_judgement_digest(heard.disrupted),
                       detail={"scopes": list(heard.disrupted), "silentNodes": sorted(heard.counted)})
    store.memo["node-disruption"] = (heard.disrupted, heard.counted)


def _judgement_digest(disrupted: tuple[str, ...]) -> str:
    """What a node-disruption record changes: the scopes whose silent nodes the control plane does not judge
    (none: it judges every node). Kept in memory, so a restarted control plane begins by judging all."""
    return digest({"suspendedScopes": sorted(disrupted)})


async def _write(tx: Tx, decision: RegistryDecision, facts: dict[str, InstanceFacts],
                 eps: dict[str, EndpointRecord]) -> None:
    tx.only()
    if decision.registry_changed:
        tx.touch(REGISTRY)
    if decision.notes:
        tx.touch(ENDPOINT_NOTES)
    if decision.grants:
        tx.touch(GRANTS)
    await _put_all(tx, decision.puts, facts, eps)
    for note in decision.notes:
        await tx.conn.execute(update(endpoints).where(endpoints.c.id == note.id).values(note=note.note))
        if note.note:
            was = eps[note.id].note if note.id in eps else ""
            await tx.audit(actor=ACTOR, action="endpoint.ack-timeout", resource=f"Endpoint/{note.id}",
                           before=digest({"note": was}), after=digest({"note": note.note}), result="waiting",
                           detail={"note": note.note})
    if decision.drops:
        await tx.conn.execute(delete(endpoints).where(endpoints.c.id == bindparam("drop_id")),
                              [{"drop_id": d.id} for d in decision.drops])
    granted = [g.instance for g in decision.grants]
    before = await _grants_digest(tx, granted) if granted else ""
    if decision.grants:   # one statement for many rows: a long write would hold up the leader's lease renewal
        await tx.conn.execute(
            update(instances).where(instances.c.id == bindparam("grant_id")).values(
                granted_revision=bindparam("grant_revision"), granted_desired=bindparam("grant_desired"),
                desired_version=tx.rv, resource_version=tx.rv),
            [{"grant_id": g.instance, "grant_revision": g.revision, "grant_desired": g.desired}
             for g in decision.grants])
    if decision.grants:
        await tx.audit(actor=ACTOR, action="drain.grant", resource="Instances", before=before,
                       after=await _grants_digest(tx, granted), detail={"grants": [{"instance": g.instance, "revision": g.revision, "desired": g.desired,
                                           "drainedFirst": g.drained,
                                           "app": facts[g.instance].app if g.instance in facts else None}
                                          for g in decision.grants]})
    if decision.registry_changed:
        await registry_records.bump_registry(tx)


async def _grants_digest(tx: Tx, ids: list[str]) -> str:
    """What grants change, as their audit digests cover it: each granted instance's granted revision and desire."""
    rows = (await tx.conn.execute(select(instances.c.id, instances.c.granted_revision, instances.c.granted_desired)
                                  .where(instances.c.id.in_(ids)).order_by(instances.c.id))).all()
    return digest([[r.id, r.granted_revision, r.granted_desired] for r in rows])


def log_acknowledged(memo: dict[str, Any], eps: dict[str, EndpointRecord], acked: dict[str, int],
                     now: float) -> None:
    """One line per fully acknowledged change: the drain protocol's own latency, for operators and benchmarks."""
    logged: set[tuple[str, int]] = memo.setdefault("acknowledged-endpoints", set())
    for ep in eps.values():
        key = (ep.id, ep.generation)
        if ep.required and key not in logged and not pending_acks(ep, acked):
            logged.add(key)
            log.info("ack-latency endpoint=%s state=%s generation=%s seconds=%.3f", ep.id, ep.state.value,
                     ep.generation, now - ep.since)
    if len(logged) > 100_000:
        logged.clear()


async def _put_all(tx: Tx, puts: list[Any], facts: dict[str, InstanceFacts], eps: dict[str, EndpointRecord]) -> None:
    """Every put in two statements (new endpoints, changed ones): registering or removing a node's thousands of
    endpoints one statement each held the store's writer for seconds."""
    added: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for put in puts:
        values = dict(service=put.service, node=put.node, cell=put.cell, zone=put.zone, ip=put.ip, port=put.port,
                      revision=put.revision, state=put.state.value, generation=tx.rv, since=tx.now,
                      required=list(put.required), note="")
        if put.id not in eps:   # an instance's group never changes: its endpoint is of that group from the start
            fact = facts.get(put.id)
            added.append(dict(id=put.id, group_code=fact.group if fact is not None else "", **values))
        else:
            changed.append(dict(endpoint_id=put.id, **values))
    if added:
        await tx.conn.execute(insert(endpoints), added)
    if changed:
        await tx.conn.execute(update(endpoints).where(endpoints.c.id == bindparam("endpoint_id")), changed)


async def run(store: Store, stop: asyncio.Event, *, idle_seconds: float = 1.0,
              policy: DisruptionPolicy = DisruptionPolicy()) -> None:
    # The idle pass notices acknowledgement timeouts and silent nodes even when nothing is written.
    # Acknowledgements of one change arrive from every component within a few tens of milliseconds: a short
    # minimum interval lets one pass take several of them instead of one pass per acknowledgement.
    await run_passes("registry", lambda s: reconcile_once(s, policy), store, stop, idle_seconds=idle_seconds, min_interval=0.03,
                     topics=frozenset({EVERYTHING, INSTANCE_STATUS, ACKS, INTENT}))
