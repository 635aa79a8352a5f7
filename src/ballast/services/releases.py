"""Releases as stored records: start, pause, resume, roll back, read.

User actions change a release's phase by compare-and-set on the phase they
saw, inside one transaction with their release event and audit record; a
stale or conflicting request gets 409 naming the current phase; a rollback
after a release succeeded is a new release back (core/release_undo.py). The
engine (controllers/releases.py) does the instance work.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.digests import digest
from ballast.core.endpoints import serving
from ballast.core.manifests import (AppServiceSpec, StrategySpec, problems_from_validation, stored_strategy,
                                    strategy_json)
from ballast.core.release_engine import (ACTIVE_PHASES, Direction, InstanceView, Phase, ReleaseView, SlotKind,
                                         slot_state)
from ballast.core.release_plan import Group, Slot, SlotOp, Strategy, UpgradeMode, plan, plan_scale
from ballast.core.release_undo import FAST_UNDO_OVERRIDES, UNDO_KIND, PastRelease, release_to_undo
from ballast.errors import Conflict, FieldProblem, InvalidInput, NotFound
from ballast.services import traffic_rules, verifications
from ballast.services.endpoints import acknowledged, endpoint_record
from ballast.store.engine import Tx
from ballast.store.schema import apps, endpoints, instances, release_events, releases, revisions

ENGINE = "controller/releases"


def plan_to_json(groups: list[Group]) -> list[dict[str, Any]]:
    return [{"index": g.index, "name": g.name,
             "slots": [{"instance": s.instance, "cell": s.cell, "ordinal": s.ordinal, "op": s.op.value,
                        **({"group": s.group} if s.group else {})} for s in g.slots]}
            for g in groups]


def plan_from_json(raw: list[dict[str, Any]]) -> tuple[Group, ...]:
    return tuple(Group(g["index"], g["name"], tuple(Slot(s["instance"], s["cell"], s.get("ordinal"),
                                                         SlotOp(s.get("op", "update")), s.get("group", ""))
                                                    for s in g["slots"]))
                 for g in raw)


def view(row: Any) -> ReleaseView:
    return ReleaseView(app=row.app, from_revision=row.from_revision, to_revision=row.to_revision,
                       strategy=stored_strategy(row.strategy), groups=plan_from_json(row.plan),
                       phase=Phase(row.phase), direction=Direction(row.direction),
                       completed_groups=row.completed_groups, pause_until=row.pause_until, fast=row.fast,
                       reason=row.reason)


def instance_view(row: Any, endpoint: Any | None, acked: dict[str, int]) -> InstanceView:
    """An instance as the engine sees it; `endpoint` is its registry row (None: never routable), `acked` every
    traffic component's acknowledged generation."""
    record = endpoint_record(endpoint) if endpoint is not None else None
    return InstanceView(id=row.id, cell=row.cell, revision=row.revision, running_revision=row.running_revision,
                        ready=row.ready, phase=row.phase, desired=row.desired, replaces=row.replaces,
                        changed_at=row.changed_at if row.changed_at is not None else row.created_at,
                        message=row.message, serving=serving(record, acked), blocked=record.note if record else "")


async def instance_views(conn: AsyncConnection, app: str) -> dict[str, InstanceView]:
    eps = {e.id: e for e in (await conn.execute(select(endpoints).where(endpoints.c.service == app))).all()}
    acked = await acknowledged(conn)
    rows = (await conn.execute(select(instances).where(instances.c.app == app))).all()
    return {r.id: instance_view(r, eps.get(r.id), acked) for r in rows}


