"""ScheduledTasks as stored: apply, delete, runs (scheduled and manual), and what people read of them.

A run and every one of its shards are written in ONE transaction, before any call is made, with the task's
new "considered until" mark and the audit record: after a crash at any line either all of it exists or none,
and the unique (task, trigger, scheduled time) makes a second run for the same scheduled time impossible.
Gateways claim and report shards through services/task_shards.py.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.authz import Action
from ballast.core.digests import digest
from ballast.core.endpoints import GATEWAY
from ballast.core.manifests import AppServiceManifest, Manifest, ScheduledTaskManifest
from ballast.core.scheduled_tasks import (ACTIVE_RUN_STATES, FINISHED_SHARD_STATES, RunState, ScheduledTaskSpec,
                                          ShardState, TickDecision, next_time, run_state)
from ballast.errors import FieldProblem, NotFound
from ballast.store.engine import Tx
from ballast.store.schema import apps, components, scheduled_tasks, task_runs, task_shards

KIND = "ScheduledTask"
SYSTEM = "system"
SCHEDULE, MANUAL = "schedule", "manual"
RUNS_LISTED = 50

Authorize = Callable[[Action, str | None], None]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def resource(name: str) -> str:
    return f"{KIND}/{name}"


# --- apply and delete ----------------------------------------------------------------------------------------
def governed_apps(manifests: list[Manifest]) -> list[str]:
    """The apps whose operators may apply the tasks among `manifests`: each task's target service."""
    return [m.spec.target.service for m in manifests if isinstance(m, ScheduledTaskManifest)]


async def problems(conn: AsyncConnection, manifests: list[Manifest]) -> list[FieldProblem]:
    """A task must call an existing app (or one applied in the same request)."""
    known = set((await conn.execute(select(apps.c.name))).scalars().all())
    known |= {m.metadata.name for m in manifests if isinstance(m, AppServiceManifest)}
    out = []
    for index, m in enumerate(manifests):
        if isinstance(m, ScheduledTaskManifest) and m.spec.target.service not in known:
            out.append(FieldProblem(f"items[{index}].spec.target.service", m.spec.target.service,
                                    "an existing app (one of: " + (", ".join(sorted(known)[:20]) or "none") + ")"))
    return out


async def apply(tx: Tx, m: ScheduledTaskManifest, actor: str, authorize: Authorize) -> str:
    """Store one task (created | configured | unchanged). A new task considers scheduled times from now on."""
    name = m.metadata.name
    spec = m.spec.model_dump(mode="json", by_alias=True)
    row = (await tx.conn.execute(select(scheduled_tasks).where(scheduled_tasks.c.name == name))).first()
    if row is not None and row.service != m.spec.target.service:
        authorize(Action.APPLY_APP, row.service)   # moving a task off an app is that app's operators' to do too
    if row is not None and row.spec == spec:
        await tx.audit(actor=actor, action="apply", resource=resource(name), before=digest(row.spec),
                       after=digest(spec), detail={"outcome": "unchanged"})
        return "unchanged"
    if row is None:
        await tx.conn.execute(insert(scheduled_tasks).values(
            name=name, service=m.spec.target.service, spec=spec, considered_until=tx.now, status={},
            created_at=tx.now, updated_at=tx.now, resource_version=tx.rv))
        outcome = "created"
    else:
        await tx.conn.execute(update(scheduled_tasks).where(scheduled_tasks.c.name == name).values(
            service=m.spec.target.service, spec=spec, updated_at=tx.now, resource_version=tx.rv))
        outcome = "configured"
    await tx.audit(actor=actor, action="apply", resource=resource(name),
                   before=digest(row.spec) if row is not None else "", after=digest(spec),
                   detail={"outcome": outcome})
    return outcome


async def stored_service(conn: AsyncConnection, name: str) -> str:
    row = (await conn.execute(select(scheduled_tasks.c.service).where(scheduled_tasks.c.name == name))).first()
    if row is None:
        raise NotFound(f"{KIND} {name!r} not found")
    return str(row.service)


async def delete_task(tx: Tx, name: str, actor: str) -> None:
    """Remove the task; shards of its runs that no gateway claimed yet are cancelled (claimed ones finish)."""
    row = (await tx.conn.execute(select(scheduled_tasks).where(scheduled_tasks.c.name == name))).first()
    if row is None:
        raise NotFound(f"{KIND} {name!r} not found")
    active = await _active_run_ids(tx.conn, name)
    cancelled = await _cancel_unclaimed(tx, active, "the task was deleted")
    await tx.conn.execute(delete(scheduled_tasks).where(scheduled_tasks.c.name == name))
    await tx.audit(actor=actor, action="delete", resource=resource(name), before=digest(row.spec),
                   detail={"cancelledShards": cancelled})
    for run_id in active:
        await finish_if_done(tx, run_id)


# --- runs ----------------------------------------------------------------------------------------------------
async def _active_run_ids(conn: AsyncConnection, task: str) -> list[int]:
    return list((await conn.execute(select(task_runs.c.id).where(
        task_runs.c.task == task, task_runs.c.state.in_(ACTIVE_RUN_STATES)).order_by(task_runs.c.id))).scalars())


