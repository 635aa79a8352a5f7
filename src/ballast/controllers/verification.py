"""The verification controller: judges each release group from the traffic it served.

For every release whose strategy verifies, each pass decides from records:
- a group whose instances are all done, with no live attempt, gets one: the
  sources that count the app (the agents of the nodes hosting it) are read
  and the window opens with their cumulative counts;
- an open window whose time is up is closed: the sources are read again, the
  new revision's and the old revision's counts over the window computed
  (`core.verification.sides`), the external checks run, and the verdict
  recorded with its numbers;
- an open window of a group that is no longer complete (an instance failed,
  the release turned round or ended) is abandoned.
It only observes and records; the release engine acts on verdicts. Sources
are read outside any transaction and every record is a compare-and-set on
the attempt, so a pass killed anywhere leaves at most a window to reopen.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from sqlalchemy import func, select

from ballast.controllers.loop import run_passes
from ballast.core.release_engine import ACTIVE_PHASES, Direction, Phase, verification_due
from ballast.core.verification import Side, SourceTotals, Verdict, judge, sides, traffic_checks
from ballast.errors import RetryableConflict
from ballast.services import releases as release_records
from ballast.core.outbound import OutboundPolicy
from ballast.services import request_metrics, verification_checks, verifications
from ballast.store.engine import ACKS, EVERYTHING, GRANTS, INSTANCE_STATUS, INTENT, REGISTRY, VERIFICATION, Store
from ballast.store.schema import instances, releases
from ballast.store.schema import verifications as attempts_table

log = logging.getLogger("ballast.verification")
CLOSE_GRACE_SECONDS = 15.0   # past the window's end, how long an unreadable source is waited for


class Wake:
    """When the earliest open window ends: the loop wakes then, not at its next idle pass."""

    def __init__(self) -> None:
        self.at: float | None = None


async def reconcile_once(store: Store, transport: httpx.AsyncBaseTransport | None = None,
                         wake: Wake | None = None, policy: OutboundPolicy = OutboundPolicy()) -> int:
    """One pass over every release that verifies (or holds an open window); returns how many records it wrote."""
    async with store.read() as conn:
        open_releases = select(attempts_table.c.release_id).where(attempts_table.c.state == Verdict.VERIFYING.value)
        rows = (await conn.execute(select(releases).where(
            releases.c.phase.in_([p.value for p in ACTIVE_PHASES]) | releases.c.id.in_(open_releases))
            .order_by(releases.c.id))).all()
    written = 0
    for row in rows:
        if release_records.view(row).strategy.verify is None:
            continue
        try:
            written += await _reconcile(store, row, transport, policy)
        except RetryableConflict:
            continue
    if wake is not None:
        async with store.read() as conn:
            wake.at = (await conn.execute(select(func.min(attempts_table.c.window_end)).where(
                attempts_table.c.state == Verdict.VERIFYING.value,
                attempts_table.c.window_end > store.clock()))).scalar()   # ended ones: the idle passes
    return written


async def _reconcile(store: Store, row: Any, transport: httpx.AsyncBaseTransport | None,
                     policy: OutboundPolicy) -> int:
    rel = release_records.view(row)
    now = store.clock()
    async with store.read() as conn:
        views = await release_records.instance_views(conn, row.app)
        attempts = await verifications.rows(conn, row.id)
    due = verification_due(rel, views, now)
    written = 0
    for attempt in attempts:
        if attempt.state == Verdict.VERIFYING.value and (due is None or attempt.group_index != due.index):
            why = (f"release {row.id} is {row.phase}" if Phase(row.phase) not in (Phase.RUNNING, Phase.PAUSED)
                   or rel.direction is Direction.ROLLBACK else
                   f"{rel.groups[attempt.group_index].name} is no longer complete")
            written += await _write(store, lambda tx, a=attempt: verifications.abandon(tx, row, a, verifications.ACTOR,
                                                                                      why))
    if due is None:
        return written
    newest = verifications.latest(attempts, due.index)
    assert rel.strategy.verify is not None
    if newest is None or newest.state == Verdict.ABANDONED.value:
        readings = await _read(store, row.app, transport, policy)
        window = rel.strategy.verify.window_seconds
        await _write(store, lambda tx: verifications.open_window(tx, row, due.index, due.name, window, readings))
        return written + 1
    if newest.state != Verdict.VERIFYING.value or now < newest.window_end:
        return written
    end = await _read(store, row.app, transport, policy)
    if any(not r.read for r in end) and now < newest.window_end + CLOSE_GRACE_SECONDS:
        return written   # give an unreadable source a few more passes before judging without it
    start = verifications.reading_from_json(newest.start_reading)
    running = {v.id: v.running_revision for v in views.values()
               if v.desired == "running" and v.running_revision is not None}
    canary, baseline, data = sides(start, {r.name: r for r in end}, newest.canary_revision,
                                   newest.baseline_revision, now - newest.started_at, running)
    payload = await _payload(store, row, due.name, newest, canary, baseline, now)
    external = await verification_checks.run(rel.strategy.verify, payload, {
        "app": row.app, "revision": str(newest.canary_revision), "baseline": str(newest.baseline_revision),
        "window": f"{max(1, round(now - newest.started_at))}s"}, now, policy=policy, transport=transport)
    judgement = judge([data, *traffic_checks(rel.strategy.verify, canary, baseline), *external])
    log.info("release %s %s: %s", row.id, due.name, judgement.summary)
    await _write(store, lambda tx: verifications.close_window(tx, row, newest, due.name, judgement, canary, baseline,
                                                              (newest.started_at, now)))
    return written + 1


async def _read(store: Store, app: str, transport: httpx.AsyncBaseTransport | None,
                policy: OutboundPolicy) -> list[SourceTotals]:
    async with store.read() as conn:
        sources = await request_metrics.sources(conn, app, request_metrics.SIDECAR)
    readings = await request_metrics.read(sources, app, fresh=True, policy=policy, transport=transport)
    return [SourceTotals(r.source.name, r.epoch, r.totals, r.error) for r in readings]


async def _payload(store: Store, row: Any, group: str, attempt: Any, canary: Side, baseline: Side | None,
                   now: float) -> dict[str, Any]:
    """What a webhook is told: which revision to check, where its instances answer, and the numbers so far."""
    async with store.read() as conn:
        members = (await conn.execute(select(instances.c.id, instances.c.ip, instances.c.port, instances.c.cell).where(
            instances.c.app == row.app, instances.c.revision == attempt.canary_revision,
            instances.c.desired == "running").order_by(instances.c.id))).all()
    return {"app": row.app, "release": row.id, "group": group, "attempt": attempt.attempt,
            "revision": attempt.canary_revision, "baselineRevision": attempt.baseline_revision,
            "window": {"start": attempt.started_at, "end": now},
            "instances": [{"id": m.id, "endpoint": f"{m.ip}:{m.port}", "cell": m.cell} for m in members],
            "canary": canary.to_json(), "baseline": baseline.to_json() if baseline is not None else None}


async def _write(store: Store, change: Any) -> int:
    async with store.write() as tx:
        tx.only(VERIFICATION)
        done = await change(tx)
    return 1 if done is not False else 0


async def run(store: Store, stop: asyncio.Event, *, idle_seconds: float = 1.0,
              policy: OutboundPolicy = OutboundPolicy()) -> None:
    # The topics notice groups that complete; a pass also runs when the earliest open window ends.
    wake = Wake()
    await run_passes("verification", lambda s: reconcile_once(s, wake=wake, policy=policy), store, stop, idle_seconds=idle_seconds,
                     topics=frozenset({EVERYTHING, INSTANCE_STATUS, REGISTRY, ACKS, GRANTS, INTENT, VERIFICATION}),
                     wake_at=lambda: wake.at)