def merge_strategy(spec: AppServiceSpec, overrides: dict[str, Any]) -> Strategy:
    """The app's strategy with the request's fields on top, validated as one strategy. `verify` is merged field by
    field into the app's (or the defaults); `noVerify` drops it."""
    base = spec.strategy.model_dump(by_alias=True)
    base.update({k: v for k, v in overrides.items() if v is not None and k not in ("verify", "noVerify")})
    if overrides.get("groupSizes") is not None and overrides.get("groups") is None:
        base["groups"] = len(overrides["groupSizes"])
    if overrides.get("groups") is not None and overrides.get("groupSizes") is None:
        base["groupSizes"] = None
    if overrides.get("noVerify"):
        base["verify"] = None
    elif overrides.get("verify"):
        base["verify"] = {**(base.get("verify") or {}),
                          **{k: v for k, v in overrides["verify"].items() if v is not None}}
    try:
        return StrategySpec.model_validate(base).to_strategy()
    except ValidationError as exc:
        raise InvalidInput("invalid release strategy; nothing was started",
                           problems=problems_from_validation(exc, "strategy")) from None


async def active_release(conn: AsyncConnection, app: str) -> Any:
    return (await conn.execute(select(releases).where(releases.c.app == app,
                                                      releases.c.phase.in_([p.value for p in ACTIVE_PHASES]))
                               .order_by(releases.c.id.desc()))).first()


async def _app_and_target(conn: AsyncConnection, app: str, to_revision: int | None) -> tuple[Any, AppServiceSpec, int]:
    row = (await conn.execute(select(apps).where(apps.c.name == app))).first()
    if row is None:
        raise NotFound(f"app {app!r} not found")
    target = to_revision if to_revision is not None else row.latest_revision
    exists = (await conn.execute(select(revisions.c.number).where(revisions.c.app == app,
                                                                   revisions.c.number == target))).first()
    if exists is None:
        numbers = (await conn.execute(select(revisions.c.number).where(revisions.c.app == app))).scalars().all()
        raise InvalidInput("unknown revision", problems=[FieldProblem("toRevision", target,
                                                                      f"one of the app's revisions: {sorted(numbers)}")])
    return row, AppServiceSpec.model_validate(row.spec), target


async def _slots(conn: AsyncConnection, app: str, strategy: Strategy) -> list[Slot]:
    rows = (await conn.execute(select(instances).where(instances.c.app == app, instances.c.desired == "running"))).all()
    slots = [Slot(r.id, r.cell, r.ordinal, group=r.group_code) for r in rows]
    if strategy.upgrade is UpgradeMode.ORDERED and any(s.ordinal is None for s in slots):
        raise InvalidInput("ordered upgrade needs ordinal identities", problems=[FieldProblem(
            "strategy.upgrade", "ordered",
            "inPlace or replace: this app's instances have no ordinal identities; declare "
            "spec.strategy.upgrade: ordered in the AppService before its instances are created")])
    return slots


async def preview(conn: AsyncConnection, app: str, to_revision: int | None, overrides: dict[str, Any]) -> dict[str, Any]:
    row, spec, target = await _app_and_target(conn, app, to_revision)
    strategy = merge_strategy(spec, overrides)
    groups = plan(await _slots(conn, app, strategy), strategy)
    return {"app": app, "fromRevision": row.deployed_revision, "toRevision": target,
            "strategy": strategy_json(strategy), "groups": plan_to_json(groups)}


