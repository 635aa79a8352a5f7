"""Shards of task runs as gateways execute them: claims with a lease, outcomes recorded once.

A gateway claims pending shards (and shards whose lease ran out: their gateway died mid-call) and gets each one's
call whole. It reports each outcome until the control plane answers; the first report of a claimed shard is
recorded (with the group of the instance that served it, from the registry), and any later report of a finished
shard changes nothing. A shard whose lease ran out MAX_CLAIMS times fails instead of being claimed again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_, select, update

from ballast.core.scheduled_tasks import ScheduledTaskSpec, ShardState, idempotency_key
from ballast.errors import Conflict, NotFound
from ballast.services.scheduled_tasks import finish_if_done
from ballast.store.engine import Tx
from ballast.store.schema import endpoints, task_runs, task_shards
from ballast.wire.tasks import ShardCall, ShardOutcome

MAX_CLAIMS = 5


async def claim(tx: Tx, gateway: str, most: int) -> list[ShardCall]:
    """Up to `most` shards for `gateway`, oldest runs first, each leased to it."""
    free = or_(task_shards.c.state == ShardState.PENDING.value,
               and_(task_shards.c.state == ShardState.CLAIMED.value, task_shards.c.lease_until < tx.now))
    rows = (await tx.conn.execute(
        select(task_shards, task_runs.c.task, task_runs.c.spec, task_runs.c.shards.label("shard_count"))
        .join(task_runs, task_runs.c.id == task_shards.c.run_id)
        .where(free).order_by(task_shards.c.run_id, task_shards.c.index).limit(most))).all()
    calls, touched = [], set()
    for row in rows:
        index = int(row._mapping["index"])   # `row.index` is the tuple's method
        touched.add(row.run_id)
        where = and_(task_shards.c.run_id == row.run_id, task_shards.c.index == index,
                     task_shards.c.state == row.state, task_shards.c.claims == row.claims)
        if row.claims >= MAX_CLAIMS:
            await tx.conn.execute(update(task_shards).where(where).values(
                state=ShardState.FAILED.value, finished_at=tx.now,
                error=f"its lease ran out {row.claims} times: no gateway reported an outcome"))
            continue
        spec = ScheduledTaskSpec.model_validate(row.spec)
        lease = spec.lease_seconds()
        await tx.conn.execute(update(task_shards).where(where).values(
            state=ShardState.CLAIMED.value, claimed_by=gateway, lease_until=tx.now + lease, claims=row.claims + 1,
            claimed_at=tx.now))
        calls.append(ShardCall(task=row.task, run_id=row.run_id, index=index, shards=row.shard_count,
                               service=spec.target.service, path=spec.target.path, method=spec.target.method,
                               tags=dict(spec.tags), timeout_seconds=spec.timeout_seconds, retries=spec.retries,
                               lease_until=tx.now + lease, lease_seconds=lease,
                               idempotency_key=idempotency_key(row.task, row.run_id, index)))
    for run_id in sorted(touched):
        await finish_if_done(tx, run_id)
    return calls


async def report(tx: Tx, gateway: str, outcome: ShardOutcome) -> dict[str, Any]:
    """Record the outcome of a shard `gateway` claimed, once. A finished shard answers `recorded: false` and is left
    as it is (a report repeated after a lost answer); a shard claimed by another gateway since is refused."""
    shard = (await tx.conn.execute(select(task_shards).where(
        task_shards.c.run_id == outcome.run_id, task_shards.c.index == outcome.index))).first()
    if shard is None:
        raise NotFound(f"shard {outcome.index} of task run {outcome.run_id} not found")
    answer = {"runId": outcome.run_id, "index": outcome.index}
    if shard.state != ShardState.CLAIMED.value:
        return {**answer, "recorded": False, "state": shard.state}
    if shard.claimed_by != gateway:
        raise Conflict(f"shard {outcome.index} of task run {outcome.run_id} is claimed by gateway "
                       f"{shard.claimed_by!r}, not {gateway!r}")
    group = None
    if outcome.instance is not None:
        found = (await tx.conn.execute(select(endpoints.c.group_code).where(endpoints.c.id == outcome.instance))).first()
        group = found.group_code if found is not None else None
    await tx.conn.execute(update(task_shards).where(
        task_shards.c.run_id == outcome.run_id, task_shards.c.index == outcome.index,
        task_shards.c.state == ShardState.CLAIMED.value).values(
        state=outcome.outcome, status_code=outcome.status_code, duration_ms=outcome.duration_ms,
        attempts=outcome.attempts, instance=outcome.instance, group_code=group, error=outcome.error,
        lease_until=None, finished_at=tx.now))
    await finish_if_done(tx, outcome.run_id)
    return {**answer, "recorded": True, "state": outcome.outcome}