async def active_runs(conn: AsyncConnection, task: str) -> int:
    return len(await _active_run_ids(conn, task))


async def _cancel_unclaimed(tx: Tx, run_ids: list[int], why: str) -> int:
    if not run_ids:
        return 0
    result = await tx.conn.execute(update(task_shards).where(
        task_shards.c.run_id.in_(run_ids), task_shards.c.state == ShardState.PENDING.value).values(
        state=ShardState.CANCELLED.value, error=why, finished_at=tx.now))
    return int(result.rowcount or 0)


async def start_run(tx: Tx, task: str, spec: dict[str, Any], *, trigger: str, scheduled_for: float,
                    actor: str) -> int:
    """Persist a run and all its shards (pending), and audit it: nothing is called before this commits."""
    parsed = ScheduledTaskSpec.model_validate(spec)
    result = await tx.conn.execute(insert(task_runs).values(
        task=task, trigger=trigger, scheduled_for=scheduled_for, state=RunState.PENDING.value, reason="",
        actor=actor, spec=spec, shards=parsed.shards, created_at=tx.now, finished_at=None))
    run_id = int(result.inserted_primary_key[0])   # type: ignore[index]
    await tx.conn.execute(insert(task_shards), [
        {"run_id": run_id, "index": i, "state": ShardState.PENDING.value, "claims": 0, "attempts": 0,
         "claimed_by": None, "lease_until": None, "status_code": None, "duration_ms": None, "instance": None,
         "group_code": None, "error": "", "created_at": tx.now, "claimed_at": None, "finished_at": None}
        for i in range(parsed.shards)])
    await tx.audit(actor=actor, action="task.run", resource=resource(task),
                   after=digest(spec), detail={"run": run_id, "trigger": trigger, "scheduledFor": _iso(scheduled_for),
                                               "shards": parsed.shards, "service": parsed.target.service})
    return run_id


async def _record_not_run(tx: Tx, task: str, spec: dict[str, Any], scheduled_for: float, state: RunState,
                          reason: str) -> None:
    await tx.conn.execute(insert(task_runs).values(
        task=task, trigger=SCHEDULE, scheduled_for=scheduled_for, state=state.value, reason=reason, actor=SYSTEM,
        spec=spec, shards=0, created_at=tx.now, finished_at=tx.now))


async def execute_tick(tx: Tx, row: Any, decision: TickDecision) -> int | None:
    """Write what `decide_tick` decided for the task in `row` (read in this transaction): the run started, the
    times skipped or missed, and the new mark. Returns the new run's id."""
    spec = ScheduledTaskSpec.model_validate(row.spec)
    for t in decision.missed:
        why = (f"missed: more than startingDeadlineSeconds ({spec.starting_deadline_seconds}) late"
               if spec.starting_deadline_seconds is not None and decision.considered_until - t > spec.starting_deadline_seconds
               else "missed: passed over by a later scheduled time")
        await _record_not_run(tx, row.name, row.spec, t, RunState.MISSED, why)
    if decision.missed_count:
        await tx.audit(actor=SYSTEM, action="task.missed", resource=resource(row.name),
                       detail={"count": decision.missed_count, "newest": _iso(decision.missed[-1]),
                               "listed": len(decision.missed)})
    if decision.skipped is not None:
        await _record_not_run(tx, row.name, row.spec, decision.skipped, RunState.SKIPPED,
                              "skipped: concurrencyPolicy Forbid and a run is active")
        await tx.audit(actor=SYSTEM, action="task.skip", resource=resource(row.name),
                       detail={"scheduledFor": _iso(decision.skipped), "reason": "a run is active (Forbid)"})
    run_id = None
    if decision.run is not None:
        if decision.replace:
            active = await _active_run_ids(tx.conn, row.name)
            cancelled = await _cancel_unclaimed(tx, active, "replaced by a newer run (concurrencyPolicy Replace)")
            await tx.audit(actor=SYSTEM, action="task.replace", resource=resource(row.name),
                           detail={"runs": active, "cancelledShards": cancelled})
            for old in active:
                await finish_if_done(tx, old)
        run_id = await start_run(tx, row.name, row.spec, trigger=SCHEDULE, scheduled_for=decision.run, actor=SYSTEM)
    status = dict(row.status or {})
    status["missedTotal"] = int(status.get("missedTotal", 0)) + decision.missed_count
    if decision.run is not None:
        status["lastScheduleTime"] = _iso(decision.run)
    await tx.conn.execute(update(scheduled_tasks).where(scheduled_tasks.c.name == row.name).values(
        considered_until=decision.considered_until, status=status))
    return run_id


async def manual_run(tx: Tx, name: str, actor: str) -> int:
    row = (await tx.conn.execute(select(scheduled_tasks).where(scheduled_tasks.c.name == name))).first()
    if row is None:
        raise NotFound(f"{KIND} {name!r} not found")
    return await start_run(tx, name, row.spec, trigger=MANUAL, scheduled_for=tx.now, actor=actor)


