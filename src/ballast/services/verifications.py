"""Verification attempts as stored records: open a window, record its verdict, abandon it, accept it.

One row per attempt to judge a release group. The verification controller
opens an attempt (with the cumulative counts of every source at that moment)
and closes it with a verdict; the release engine reads the newest live
attempt of each group (`checks`) and acts on it. A person who resumes a
release stopped by a verdict either accepts that verdict or, with
`--reverify`, abandons it so that a new window is judged. Every change here
is written with its release event and audit record in one transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.digests import digest
from ballast.core.release_engine import GroupCheck, Phase
from ballast.core.request_metrics import Counts, Series
from ballast.core.verification import Judgement, Side, SourceTotals, Verdict
from ballast.store.engine import Tx
from ballast.store.schema import release_events, verifications

ACTOR = "controller/verification"


def _check(row: Any) -> GroupCheck:
    return GroupCheck(verdict=Verdict(row.state), summary=row.summary, window_end=row.window_end,
                      accepted_by=row.accepted_by)


async def rows(conn: AsyncConnection, release_id: int) -> list[Any]:
    return list((await conn.execute(select(verifications).where(verifications.c.release_id == release_id)
                                    .order_by(verifications.c.group_index, verifications.c.attempt))).all())


def latest(attempts: list[Any], group_index: int) -> Any | None:
    mine = [a for a in attempts if a.group_index == group_index]
    return mine[-1] if mine else None


def checks(attempts: list[Any]) -> dict[int, GroupCheck]:
    """The newest attempt of each group, unless it was abandoned (then the group waits for a new one)."""
    out: dict[int, GroupCheck] = {}
    for a in attempts:   # ordered by group, then attempt: the newest wins
        out[a.group_index] = _check(a)
    return {g: c for g, c in out.items() if c.verdict is not Verdict.ABANDONED}


def reading_to_json(readings: list[SourceTotals]) -> dict[str, Any]:
    return {"sources": [{"name": r.name, "epoch": r.epoch, "error": r.error,
                         "series": [{"app": s.app, "instance": s.instance, "revision": s.revision, "cell": s.cell,
                                     "total": c.to_json()} for s, c in sorted(r.totals.items(),
                                                                               key=lambda kv: kv[0].instance)]}
                        for r in readings]}


def reading_from_json(body: dict[str, Any]) -> dict[str, SourceTotals]:
    out = {}
    for src in body.get("sources", []):
        totals = {Series(s["app"], s["instance"], int(s["revision"]), s["cell"], src["name"]): Counts.from_json(s["total"])
                  for s in src.get("series", [])}
        out[src["name"]] = SourceTotals(src["name"], src.get("epoch", ""), totals, src.get("error", ""))
    return out


async def _event(tx: Tx, release_id: int, actor: str, action: str, phase: str, detail: dict[str, Any]) -> None:
    await tx.conn.execute(insert(release_events).values(release_id=release_id, ts=tx.now, actor=actor, action=action,
                                                        phase=phase, detail=detail))


def attempt_digest(release_id: int, group_index: int, attempt: int, state: str) -> str:
    """What opening, judging or abandoning a verification changes, as its audit digests cover it."""
    return digest({"release": release_id, "group": group_index, "attempt": attempt, "state": state})


async def open_window(tx: Tx, release: Any, group_index: int, group_name: str, window_seconds: float,
                      readings: list[SourceTotals]) -> int:
    """Start judging a group: record every source's cumulative counts now; the verdict comes at the window's end."""
    attempt = (await tx.conn.execute(select(func.max(verifications.c.attempt)).where(
        verifications.c.release_id == release.id, verifications.c.group_index == group_index))).scalar() or 0
    result = await tx.conn.execute(insert(verifications).values(
        release_id=release.id, group_index=group_index, attempt=attempt + 1, state=Verdict.VERIFYING.value,
        canary_revision=release.to_revision, baseline_revision=release.from_revision, started_at=tx.now,
        window_end=tx.now + window_seconds, finished_at=None, start_reading=reading_to_json(readings), result={},
        summary="", accepted_by=None, resource_version=tx.rv))
    key = result.inserted_primary_key
    assert key is not None
    unread = [r.name for r in readings if not r.read]
    detail = {"release": release.id, "group": group_name, "attempt": attempt + 1, "windowSeconds": window_seconds,
              "canaryRevision": release.to_revision, "baselineRevision": release.from_revision, "unreadSources": unread}
    await _event(tx, release.id, ACTOR, "verify-start", release.phase, detail)
    await tx.audit(actor=ACTOR, action="release.verify-start", resource=f"AppService/{release.app}",
                   after=attempt_digest(release.id, group_index, attempt + 1, Verdict.VERIFYING.value), detail=detail)
    return int(key[0])


async def close_window(tx: Tx, release: Any, attempt: Any, group_name: str, judgement: Judgement, canary: Side,
                       baseline: Side | None, window: tuple[float, float]) -> bool:
    """Record the verdict, its inputs and its numbers; False if the attempt was closed meanwhile."""
    result = {"verdict": judgement.verdict.value, "summary": judgement.summary,
              "canary": canary.to_json(), "baseline": baseline.to_json() if baseline is not None else None,
              "checks": [c.to_json() for c in judgement.checks],
              "window": {"start": window[0], "end": window[1], "seconds": round(window[1] - window[0], 3)}}
    moved = await tx.conn.execute(update(verifications).where(verifications.c.id == attempt.id,
                                                              verifications.c.state == Verdict.VERIFYING.value)
                                  .values(state=judgement.verdict.value, finished_at=tx.now, result=result,
                                          summary=judgement.summary, resource_version=tx.rv))
    if moved.rowcount != 1:
        return False
    detail = {"release": release.id, "group": group_name, "attempt": attempt.attempt, **result}
    await _event(tx, release.id, ACTOR, f"verify-{judgement.verdict.value}", release.phase, detail)
    await tx.audit(actor=ACTOR, action="release.verify", resource=f"AppService/{release.app}",
                   before=attempt_digest(release.id, attempt.group_index, attempt.attempt, Verdict.VERIFYING.value),
                   after=attempt_digest(release.id, attempt.group_index, attempt.attempt, judgement.verdict.value),
                   result=judgement.verdict.value, detail=detail)
    return True


async def abandon(tx: Tx, release: Any, attempt: Any, actor: str, why: str) -> bool:
    moved = await tx.conn.execute(update(verifications).where(verifications.c.id == attempt.id,
                                                              verifications.c.state == attempt.state)
                                  .values(state=Verdict.ABANDONED.value, finished_at=tx.now,
                                          summary=f"abandoned: {why}", resource_version=tx.rv))
    if moved.rowcount != 1:
        return False
    detail = {"release": release.id, "groupIndex": attempt.group_index, "attempt": attempt.attempt,
              "was": attempt.state, "why": why}
    await _event(tx, release.id, actor, "verify-abandoned", release.phase, detail)
    await tx.audit(actor=actor, action="release.verify-abandon", resource=f"AppService/{release.app}",
                   before=attempt_digest(release.id, attempt.group_index, attempt.attempt, attempt.state),
                   after=attempt_digest(release.id, attempt.group_index, attempt.attempt, Verdict.ABANDONED.value),
                   detail=detail)
    return True


async def on_resume(tx: Tx, release: Any, actor: str, reverify: bool) -> dict[str, Any] | None:
    """A person resumes a release a verdict stopped: accept that verdict, or abandon it to judge a new window.
    Returns what was decided (for the resume's own event and audit record), or None if no verdict stopped it."""
    if Phase(release.phase) is not Phase.PAUSED or release.direction != "forward":
        return None
    attempt = latest(await rows(tx.conn, release.id), release.completed_groups)
    if attempt is None or attempt.accepted_by is not None or attempt.state not in (Verdict.FAILED.value,
                                                                                    Verdict.INCONCLUSIVE.value):
        return None
    decided = {"groupIndex": attempt.group_index, "attempt": attempt.attempt, "verdict": attempt.state,
               "summary": attempt.summary}
    if reverify:
        await tx.conn.execute(update(verifications).where(verifications.c.id == attempt.id).values(
            state=Verdict.ABANDONED.value, summary=f"abandoned: {actor} asked for a new window ({attempt.summary})",
            resource_version=tx.rv))
        return {**decided, "decision": "verify again"}
    await tx.conn.execute(update(verifications).where(verifications.c.id == attempt.id).values(
        accepted_by=actor, resource_version=tx.rv))
    return {**decided, "decision": f"accepted by {actor}"}


def view(row: Any) -> dict[str, Any]:
    """An attempt as `release status` shows it."""
    out: dict[str, Any] = {"attempt": row.attempt, "state": row.state, "summary": row.summary,
                           "startedAt": row.started_at, "windowEnd": row.window_end, "finishedAt": row.finished_at,
                           "canaryRevision": row.canary_revision, "baselineRevision": row.baseline_revision}
    if row.accepted_by:
        out["acceptedBy"] = row.accepted_by
    for key in ("canary", "baseline", "checks", "window"):
        if key in (row.result or {}):
            out[key] = row.result[key]
    return out
