"""Release orders as stored records: apply, approve or reject, start, pause / resume / roll back, read, report.

An order's spec is stored with every target revision resolved, and its digest is what approvals are
given for: changing the order voids them. Authors (whoever created or changed it) never approve it.
Phase changes are compare-and-set on the phase the request saw, in one transaction with the order's
event and audit record; the engine (controllers/orders.py) starts and steers the apps' releases.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.digests import digest
from ballast.core.maker_checker import Authorship, decision_refusal
from ballast.core.manifests import ChangeWindowManifest, ChangeWindowSpec, ReleaseOrderManifest, spec_json, stored_spec
from ballast.core.orders import (ACTIVE, EDITABLE, IN_FLIGHT, OrderOutcome, OrderPhase, Window, check_windows,
                                 stats, template_diff, utc)
from ballast.errors import Conflict, FieldProblem, Forbidden, InvalidInput, NotFound
from ballast.services import releases
from ballast.services.access import Principal, granted_bindings
from ballast.store import audit_log
from ballast.store.engine import Tx
from ballast.store.schema import (apps, audit, change_windows, order_approvals, order_events, order_items, orders,
                                  revisions)
from ballast.store.schema import releases as release_rows

ENGINE = "controller/orders"


def resource(name: str) -> str:
    return f"ReleaseOrder/{name}"


def engine_actor(name: str) -> str:
    return f"order/{name}"[:63]


# --- change windows --------------------------------------------------------------------------------
async def apply_window(tx: Tx, m: ChangeWindowManifest, actor: str) -> str:
    name, spec = m.metadata.name, spec_json(m)
    row = (await tx.conn.execute(select(change_windows).where(change_windows.c.name == name))).first()
    if row is None:
        await tx.conn.execute(insert(change_windows).values(name=name, spec=spec, created_at=tx.now,
                                                            resource_version=tx.rv))
        outcome = "created"
    elif row.spec == spec:
        outcome = "unchanged"
    else:
        await tx.conn.execute(update(change_windows).where(change_windows.c.name == name)
                              .values(spec=spec, resource_version=tx.rv))
        outcome = "configured"
    await tx.audit(actor=actor, action="apply", resource=f"ChangeWindow/{name}",
                   before=digest(row.spec) if row is not None else "", after=digest(spec), detail={"outcome": outcome})
    return outcome


async def windows(conn: AsyncConnection) -> list[Window]:
    rows = (await conn.execute(select(change_windows).order_by(change_windows.c.name))).all()
    return [ChangeWindowSpec.model_validate(r.spec).to_window(r.name) for r in rows]


async def list_windows(conn: AsyncConnection, now: float) -> list[dict[str, Any]]:
    rows = (await conn.execute(select(change_windows).order_by(change_windows.c.name))).all()
    out = []
    for r in rows:
        window = ChangeWindowSpec.model_validate(r.spec).to_window(r.name)
        verdict = check_windows([window], window.apps or ["*"], now)
        out.append({"apiVersion": "ballast.io/v1alpha1", "kind": "ChangeWindow", "metadata": {"name": r.name},
                    "spec": r.spec, "status": {"openNow": verdict.allowed, "why": list(verdict.reasons)}})
    return out


async def delete_window(tx: Tx, name: str, actor: str) -> None:
    row = (await tx.conn.execute(select(change_windows).where(change_windows.c.name == name))).first()
    if row is None:
        raise NotFound(f"change window {name!r} not found")
    await tx.conn.execute(delete(change_windows).where(change_windows.c.name == name))
    await tx.audit(actor=actor, action="delete", resource=f"ChangeWindow/{name}", before=digest(row.spec))


# --- apply -----------------------------------------------------------------------------------------
async def apply_order(tx: Tx, m: ReleaseOrderManifest, actor: str, where: str) -> str:
    name = m.metadata.name
    spec = spec_json(m)
    problems: list[FieldProblem] = []
    for k, item in enumerate(m.spec.releases):
        path = f"{where}.spec.releases[{k}]"
        app_row = (await tx.conn.execute(select(apps).where(apps.c.name == item.app))).first()
        if app_row is None:
            problems.append(FieldProblem(f"{path}.app", item.app, "an existing AppService"))
            continue
        target = item.to_revision if item.to_revision is not None else app_row.latest_revision
        known = (await tx.conn.execute(select(revisions.c.number).where(revisions.c.app == item.app))).scalars().all()
        if target not in known:
            problems.append(FieldProblem(f"{path}.toRevision", target, f"one of {item.app}'s revisions: {sorted(known)}"))
            continue
        spec["releases"][k]["toRevision"] = target
        try:
            releases.merge_strategy(stored_spec(app_row.spec), item.strategy.model_dump(by_alias=True))
        except InvalidInput as exc:
            problems.extend(FieldProblem(p.path.replace("strategy", f"{path}.strategy", 1), p.value, p.expected)
                            for p in exc.problems)
    if problems:
        raise InvalidInput(f"{len(problems)} problem(s) in manifests; nothing was applied", problems=problems)
    new_digest = digest(spec)
    row = (await tx.conn.execute(select(orders).where(orders.c.name == name))).first()
    if row is None:
        await tx.conn.execute(insert(orders).values(
            name=name, spec=spec, digest=new_digest, phase=OrderPhase.PENDING_APPROVAL.value, rolling_back=False,
            emergency=False, reason=f"needs {m.spec.approvals} approval(s)", waiting="", author=actor, started_by=None,
            created_at=tx.now, updated_at=tx.now, started_at=None, finished_at=None, resource_version=tx.rv))
        await _write_items(tx, name, spec)
        await event(tx, name, actor, "created", OrderPhase.PENDING_APPROVAL, {"digest": new_digest})
        await tx.audit(actor=actor, action="order.create", resource=resource(name), after=new_digest,
                       detail={"releases": [{"app": r["app"], "toRevision": r["toRevision"]} for r in spec["releases"]]})
        return "created"
    if row.digest == new_digest:
        await tx.audit(actor=actor, action="apply", resource=resource(name), before=row.digest, after=new_digest,
                       detail={"outcome": "unchanged"})
        return "unchanged"
    phase = OrderPhase(row.phase)
    if phase not in EDITABLE:
        raise Conflict(f"release order {name!r} is {phase.value}; it can no longer change (apply a new order)")
    voided = await tx.conn.execute(update(order_approvals).where(order_approvals.c.order_name == name,
                                                                 order_approvals.c.voided.is_(False))
                                   .values(voided=True))
    await tx.conn.execute(update(orders).where(orders.c.name == name).values(
        spec=spec, digest=new_digest, phase=OrderPhase.PENDING_APPROVAL.value, emergency=False,
        reason=f"changed by {actor}; needs {m.spec.approvals} approval(s)", updated_at=tx.now, resource_version=tx.rv))
    await tx.conn.execute(delete(order_items).where(order_items.c.order_name == name))
    await _write_items(tx, name, spec)
    await event(tx, name, actor, "changed", OrderPhase.PENDING_APPROVAL,
                {"from": row.digest, "to": new_digest, "voidedApprovals": voided.rowcount})
    await tx.audit(actor=actor, action="order.change", resource=resource(name), before=row.digest, after=new_digest,
                   detail={"voidedApprovals": voided.rowcount})
    return "configured"


async def _write_items(tx: Tx, name: str, spec: dict[str, Any]) -> None:
    for r in spec["releases"]:
        await tx.conn.execute(insert(order_items).values(order_name=name, app=r["app"], to_revision=r["toRevision"],
                                                         from_revision=None, release_id=None, undo_release_id=None,
                                                         unchanged=False, releases=[]))


async def event(tx: Tx, name: str, actor: str, action: str, phase: OrderPhase, detail: dict[str, Any]) -> None:
    await tx.conn.execute(insert(order_events).values(order_name=name, ts=tx.now, actor=actor, action=action,
                                                      phase=phase.value, detail=detail))


# --- approvals ---------------------------------------------------------------------------------------
async def get_order(conn: AsyncConnection, name: str) -> Any:
    row = (await conn.execute(select(orders).where(orders.c.name == name))).first()
    if row is None:
        raise NotFound(f"release order {name!r} not found")
    return row


def order_apps(spec: dict[str, Any]) -> list[str]:
    return [r["app"] for r in spec["releases"]]


async def authorship(conn: AsyncConnection, name: str) -> Authorship:
    """Who wrote the order (created or changed it) and when its current spec was applied."""
    rows = (await conn.execute(select(order_events.c.actor, order_events.c.ts).where(
        order_events.c.order_name == name, order_events.c.action.in_(["created", "changed"])))).all()
    # No record (never so) leaves written_at at 0: every binding is then "after", and no approval counts.
    return Authorship(order=name, authors=frozenset(r.actor for r in rows),
                      written_at=max((r.ts for r in rows), default=0.0))


async def _approvals(conn: AsyncConnection, row: Any) -> list[Any]:
    return list((await conn.execute(select(order_approvals).where(order_approvals.c.order_name == row.name,
                                                                  order_approvals.c.voided.is_(False),
                                                                  order_approvals.c.digest == row.digest)
                                    .order_by(order_approvals.c.id))).all())


async def state_digest(conn: AsyncConnection, name: str) -> str:
    """What deciding on, starting or steering an order changes, as its audit digests cover it: the spec's digest
    (what approvals are for), the phase, whether it is an emergency or rolling back, and the valid decisions."""
    row = await get_order(conn, name)
    decisions = sorted([a.user, a.decision, bool(a.emergency)] for a in await _approvals(conn, row))
    return digest({"digest": row.digest, "phase": row.phase, "emergency": bool(row.emergency),
                   "rollingBack": bool(row.rolling_back), "decisions": decisions})


async def decide_approval(tx: Tx, name: str, who: Principal, *, approve: bool, emergency: bool,
                          comment: str) -> dict[str, Any]:
    row = await get_order(tx.conn, name)
    before = await state_digest(tx.conn, name)
    phase = OrderPhase(row.phase)
    what = "emergency approval" if emergency else ("approval" if approve else "rejection")
    if phase not in (OrderPhase.PENDING_APPROVAL, OrderPhase.APPROVED):
        raise Conflict(f"release order {name!r} is {phase.value}; it takes no {what} now")
    # The bindings as stored in this transaction, not the principal's cached ones: their age and grantor count.
    refusal = decision_refusal(who.user, await granted_bindings(tx.conn, who.user), order_apps(row.spec),
                               await authorship(tx.conn, name), approve=approve, emergency=emergency)
    if refusal is not None:
        raise Forbidden(refusal)
    given = await _approvals(tx.conn, row)
    if any(a.user == who.user and a.emergency == emergency for a in given):
        raise Conflict(f"user {who.user!r} already decided on release order {name!r} as it stands")
    if not approve and emergency:
        raise InvalidInput("an emergency decision is an approval", problems=[FieldProblem("emergency", True, "false")])
    await tx.conn.execute(insert(order_approvals).values(order_name=name, user=who.user,
                                                         decision="approve" if approve else "reject",
                                                         emergency=emergency, comment=comment, digest=row.digest,
                                                         voided=False, ts=tx.now))
    required = int(row.spec["approvals"])
    have = len({a.user for a in given if a.decision == "approve" and not a.emergency} |
               ({who.user} if approve and not emergency else set()))
    new: OrderPhase = phase
    if not approve:
        new = OrderPhase.REJECTED
        reason = f"rejected by {who.user}: {comment}"
    elif not emergency and have >= required:
        new, reason = OrderPhase.APPROVED, f"approved ({have} of {required})"
    else:
        reason = row.reason if emergency else f"{have} of {required} approval(s)"
    moved = await tx.conn.execute(update(orders).where(orders.c.name == name, orders.c.phase == phase.value,
                                                       orders.c.digest == row.digest)
                                  .values(phase=new.value, reason=reason, updated_at=tx.now, resource_version=tx.rv))
    if moved.rowcount != 1:
        raise Conflict(f"release order {name!r} changed concurrently; nothing changed")
    verb = "emergency-approve" if emergency else ("approve" if approve else "reject")
    await event(tx, name, who.user, verb, new, {"comment": comment, "digest": row.digest})
    await tx.audit(actor=who.user, action=f"order.{verb}", resource=resource(name),
                   before=before, after=await state_digest(tx.conn, name),
                   detail={"comment": comment, "phase": new.value, "orderDigest": row.digest})
    return {"name": name, "phase": new.value, "approvals": have, "required": required}


# --- start and steering -------------------------------------------------------------------------------
async def active_order_for(conn: AsyncConnection, app: str, other_than: str | None = None) -> Any:
    rows = (await conn.execute(select(orders).where(orders.c.phase.in_([p.value for p in ACTIVE])))).all()
    for r in rows:
        if r.name != other_than and app in order_apps(r.spec):
            return r
    return None


async def start(tx: Tx, name: str, who: Principal, *, emergency: bool) -> dict[str, Any]:
    row = await get_order(tx.conn, name)
    before = await state_digest(tx.conn, name)
    phase = OrderPhase(row.phase)
    if phase is not OrderPhase.APPROVED:
        raise Conflict(f"release order {name!r} is {phase.value} ({row.reason}); only an Approved order starts")
    for app in order_apps(row.spec):
        other = await active_order_for(tx.conn, app, other_than=name)
        if other is not None:
            raise Conflict(f"release order {other.name!r} ({other.phase}) also changes app {app!r}; two orders "
                           f"touching one app never run at once: wait for it to finish")
    verdict = check_windows(await windows(tx.conn), order_apps(row.spec), tx.now)
    if emergency:
        given = await _approvals(tx.conn, row)
        if not any(a.emergency and a.decision == "approve" for a in given):
            raise Forbidden(f"an emergency start of release order {name!r} needs an approval by a user holding the "
                            f"emergency-approver role (`ballast order approve {name} --emergency`)")
    elif not verdict.allowed:
        raise Conflict(f"release order {name!r} cannot start now: {'; '.join(verdict.reasons)}; start it inside "
                       f"the window, or as an emergency (--emergency, with an emergency approval)")
    reason = f"started by {who.user}" + (" as an EMERGENCY change" if emergency else "")
    moved = await tx.conn.execute(update(orders).where(orders.c.name == name, orders.c.phase == phase.value)
                                  .values(phase=OrderPhase.RUNNING.value, emergency=emergency, started_by=who.user,
                                          started_at=tx.now, reason=reason, updated_at=tx.now, resource_version=tx.rv))
    if moved.rowcount != 1:
        raise Conflict(f"release order {name!r} changed concurrently; nothing changed")
    detail = {"emergency": emergency, "windows": list(verdict.windows), "outsideWindow": list(verdict.reasons)}
    await event(tx, name, who.user, "start", OrderPhase.RUNNING, detail)
    await tx.audit(actor=who.user, action="order.start", resource=resource(name),
                   before=before, after=await state_digest(tx.conn, name),
                   detail={**detail, "orderDigest": row.digest})
    return {"name": name, "phase": OrderPhase.RUNNING.value, "emergency": emergency}


_ALLOWED = {
    "pause": {OrderPhase.RUNNING, OrderPhase.ROLLING_BACK},
    "resume": {OrderPhase.PAUSED},
    "rollback": {OrderPhase.RUNNING, OrderPhase.PAUSED, OrderPhase.SUCCEEDED},
}


async def act(tx: Tx, name: str, action: str, actor: str, expect_phase: str | None = None) -> dict[str, Any]:
    """pause | resume | rollback of the whole order, as a compare-and-set on its phase."""
    row = await get_order(tx.conn, name)
    before = await state_digest(tx.conn, name)
    current = OrderPhase(row.phase)
    if expect_phase is not None and expect_phase != current.value:
        raise Conflict(f"release order {name!r} is {current.value}, not {expect_phase}; nothing changed")
    if current not in _ALLOWED[action]:
        raise Conflict(f"cannot {action} release order {name!r}: it is {current.value}")
    rolling_back = row.rolling_back or action == "rollback"
    if action == "pause":
        new = OrderPhase.PAUSED
    elif action == "resume":
        new = OrderPhase.ROLLING_BACK if rolling_back else OrderPhase.RUNNING
    else:
        new = OrderPhase.ROLLING_BACK
    moved = await tx.conn.execute(update(orders).where(orders.c.name == name, orders.c.phase == current.value)
                                  .values(phase=new.value, rolling_back=rolling_back, reason=f"{action} by {actor}",
                                          waiting="", finished_at=None, updated_at=tx.now, resource_version=tx.rv))
    if moved.rowcount != 1:
        raise Conflict(f"release order {name!r} changed concurrently; nothing changed")
    touched = await _steer_releases(tx, name, action, actor, rolling_back)
    await event(tx, name, actor, action, new, {"from": current.value, "releases": touched})
    await tx.audit(actor=actor, action=f"order.{action}", resource=resource(name),
                   before=before, after=await state_digest(tx.conn, name),
                   detail={"from": current.value, "to": new.value, "releases": touched})
    return {"name": name, "phase": new.value, "previousPhase": current.value}


async def _steer_releases(tx: Tx, name: str, action: str, actor: str, rolling_back: bool) -> list[dict[str, Any]]:
    """Pausing or resuming the order does the same to its apps' releases; rollback is the engine's, in order."""
    touched = []
    for item in (await tx.conn.execute(select(order_items).where(order_items.c.order_name == name))).all():
        for release_id in (item.release_id, item.undo_release_id):
            if release_id is None:
                continue
            rel = (await tx.conn.execute(select(release_rows).where(release_rows.c.id == release_id))).first()
            if rel is None:
                continue
            if action == "pause" and rel.phase in IN_FLIGHT:
                await releases.act(tx, item.app, "pause", actor)
                touched.append({"app": item.app, "release": release_id, "action": "pause"})
            elif action == "resume" and rel.phase == "Paused":
                await releases.act(tx, item.app, "resume", actor)
                touched.append({"app": item.app, "release": release_id, "action": "resume"})
            elif (action == "resume" and not rolling_back and release_id == item.release_id
                  and rel.phase in ("Failed", "RolledBack")):
                # The app's release ended without reaching its target: resuming releases it again.
                await tx.conn.execute(update(order_items).where(order_items.c.order_name == name,
                                                                order_items.c.app == item.app).values(release_id=None))
                touched.append({"app": item.app, "release": release_id, "action": "release again"})
    return touched


# --- reading -------------------------------------------------------------------------------------------
async def _items(conn: AsyncConnection, name: str) -> list[Any]:
    return list((await conn.execute(select(order_items).where(order_items.c.order_name == name))).all())


async def _release(conn: AsyncConnection, release_id: int | None) -> Any:
    if release_id is None:
        return None
    return (await conn.execute(select(release_rows).where(release_rows.c.id == release_id))).first()


def _release_summary(rel: Any, role: str) -> dict[str, Any]:
    return {"id": rel.id, "role": role, "phase": rel.phase, "fromRevision": rel.from_revision,
            "toRevision": rel.to_revision, "completedGroups": rel.completed_groups, "groups": len(rel.plan),
            "reason": rel.reason, "waiting": rel.waiting, "startedAt": utc(rel.created_at),
            "finishedAt": utc(rel.finished_at),
            "durationSeconds": round(rel.finished_at - rel.created_at, 1) if rel.finished_at else None}


def summary(row: Any) -> dict[str, Any]:
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "ReleaseOrder", "metadata": {"name": row.name},
            "spec": row.spec,
            "status": {"phase": row.phase, "rollingBack": row.rolling_back, "emergency": row.emergency,
                       "reason": row.reason, "waiting": row.waiting, "author": row.author, "startedBy": row.started_by,
                       "digest": row.digest, "createdAt": utc(row.created_at), "startedAt": utc(row.started_at),
                       "finishedAt": utc(row.finished_at),
                       "durationSeconds": round(row.finished_at - row.started_at, 1)
                       if row.finished_at and row.started_at else None}}


async def status(conn: AsyncConnection, name: str) -> dict[str, Any]:
    row = await get_order(conn, name)
    out = summary(row)
    after = {r["app"]: r.get("after", []) for r in row.spec["releases"]}
    items = []
    for item in await _items(conn, name):
        rel, undo = await _release(conn, item.release_id), await _release(conn, item.undo_release_id)
        items.append({"app": item.app, "after": after.get(item.app, []), "toRevision": item.to_revision,
                      "fromRevision": item.from_revision, "unchanged": item.unchanged,
                      "release": _release_summary(rel, "forward") if rel is not None else None,
                      "undo": _release_summary(undo, "back") if undo is not None else None})
    order_of = {r["app"]: k for k, r in enumerate(row.spec["releases"])}
    out["status"]["apps"] = sorted(items, key=lambda i: order_of.get(i["app"], 0))
    approvals = (await conn.execute(select(order_approvals).where(order_approvals.c.order_name == name)
                                    .order_by(order_approvals.c.id))).all()
    out["status"]["approvals"] = [_approval(a, row.digest) for a in approvals]
    out["status"]["approvalsRequired"] = row.spec["approvals"]
    out["status"]["events"] = await _events(conn, name)
    return out


def _approval(a: Any, current: str) -> dict[str, Any]:
    return {"user": a.user, "decision": a.decision, "emergency": a.emergency, "comment": a.comment, "at": utc(a.ts),
            "digest": a.digest, "valid": not a.voided and a.digest == current}


async def _events(conn: AsyncConnection, name: str) -> list[dict[str, Any]]:
    rows = (await conn.execute(select(order_events).where(order_events.c.order_name == name)
                               .order_by(order_events.c.id))).all()
    return [{"at": utc(e.ts), "actor": e.actor, "action": e.action, "phase": e.phase, "detail": e.detail} for e in rows]


async def list_orders(conn: AsyncConnection, *, phase: str | None = None, app: str | None = None,
                      author: str | None = None, since: float | None = None, until: float | None = None) -> list[Any]:
    query = select(orders).order_by(orders.c.created_at)
    if phase is not None:
        query = query.where(orders.c.phase == phase)
    if author is not None:
        query = query.where(orders.c.author == author)
    if since is not None:
        query = query.where(orders.c.created_at >= since)
    if until is not None:
        query = query.where(orders.c.created_at < until)
    rows = (await conn.execute(query)).all()
    return [r for r in rows if app is None or app in order_apps(r.spec)]


def order_stats(rows: list[Any]) -> dict[str, Any]:
    s = stats(OrderOutcome(r.phase, r.started_at, r.finished_at) for r in rows)
    return {"orders": len(rows), "byPhase": s.by_phase, "finished": s.finished, "successRate": s.success_rate,
            "rollbackRate": s.rollback_rate, "medianDurationSeconds": s.median_duration_seconds}


# --- the evidence ----------------------------------------------------------------------------------------
async def report(conn: AsyncConnection, name: str) -> dict[str, Any]:
    """Everything an auditor asks about one order, with the audit records that cover it and the chain head."""
    current = await status(conn, name)
    release_ids: list[int] = []
    for item in await _items(conn, name):
        release_ids.extend(item.releases)
    apps_out = []
    for entry in current["status"]["apps"]:
        before = entry["fromRevision"]
        if before is None:
            app_row = (await conn.execute(select(apps.c.deployed_revision).where(apps.c.name == entry["app"]))).first()
            before = app_row.deployed_revision if app_row is not None else None
        entry["diff"] = await _diff(conn, entry["app"], before, entry["toRevision"])
        entry["diffAgainstRevision"] = before
        apps_out.append(entry)
    undo_ids = {a["undo"]["id"] for a in apps_out if a["undo"]}
    ran = []
    for release_id in sorted(release_ids):
        rel = await _release(conn, release_id)
        if rel is None:
            continue
        summary_ = _release_summary(rel, "back" if rel.id in undo_ids else "forward")
        summary_["app"] = rel.app
        summary_["createdBy"] = rel.created_by
        summary_["events"] = [{"at": utc(e.pop("ts")), **e} for e in await releases.event_log(conn, rel.id)]
        ran.append(summary_)
    app_resources = [f"AppService/{a}" for a in order_apps(current["spec"])]
    rows = (await conn.execute(select(audit).where(or_(audit.c.resource == resource(name),
                                                       audit.c.resource.in_(app_resources)))
                               .order_by(audit.c.seq))).all()
    ids = set(release_ids)
    covered = [r for r in rows if r.resource == resource(name) or (isinstance(r.detail, dict)
                                                                  and r.detail.get("release") in ids)]
    count, breaks, head_hash = await audit_log.verify_all(conn)
    head = (await conn.execute(select(audit.c.seq).order_by(audit.c.seq.desc()).limit(1))).first()
    body = {"order": {k: current[k] for k in ("metadata", "spec")} | {"status": {
                k: v for k, v in current["status"].items() if k not in ("apps", "approvals", "events")}},
            "apps": apps_out, "approvals": current["status"]["approvals"], "transitions": current["status"]["events"],
            "releases": ran,
            "audit": {"records": [{"seq": r.seq, "ts": r.ts, "actor": r.actor, "action": r.action,
                                   "resource": r.resource, "prevHash": r.prev_hash, "hash": r.hash} for r in covered],
                      "chainHead": {"seq": head.seq if head is not None else 0, "hash": head_hash},
                      "chainVerified": not breaks, "chainRecords": count}}
    body["digest"] = digest({k: v for k, v in body.items() if k != "audit"} | {"audit": body["audit"]["records"]})
    return body


async def _diff(conn: AsyncConnection, app: str, before: int | None, after: int) -> list[dict[str, Any]]:
    rows = {r.number: r.template for r in (await conn.execute(select(revisions).where(
        revisions.c.app == app, revisions.c.number.in_([n for n in (before, after) if n is not None])))).all()}
    old, new = rows.get(before) if before is not None else None, rows.get(after)
    return [{"path": p, "before": b, "after": a} for p, b, a in template_diff(old or {}, new or {})]


def render_markdown(r: dict[str, Any]) -> str:
    o = r["order"]
    st, spec = o["status"], o["spec"]
    lines = [f"# Release order {o['metadata']['name']}: {spec['title']}", ""]
    lines += [f"- Ticket: {spec.get('ticket') or '-'}", f"- Reason: {spec.get('reason') or '-'}",
              f"- Author: {st['author']}", f"- Phase: **{st['phase']}**" + (" — **EMERGENCY**" if st["emergency"] else ""),
              f"- Created: {st['createdAt']}; started: {st['startedAt'] or '-'} by {st['startedBy'] or '-'}; "
              f"finished: {st['finishedAt'] or '-'}; duration: {st['durationSeconds'] if st['durationSeconds'] is not None else '-'} s",
              f"- Approved content digest: `{st['digest']}`", f"- Report digest: `{r['digest']}`", ""]
    lines += ["## Applications", "", "| app | after | revision | outcome |", "|---|---|---|---|"]
    for a in r["apps"]:
        rel = a["release"]
        outcome = "unchanged (already at target)" if a["unchanged"] else (rel["phase"] if rel else "not started")
        if a["undo"]:
            outcome += f"; taken back: {a['undo']['phase']}"
        lines.append(f"| {a['app']} | {', '.join(a['after']) or '-'} | {a['diffAgainstRevision']} → {a['toRevision']} "
                     f"| {outcome} |")
    for a in r["apps"]:
        lines += ["", f"### {a['app']}: revision {a['diffAgainstRevision']} → {a['toRevision']}", ""]
        lines += [f"- `{d['path']}`: `{d['before']}` → `{d['after']}`" for d in a["diff"]] or ["- (no template change)"]
    lines += ["", "## Approvals", "", "| user | decision | emergency | at | comment | valid |", "|---|---|---|---|---|---|"]
    lines += [f"| {a['user']} | {a['decision']} | {'yes' if a['emergency'] else ''} | {a['at']} | {a['comment']} | "
              f"{'yes' if a['valid'] else 'voided'} |" for a in r["approvals"]]
    lines += ["", "## Transitions", "", "| at | actor | action | phase |", "|---|---|---|---|"]
    lines += [f"| {e['at']} | {e['actor']} | {e['action']} | {e['phase']} |" for e in r["transitions"]]
    lines += ["", "## Releases", "", "| release | app | revision | outcome | started | duration (s) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {x['id']} | {x['app']} | {x['fromRevision']} → {x['toRevision']} | {x['phase']} | {x['startedAt']} | "
              f"{x['durationSeconds'] if x['durationSeconds'] is not None else '-'} |" for x in r["releases"]]
    au = r["audit"]
    lines += ["", "## Audit chain", "",
              f"Chain head at report time: seq {au['chainHead']['seq']}, `{au['chainHead']['hash']}`; "
              f"chain {'verified' if au['chainVerified'] else 'BROKEN'} over {au['chainRecords']} records. "
              "Check: `ballast audit verify --report REPORT.json`.", "", "| seq | at | actor | action | hash |",
              "|---|---|---|---|---|"]
    lines += [f"| {x['seq']} | {x['ts'][:19]} | {x['actor']} | {x['action']} | `{x['hash']}` |" for x in au["records"]]
    return "\n".join(lines) + "\n"
