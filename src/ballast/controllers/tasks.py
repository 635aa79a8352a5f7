"""The scheduled-task controller: starts the runs that fell due, in one transaction each.

Each pass re-reads every task and, per task, in one write transaction guarded by the task's resource version and
its "considered until" mark, decides (`core.scheduled_tasks.decide_tick`) and writes the decision: the run with
all its shards, the times missed or skipped, the new mark and the audit records. Killed at any line, the next
pass decides again from the store; a run for a scheduled time exists once or not at all. The calls themselves are
the gateways' (services/task_shards.py).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select

from ballast.controllers.loop import run_passes
from ballast.core.scheduled_tasks import ScheduledTaskSpec, decide_tick, next_time
from ballast.services import scheduled_tasks as task_records
from ballast.store.engine import EVERYTHING, Store
from ballast.store.schema import scheduled_tasks

log = logging.getLogger("ballast.tasks")


class _Wake:
    """The earliest next scheduled time of any task, so the loop wakes for it (the store's clock)."""

    def __init__(self) -> None:
        self.at: float | None = None


async def reconcile_once(store: Store, wake: _Wake | None = None) -> int:
    async with store.read() as conn:
        rows = (await conn.execute(select(scheduled_tasks.c.name, scheduled_tasks.c.spec,
                                          scheduled_tasks.c.considered_until).order_by(scheduled_tasks.c.name))).all()
    now = store.clock()
    started = 0
    earliest: float | None = None
    for row in rows:
        spec = ScheduledTaskSpec.model_validate(row.spec)
        upcoming = next_time(spec.schedule, spec.time_zone, row.considered_until)
        if upcoming > now:   # nothing fell due since the mark: nothing to write
            earliest = upcoming if earliest is None else min(earliest, upcoming)
            continue
        run_id = await _tick(store, row.name)
        started += run_id is not None
    if wake is not None:
        wake.at = earliest
    return started


async def _tick(store: Store, name: str) -> int | None:
    """Decide and write one task's due times, from the row as this transaction reads it."""
    async with store.write() as tx:
        row = (await tx.conn.execute(select(scheduled_tasks).where(scheduled_tasks.c.name == name))).first()
        if row is None:   # deleted since the read
            tx.only()
            return None
        spec = ScheduledTaskSpec.model_validate(row.spec)
        decision = decide_tick(spec, row.considered_until, tx.now, await task_records.active_runs(tx.conn, name))
        if decision.run is None and decision.skipped is None and not decision.missed_count:
            tx.only()   # only the mark moves (a suspended task): nobody needs waking for that
        run_id = await task_records.execute_tick(tx, row, decision)
    if run_id is not None:
        log.info("task %s: run %d started (%d shards)", name, run_id, spec.shards)
    return run_id


async def run(store: Store, stop: asyncio.Event, *, idle_seconds: float = 5.0) -> None:
    wake = _Wake()
    await run_passes("tasks", lambda s: reconcile_once(s, wake), store, stop, idle_seconds=idle_seconds,
                     min_interval=0.5, topics=frozenset({EVERYTHING}), wake_at=lambda: wake.at)