async def start(tx: Tx, app: str, to_revision: int | None, overrides: dict[str, Any], actor: str, *,
                undoing: PastRelease | None = None, fast: bool = False) -> dict[str, Any]:
    """A new release of `app` to `to_revision` (default: its newest). `undoing` is the succeeded release whose
    revision it goes back from (a rollback after the fact); `fast` changes every instance of a group at once."""
    running = await active_release(tx.conn, app)
    if running is not None:
        raise Conflict(f"release {running.id} of {app!r} is {running.phase} (revision {running.from_revision} → "
                       f"{running.to_revision}); pause/resume/roll it back, or wait for it to finish")
    row, spec, target = await _app_and_target(tx.conn, app, to_revision)
    if target == row.deployed_revision:
        raise Conflict(f"app {app!r} already runs revision {target}")
    strategy = merge_strategy(spec, overrides)
    if strategy.traffic is not None:
        await traffic_rules.refuse_release_routing(tx.conn, app)
    groups = plan(await _slots(tx.conn, app, strategy), strategy)
    if not any(g.slots for g in groups):
        raise Conflict(f"app {app!r} has no instances to release")
    if undoing is None:
        kind, action, reason, extra = "release", "start", "started", {}
    else:
        kind, action = UNDO_KIND, "rollback"
        reason = f"rollback{' (fast)' if fast else ''} by {actor} of release {undoing.id}: back to revision {target}"
        extra = {"rollbackOf": undoing.id, "fast": fast}
    result = await tx.conn.execute(insert(releases).values(
        app=app, kind=kind, from_revision=row.deployed_revision, to_revision=target, strategy=strategy_json(strategy),
        plan=plan_to_json(groups), phase=Phase.RUNNING.value, direction=Direction.FORWARD.value, completed_groups=0,
        pause_until=None, fast=fast, reason=reason, waiting="", created_by=actor, created_at=tx.now,
        updated_at=tx.now, finished_at=None, resource_version=tx.rv))
    release_id = _new_id(result)
    await event(tx, release_id, actor, action, Phase.RUNNING, {"from": row.deployed_revision, "to": target, **extra})
    await tx.audit(actor=actor, action=f"release.{action}", resource=f"AppService/{app}",
                   after=release_digest(release_id, Phase.RUNNING, Direction.FORWARD, fast),
                   detail={"release": release_id, "from": row.deployed_revision, "to": target,
                           "strategy": strategy_json(strategy), **extra})
    return {"id": release_id, "app": app, "kind": kind, "fromRevision": row.deployed_revision, "toRevision": target,
            "groups": plan_to_json(groups)}


async def start_scale(tx: Tx, app_row: Any, adds: dict[str, int], removes: list[Slot], key: str,
                      ordinals: list[int], actor: str, *, kind: str = "scale", strategy: Strategy | None = None,
                      reason: str = "instance counts changed", group_adds: dict[str, dict[str, int]] | None = None) -> int:
    """Changing instance counts of a running app goes through the grouped engine like a release (and so does
    moving instances off a node: new ones elsewhere in the cell first, then the old ones drained and retired)."""
    strategy = strategy or AppServiceSpec.model_validate(app_row.spec).strategy.to_strategy()
    groups = plan_scale(adds, removes, strategy, key, ordinals, group_adds)
    result = await tx.conn.execute(insert(releases).values(
        app=app_row.name, kind=kind, from_revision=app_row.deployed_revision, to_revision=app_row.deployed_revision,
        strategy=strategy_json(strategy), plan=plan_to_json(groups), phase=Phase.RUNNING.value,
        direction=Direction.FORWARD.value, completed_groups=0, pause_until=None, fast=False,
        reason=reason, waiting="", created_by=actor, created_at=tx.now, updated_at=tx.now,
        finished_at=None, resource_version=tx.rv))
    release_id = _new_id(result)
    detail = {"add": adds, "remove": [r.instance for r in removes], **({"addGroups": group_adds} if group_adds else {})}
    await event(tx, release_id, actor, "start", Phase.RUNNING, detail)
    await tx.audit(actor=actor, action="release.start", resource=f"AppService/{app_row.name}",
                   after=release_digest(release_id, Phase.RUNNING, Direction.FORWARD, False),
                   detail={"release": release_id, "kind": kind, **detail})
    return release_id


def release_digest(release_id: int, phase: Phase, direction: Direction, fast: bool) -> str:
    """What starting or steering a release changes, as its audit digests cover it: which release, its phase,
    its direction and whether it goes fast (the plan and strategy are in the record's detail)."""
    return digest({"release": release_id, "phase": phase.value, "direction": direction.value, "fast": bool(fast)})


async def event(tx: Tx, release_id: int, actor: str, action: str, phase: Phase, detail: dict[str, Any]) -> None:
    await tx.conn.execute(insert(release_events).values(release_id=release_id, ts=tx.now, actor=actor, action=action,
                                                        phase=phase.value, detail=detail))


_ALLOWED = {
    "pause": ({Phase.RUNNING, Phase.ROLLING_BACK}, None),
    "resume": ({Phase.PAUSED}, None),
    "rollback": ({Phase.RUNNING, Phase.PAUSED, Phase.ROLLING_BACK}, Phase.ROLLING_BACK),
}