async def finish_if_done(tx: Tx, run_id: int) -> None:
    """Move the run's state from its shards' (running once one is claimed; finished once all are), auditing the
    finish once: the update is guarded by the state it read."""
    run = (await tx.conn.execute(select(task_runs).where(task_runs.c.id == run_id))).first()
    if run is None or run.state not in ACTIVE_RUN_STATES:
        return
    states = list((await tx.conn.execute(select(task_shards.c.state).where(task_shards.c.run_id == run_id))).scalars())
    new = run_state(states)
    if new.value == run.state:
        return
    finished = new in (RunState.SUCCEEDED, RunState.FAILED)
    await tx.conn.execute(update(task_runs).where(task_runs.c.id == run_id, task_runs.c.state == run.state).values(
        state=new.value, finished_at=tx.now if finished else None))
    if finished:
        counts = {s: states.count(s) for s in FINISHED_SHARD_STATES if states.count(s)}
        await tx.audit(actor=run.actor, action="task.run-finish", resource=resource(run.task),
                       result="ok" if new is RunState.SUCCEEDED else "failed",
                       detail={"run": run_id, "state": new.value, "shards": counts})


# --- reads ---------------------------------------------------------------------------------------------------
async def listing(conn: AsyncConnection, now: float, name: str | None = None) -> list[dict[str, Any]]:
    query = select(scheduled_tasks).order_by(scheduled_tasks.c.name)
    if name is not None:
        query = query.where(scheduled_tasks.c.name == name)
    rows = (await conn.execute(query)).all()
    if name is not None and not rows:
        raise NotFound(f"{KIND} {name!r} not found")
    out = []
    for row in rows:
        spec = ScheduledTaskSpec.model_validate(row.spec)
        last = (await conn.execute(select(task_runs).where(task_runs.c.task == row.name, task_runs.c.shards > 0)
                                   .order_by(task_runs.c.id.desc()).limit(1))).first()
        status = {**(row.status or {}), "activeRuns": await active_runs(conn, row.name),
                  "nextScheduleTime": None if spec.suspend else _iso(next_time(spec.schedule, spec.time_zone,
                                                                              max(now, row.considered_until))),
                  "lastRun": None if last is None else {"id": last.id, "state": last.state,
                                                        "trigger": last.trigger, "createdAt": _iso(last.created_at)}}
        out.append({"apiVersion": "ballast.io/v1alpha1", "kind": KIND,
                    "metadata": {"name": row.name, "creationTimestamp": _iso(row.created_at),
                                 "resourceVersion": row.resource_version},
                    "spec": row.spec, "status": status})
    return out


async def _waiting(conn: AsyncConnection, now: float) -> str:
    gateways = (await conn.execute(select(func.count()).select_from(components).where(
        components.c.kind == GATEWAY))).scalar_one()
    return ("waiting: no gateway is registered to make its calls" if not gateways
            else "waiting for a gateway to claim its shards")


def _shard(s: Any) -> dict[str, Any]:
    return {"index": s._mapping["index"], "state": s.state, "attempts": s.attempts, "claims": s.claims,
            "statusCode": s.status_code, "durationMs": s.duration_ms, "instance": s.instance, "group": s.group_code,
            "gateway": s.claimed_by, "error": s.error, "leaseUntil": _iso(s.lease_until),
            "finishedAt": _iso(s.finished_at)}


def _run(r: Any, shards: list[Any], waiting: str) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for s in shards:
        counts[s.state] = counts.get(s.state, 0) + 1
    reason = r.reason or (waiting if r.state == RunState.PENDING.value else "")
    return {"id": r.id, "task": r.task, "trigger": r.trigger, "scheduledFor": _iso(r.scheduled_for),
            "state": r.state, "reason": reason, "actor": r.actor, "shards": r.shards, "shardStates": counts,
            "createdAt": _iso(r.created_at), "finishedAt": _iso(r.finished_at),
            "service": r.spec.get("target", {}).get("service"),
            "items": [_shard(s) for s in sorted(shards, key=lambda s: s._mapping["index"])]}


async def runs(conn: AsyncConnection, task: str, now: float, limit: int = RUNS_LISTED) -> list[dict[str, Any]]:
    """The task's newest runs (and skipped or missed times), newest first, each with its shards."""
    rows = (await conn.execute(select(task_runs).where(task_runs.c.task == task)
                               .order_by(task_runs.c.id.desc()).limit(limit))).all()
    if not rows:
        await stored_service(conn, task)   # an unknown task is a 404, a task without runs an empty list
        return []
    shards = (await conn.execute(select(task_shards).where(task_shards.c.run_id.in_([r.id for r in rows])))).all()
    waiting = await _waiting(conn, now)
    return [_run(r, [s for s in shards if s.run_id == r.id], waiting) for r in rows]


async def run(conn: AsyncConnection, run_id: int, now: float) -> dict[str, Any]:
    row = (await conn.execute(select(task_runs).where(task_runs.c.id == run_id))).first()
    if row is None:
        raise NotFound(f"task run {run_id} not found")
    shards = (await conn.execute(select(task_shards).where(task_shards.c.run_id == run_id))).all()
    return _run(row, list(shards), await _waiting(conn, now))
