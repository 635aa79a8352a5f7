"""The release controller: executes the pure `decide()` for every active release.

Each pass re-reads the release and its app's instances, decides, and writes
the decision's instance changes, phase transition, release event and audit
record in one transaction guarded by the release's resource version. A user
action that moved the phase in between makes the write fail and the next pass
decide again — never half of a decision.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import select, update

from ballast.controllers.loop import run_passes
from ballast.core import release_traffic
from ballast.core.digests import digest
from ballast.core.manifests import AppServiceSpec
from ballast.core.placement import place
from ballast.core.release_engine import (ACTIVE_PHASES, CreateReplacement, Decision, Direction, Phase, Retire, SetRevision,
                                         Transition, decide)
from ballast.core.scheduling import instance_id_for
from ballast.errors import RetryableConflict
from ballast.services import releases as release_records
from ballast.services import traffic_rules, verifications
from ballast.services.placement import insert_instance, placement_inputs
from ballast.store.engine import (ACKS, ENDPOINT_NOTES, EVERYTHING, GRANTS, INSTANCE_STATUS, INTENT, REGISTRY,
                                  VERIFICATION, Store, Tx)
from ballast.store.schema import apps, instances, nodes, releases

log = logging.getLogger("ballast.releases")
ACTOR = release_records.ENGINE
TERMINAL = {Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK}


async def reconcile_once(store: Store) -> int:
    """One pass over every active release; returns how many decisions it wrote."""
    async with store.read() as conn:
        rows = (await conn.execute(select(releases).where(
            releases.c.phase.in_([p.value for p in ACTIVE_PHASES])).order_by(releases.c.id))).all()
    written = 0
    for row in rows:
        try:
            if await _reconcile(store, row):
                written += 1
        except RetryableConflict:
            continue  # a user action moved the release; decide again from fresh state
    return written


async def _reconcile(store: Store, row: Any) -> bool:
    now = store.clock()
    rel = release_records.view(row)
    async with store.read() as conn:
        app_row = (await conn.execute(select(apps).where(apps.c.name == row.app))).first()
        views = await release_records.instance_views(conn, row.app)
        checks = verifications.checks(await verifications.rows(conn, row.id)) if rel.strategy.verify is not None else {}
        routing = release_traffic.wanted(rel) if app_row is not None else None
        held = await traffic_rules.release_rule(conn, row.app)
        reroute = traffic_rules.release_rule_differs(held, routing)
        holds_rule = traffic_rules.release_rule_differs(held, None)
        pending = await traffic_rules.routing_pending(conn, row.id) if rel.direction is Direction.ROLLBACK else []
    if app_row is None:
        decision = Decision(transition=_failed(f"app {row.app!r} was deleted during the release"))
    elif rel.direction is Direction.ROLLBACK and (reroute or pending):
        # The routing from before the release comes back first; no instance changes before it is in effect.
        decision = Decision(waiting="restoring the routing from before the release: waiting for "
                                    + (", ".join(pending) if pending and not reroute else "its removal")
                                    + " to acknowledge it")
    else:
        decision = decide(rel, views, now, checks)
    if decision.transition is not None and decision.transition.phase in TERMINAL and holds_rule:
        routing, reroute = None, True   # a release that ends leaves no routing of its own behind
    if not decision.actions and decision.transition is None and decision.waiting == row.waiting and not reroute:
        return False
    async with store.write() as tx:
        # A step changes intents (the registry drains, then grants) and the release itself; the scheduler and
        # the agents learn of it through those, or below when the release ends.
        tx.only(INTENT)
        guard = await tx.conn.execute(update(releases).where(releases.c.id == row.id,
                                                             releases.c.resource_version == row.resource_version)
                                      .values(resource_version=tx.rv, updated_at=tx.now, waiting=decision.waiting))
        if guard.rowcount != 1:
            raise RetryableConflict(f"release {row.id}")
        before = await _intents_digest(tx, row.app) if decision.actions else ""
        done = [await _apply(tx, row, app_row, action) for action in decision.actions]
        done = [d for d in done if d]
        if done:
            await tx.audit(actor=ACTOR, action="release.step", resource=f"AppService/{row.app}", before=before,
                           after=await _intents_digest(tx, row.app), detail={"release": row.id, "actions": done})
        if reroute:
            await traffic_rules.sync_release_rule(tx, row.id, row.app, routing, ACTOR)
        if decision.transition is not None:
            await _transition(tx, row, decision.transition)
    return True


async def _intents_digest(tx: Tx, app: str) -> str:
    """What a step changes, as its audit digests cover it: each instance of the app, its revision and desire."""
    rows = (await tx.conn.execute(select(instances.c.id, instances.c.revision, instances.c.desired)
                                  .where(instances.c.app == app).order_by(instances.c.id))).all()
    return digest([[r.id, r.revision, r.desired] for r in rows])


def _failed(reason: str) -> Transition:
    return Transition(Phase.FAILED, reason)


async def _apply(tx: Tx, row: Any, app_row: Any, action: Any) -> dict[str, Any] | None:
    if isinstance(action, SetRevision):
        moved = await tx.conn.execute(update(instances).where(instances.c.id == action.instance,
                                                              instances.c.revision != action.revision)
                                      .values(revision=action.revision, desired_version=tx.rv, changed_at=tx.now,
                                              resource_version=tx.rv))
        return {"setRevision": action.instance, "revision": action.revision} if moved.rowcount else None
    if isinstance(action, Retire):
        moved = await tx.conn.execute(update(instances).where(instances.c.id == action.instance,
                                                              instances.c.desired == "running")
                                      .values(desired="deleted", desired_version=tx.rv, changed_at=tx.now,
                                              resource_version=tx.rv))
        return {"retire": action.instance} if moved.rowcount else None
    if isinstance(action, CreateReplacement):
        tx.touch(GRANTS)  # a new instance is granted at once: its agent must hear of it
        return await _create_replacement(tx, row, app_row, action)
    raise TypeError(f"unknown action {action!r}")


async def _create_replacement(tx: Tx, row: Any, app_row: Any, action: CreateReplacement) -> dict[str, Any] | None:
    exists = (await tx.conn.execute(select(instances.c.id).where(instances.c.replaces == action.replaces))).first()
    if exists is not None:
        return None  # already created by an earlier pass
    spec = AppServiceSpec.model_validate(app_row.spec)
    views, placed = await placement_inputs(tx.conn, tx.now, tx.node_grace_seconds)
    old = (await tx.conn.execute(select(instances.c.ordinal, instances.c.group_code)
                                 .where(instances.c.id == action.replaces))).first()
    group = old.group_code if old is not None else action.group
    in_cell = sum(1 for i in placed if i.app == row.app and i.cell == action.cell and i.group == group)
    decision = place(row.app, {action.cell: in_cell + 1}, spec.template.resources.request(), placed, views,
                     group=group)
    if not decision.create:
        reason = decision.unplaced[0][2] if decision.unplaced else "no node"
        log.warning("release %s: no room for a surge instance in %s: %s", row.id, action.cell, reason)
        return None
    node = (await tx.conn.execute(select(nodes).where(nodes.c.name == decision.create[0].node))).one()
    ordinal = old.ordinal if old is not None else action.ordinal
    # A new ordinal keeps its stable name; a replacement of an existing identity gets a fresh id beside it.
    new_id = instance_id_for(f"{row.app}-{group}" if group else row.app, ordinal if old is None else None)
    await insert_instance(tx, instance_id=new_id, app=row.app, revision=action.revision, node=node,
                          port=spec.template.port, ordinal=ordinal, replaces=action.replaces, created_seq=tx.rv * 10_000,
                          group_code=group)
    return {"create": new_id, "replaces": action.replaces, "node": node.name, "revision": action.revision}


async def _transition(tx: Tx, row: Any, t: Any) -> None:
    values: dict[str, Any] = {"phase": t.phase.value, "reason": t.reason, "pause_until": t.pause_until}
    if t.completed_groups is not None:
        values["completed_groups"] = t.completed_groups
    if t.direction is not None:
        values["direction"] = t.direction.value
    if t.phase in TERMINAL:
        values["finished_at"] = tx.now
        values["waiting"] = ""
        tx.touch(EVERYTHING)  # the app is the scheduler's again
    await tx.conn.execute(update(releases).where(releases.c.id == row.id).values(**values))
    if t.phase is Phase.SUCCEEDED:
        await tx.conn.execute(update(apps).where(apps.c.name == row.app).values(deployed_revision=row.to_revision,
                                                                                 resource_version=tx.rv))
        await traffic_rules.revisions_moved(tx, row.app)   # `stable` now means the new revision
    if t.phase is Phase.ROLLED_BACK and row.kind == "scale":
        # The counts before the scale stand again, and the scheduler must not redo the change on its own.
        app_row = (await tx.conn.execute(select(apps.c.status, apps.c.generation).where(apps.c.name == row.app))).first()
        if app_row is not None and app_row.status.get("previousCounts") is not None:
            held = {**app_row.status, "placedCounts": app_row.status["previousCounts"],
                    "heldGeneration": app_row.generation}
            await tx.conn.execute(update(apps).where(apps.c.name == row.app).values(status=held, resource_version=tx.rv))
    action = {Phase.SUCCEEDED: "succeeded", Phase.ROLLED_BACK: "rolled-back", Phase.FAILED: "failed",
              Phase.PAUSED: "paused", Phase.RUNNING: "group-done",
              Phase.ROLLING_BACK: "auto-rollback"}.get(t.phase, t.phase.value.lower())
    await release_records.event(tx, row.id, ACTOR, action, t.phase,
                                {"reason": t.reason, "completedGroups": t.completed_groups})
    direction = t.direction if t.direction is not None else Direction(row.direction)
    await tx.audit(actor=ACTOR, action=f"release.{action}", resource=f"AppService/{row.app}",
                   before=release_records.release_digest(row.id, Phase(row.phase), Direction(row.direction), row.fast),
                   after=release_records.release_digest(row.id, t.phase, direction, row.fast),
                   detail={"release": row.id, "phase": t.phase.value, "reason": t.reason})


async def run(store: Store, stop: asyncio.Event, *, idle_seconds: float = 1.0) -> None:
    # The idle pass notices ends of automatic pauses and progress deadlines even when nothing is written.
    await run_passes("releases", reconcile_once, store, stop, idle_seconds=idle_seconds,
                     topics=frozenset({EVERYTHING, INSTANCE_STATUS, REGISTRY, ENDPOINT_NOTES, ACKS, GRANTS, INTENT,
                                       VERIFICATION}))