async def act(tx: Tx, app: str, action: str, actor: str, *, fast: bool = False,
              expect_phase: str | None = None, reverify: bool = False) -> dict[str, Any]:
    """pause | resume | rollback, as a compare-and-set on the phase the request saw. Resuming a release a verdict
    stopped accepts that verdict, or with `reverify` has a new window judged. Rolling back a release that has
    succeeded starts a new release back to the revision that ran before it (`_undo`)."""
    row = (await tx.conn.execute(select(releases).where(releases.c.app == app).order_by(releases.c.id.desc()))).first()
    if row is None:
        if action == "rollback" and (await tx.conn.execute(select(apps.c.name).where(apps.c.name == app))).first():
            raise Conflict(f"app {app!r} has never been released: nothing to go back to; nothing changed")
        raise NotFound(f"app {app!r} has no release")
    current = Phase(row.phase)
    if expect_phase is not None and expect_phase != current.value:
        raise Conflict(f"release {row.id} is {current.value}, not {expect_phase}; nothing changed")
    allowed_from, _ = _ALLOWED[action]
    if action == "rollback" and current is Phase.SUCCEEDED:
        return await _undo(tx, app, row, actor, fast)
    if action == "rollback" and current is Phase.ROLLING_BACK and (row.fast or not fast):
        raise Conflict(f"release {row.id} is already RollingBack; nothing changed")
    if current not in allowed_from:
        raise Conflict(f"cannot {action} release {row.id}: it is {current.value}")
    verdict = None
    if action == "pause":
        new, direction, reason = Phase.PAUSED, Direction(row.direction), f"paused by {actor}"
    elif action == "resume":
        direction = Direction(row.direction)
        new = Phase.ROLLING_BACK if direction is Direction.ROLLBACK else Phase.RUNNING
        verdict = await verifications.on_resume(tx, row, actor, reverify)
        reason = f"resumed by {actor}" + (f"; verification of group {verdict['groupIndex']} "
                                          f"({verdict['verdict']}): {verdict['decision']}" if verdict else "")
    else:
        new, direction = Phase.ROLLING_BACK, Direction.ROLLBACK
        reason = f"rollback{' (fast)' if fast else ''} by {actor} to revision {row.from_revision}"
    moved = await tx.conn.execute(update(releases).where(releases.c.id == row.id, releases.c.phase == current.value)
                                  .values(phase=new.value, direction=direction.value, reason=reason,
                                          fast=row.fast or fast, pause_until=None, updated_at=tx.now,
                                          resource_version=tx.rv))
    if moved.rowcount != 1:
        raise Conflict(f"release {row.id} changed concurrently; nothing changed")
    extra = {"verification": verdict} if verdict else {}
    await event(tx, row.id, actor, action, new, {"from": current.value, "fast": fast, **extra})
    await tx.audit(actor=actor, action=f"release.{action}", resource=f"AppService/{app}",
                   before=release_digest(row.id, current, Direction(row.direction), row.fast),
                   after=release_digest(row.id, new, direction, row.fast or fast),
                   detail={"release": row.id, "from": current.value, "to": new.value, "fast": fast, **extra})
    return {"id": row.id, "app": app, "phase": new.value, "previousPhase": current.value}


async def _undo(tx: Tx, app: str, newest: Any, actor: str, fast: bool) -> dict[str, Any]:
    """Roll back after the fact: the newest release succeeded, so a new release takes the app back to the revision
    that ran before the release that brought it where it is (the app's strategy, or all at once with `fast`)."""
    rows = (await tx.conn.execute(select(releases.c.id, releases.c.from_revision, releases.c.to_revision,
                                         releases.c.phase).where(releases.c.app == app)
                                  .order_by(releases.c.id))).all()
    deployed = (await tx.conn.execute(select(apps.c.deployed_revision).where(apps.c.name == app))).scalar_one()
    undoing = release_to_undo([PastRelease(r.id, r.from_revision, r.to_revision, Phase(r.phase)) for r in rows],
                              deployed)
    if undoing is None:
        raise Conflict(f"app {app!r} has run revision {deployed} since its first deployment: nothing to go back to; "
                       "nothing changed")
    started = await start(tx, app, undoing.from_revision, dict(FAST_UNDO_OVERRIDES) if fast else {}, actor,
                          undoing=undoing, fast=fast)
    return {**started, "phase": Phase.RUNNING.value, "previousPhase": newest.phase, "rollbackOf": undoing.id}


async def status(conn: AsyncConnection, app: str, now: float, release_id: int | None = None) -> dict[str, Any]:
    query = select(releases).where(releases.c.app == app)
    query = query.where(releases.c.id == release_id) if release_id is not None else query.order_by(releases.c.id.desc())
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"app {app!r} has no release")
    rel = view(row)
    inst = await instance_views(conn, app)
    attempts = await verifications.rows(conn, row.id)
    rolling_back = rel.direction is Direction.ROLLBACK
    target = rel.from_revision if rolling_back else rel.to_revision
    groups = []
    for g in rel.groups:
        cells: dict[str, dict[str, int]] = {}
        slots = []
        for s in g.slots:
            st = slot_state(s, target, rel.strategy.upgrade, inst, now, rel.strategy.progress_deadline_seconds)
            if rolling_back and st.kind is SlotKind.DONE:
                kind = "rolled back" if g.index <= rel.completed_groups else "untouched"
            else:
                kind = st.kind.value
            c = cells.setdefault(s.cell, {"done": 0, "in progress": 0, "waiting": 0, "failed": 0})
            bucket = {"done": "done", "rolled back": "done", "untouched": "done"}.get(kind, kind)
            c[bucket] = c.get(bucket, 0) + 1
            slots.append({"slot": s.instance, "instance": st.holder, "cell": s.cell, "state": kind, "reason": st.reason})
        item: dict[str, Any] = {"index": g.index, "name": g.name, "cells": cells, "instances": slots}
        newest = verifications.latest(attempts, g.index)
        if newest is not None:
            item["verification"] = {**verifications.view(newest),
                                    "attempts": sum(1 for a in attempts if a.group_index == g.index)}
        groups.append(item)
    return {"id": row.id, "app": app, "kind": row.kind, "phase": row.phase, "direction": row.direction,
            "fromRevision": row.from_revision, "toRevision": row.to_revision, "completedGroups": row.completed_groups,
            "reason": row.reason, "waiting": row.waiting, "fast": row.fast, "createdBy": row.created_by,
            "startedAt": row.created_at, "finishedAt": row.finished_at,
            "elapsedSeconds": round((row.finished_at or now) - row.created_at, 1),
            "pauseUntil": row.pause_until, "strategy": strategy_json(rel.strategy), "groups": groups,
            "events": await event_log(conn, row.id)}


async def event_log(conn: AsyncConnection, release_id: int) -> list[dict[str, Any]]:
    rows = (await conn.execute(select(release_events).where(release_events.c.release_id == release_id)
                               .order_by(release_events.c.id))).all()
    return [{"ts": e.ts, "actor": e.actor, "action": e.action, "phase": e.phase, "detail": e.detail} for e in rows]


async def history(conn: AsyncConnection, app: str) -> list[dict[str, Any]]:
    rows = (await conn.execute(select(releases).where(releases.c.app == app).order_by(releases.c.id))).all()
    out = []
    for row in rows:
        out.append({"id": row.id, "app": app, "kind": row.kind, "fromRevision": row.from_revision, "toRevision": row.to_revision,
                    "phase": row.phase, "createdBy": row.created_by, "startedAt": row.created_at,
                    "finishedAt": row.finished_at,
                    "durationSeconds": round(row.finished_at - row.created_at, 1) if row.finished_at else None,
                    "events": await event_log(conn, row.id)})
    return out


def _new_id(result: Any) -> int:
    key = result.inserted_primary_key
    assert key is not None, "an insert without a primary key"
    return int(key[0])
