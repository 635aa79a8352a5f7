"""The order controller: executes the pure `decide()` of core/orders.py for every running order.

Each pass re-reads the order, its apps and their releases, decides, and writes the decision — releases
started, turned round or undone, the order's phase — in one transaction guarded by the order's resource
version, so a crash or a concurrent user action never leaves half a decision: the next pass decides again
from the store (a release is started and recorded on the order together, or neither).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import select, update

from ballast.controllers.loop import run_passes
from ballast.core.orders import ItemView, OrderDecision, OrderPhase, OrderView, ReleaseSeen, decide
from ballast.errors import Conflict, InvalidInput, RetryableConflict
from ballast.services import orders as order_records
from ballast.services import releases as release_records
from ballast.store.engine import EVERYTHING, INTENT, Store, Tx
from ballast.store.schema import apps, order_items, orders, releases

log = logging.getLogger("ballast.orders")
TERMINAL = {OrderPhase.SUCCEEDED, OrderPhase.ROLLED_BACK}


async def reconcile_once(store: Store) -> int:
    async with store.read() as conn:
        rows = (await conn.execute(select(orders).where(orders.c.phase.in_(
            [OrderPhase.RUNNING.value, OrderPhase.ROLLING_BACK.value])).order_by(orders.c.created_at))).all()
    written = 0
    for row in rows:
        try:
            written += await _reconcile(store, row)
        except RetryableConflict:
            continue
    return written


def _seen(rel: Any) -> ReleaseSeen | None:
    return None if rel is None else ReleaseSeen(rel.id, rel.phase, rel.reason, rel.direction == "rollback")


async def _views(conn: Any, row: Any) -> list[ItemView]:
    items = {i.app: i for i in (await conn.execute(select(order_items).where(order_items.c.order_name == row.name))).all()}
    out = []
    for r in row.spec["releases"]:
        item = items[r["app"]]
        app_row = (await conn.execute(select(apps.c.deployed_revision).where(apps.c.name == item.app))).first()
        ids = [i for i in (item.release_id, item.undo_release_id) if i is not None]
        rels = {x.id: x for x in (await conn.execute(select(releases).where(releases.c.id.in_(ids)))).all()} if ids else {}
        active = await release_records.active_release(conn, item.app)
        busy = "" if active is None or active.id in ids else f"release {active.id} ({active.phase}, by {active.created_by})"
        out.append(ItemView(app=item.app, after=tuple(r.get("after", [])), to_revision=item.to_revision,
                            deployed_revision=app_row.deployed_revision if app_row is not None else None,
                            release=_seen(rels.get(item.release_id)), undo=_seen(rels.get(item.undo_release_id)),
                            unchanged=item.unchanged, busy=busy))
    return out


async def _reconcile(store: Store, row: Any) -> int:
    async with store.read() as conn:
        views = await _views(conn, row)
    order = OrderView(row.name, OrderPhase(row.phase), row.rolling_back, int(row.spec.get("maxParallel", 1)))
    decision = decide(order, views)
    quiet = not (decision.start or decision.unchanged or decision.roll_back or decision.undo or decision.phase)
    if quiet and decision.waiting == row.waiting:
        return 0
    async with store.write() as tx:
        tx.only(INTENT)  # releases the order starts or turns round wake the release engine through their intents
        guard = await tx.conn.execute(update(orders).where(orders.c.name == row.name,
                                                           orders.c.resource_version == row.resource_version)
                                      .values(resource_version=tx.rv, updated_at=tx.now, waiting=decision.waiting))
        if guard.rowcount != 1:
            raise RetryableConflict(f"order {row.name!r}")
        await _apply(tx, row, {v.app: v for v in views}, decision)
    return 1


async def _apply(tx: Tx, row: Any, views: dict[str, ItemView], d: OrderDecision) -> None:
    try:
        await _steps(tx, row, views, d)
    except InvalidInput as exc:  # e.g. the app's instances changed shape since the order was approved
        d = OrderDecision(phase=OrderPhase.PAUSED, reason=f"a release could not start: {exc.message}: "
                                                          + "; ".join(p.render() for p in exc.problems))
    await _transition(tx, row, d)


async def _steps(tx: Tx, row: Any, views: dict[str, ItemView], d: OrderDecision) -> None:
    actor = order_records.engine_actor(row.name)
    targets = {r["app"]: r for r in row.spec["releases"]}
    for app in d.unchanged:
        await _item(tx, row.name, app, unchanged=True)
        await order_records.event(tx, row.name, actor, "unchanged", OrderPhase(row.phase),
                                  {"app": app, "revision": views[app].to_revision})
    for app in d.start:
        overrides = targets[app].get("strategy") or {}
        try:
            started = await release_records.start(tx, app, views[app].to_revision, overrides, actor)
        except Conflict as exc:
            log.info("order %s: %s not started yet: %s", row.name, app, exc.message)
            continue
        await _item(tx, row.name, app, release_id=started["id"], from_revision=started["fromRevision"],
                    add_release=started["id"])
        await order_records.event(tx, row.name, actor, "release-started", OrderPhase.RUNNING,
                                  {"app": app, "release": started["id"], "from": started["fromRevision"],
                                   "to": started["toRevision"]})
    for app in d.roll_back:
        try:
            moved = await release_records.act(tx, app, "rollback", actor)
        except Conflict as exc:
            log.info("order %s: rollback of %s deferred: %s", row.name, app, exc.message)
            continue
        await order_records.event(tx, row.name, actor, "release-rollback", OrderPhase.ROLLING_BACK,
                                  {"app": app, "release": moved["id"]})
    for app in d.undo:
        item = views[app]
        rel_from = await _from_revision(tx, row.name, app)
        overrides = targets[app].get("strategy") or {}
        try:
            started = await release_records.start(tx, app, rel_from, overrides, actor)
        except Conflict as exc:
            log.info("order %s: taking %s back not started yet: %s", row.name, app, exc.message)
            continue
        await _item(tx, row.name, app, undo_release_id=started["id"], add_release=started["id"])
        await order_records.event(tx, row.name, actor, "release-back", OrderPhase.ROLLING_BACK,
                                  {"app": app, "release": started["id"], "from": item.to_revision, "to": rel_from})


async def _transition(tx: Tx, row: Any, d: OrderDecision) -> None:
    if d.phase is not None:
        before = await order_records.state_digest(tx.conn, row.name)
        values: dict[str, Any] = {"phase": d.phase.value, "reason": d.reason}
        if d.phase in TERMINAL:
            values["finished_at"] = tx.now
            values["waiting"] = ""
            tx.touch(EVERYTHING)
        await tx.conn.execute(update(orders).where(orders.c.name == row.name).values(**values))
        action = {OrderPhase.SUCCEEDED: "succeeded", OrderPhase.ROLLED_BACK: "rolled-back",
                  OrderPhase.PAUSED: "paused"}.get(d.phase, d.phase.value.lower())
        await order_records.event(tx, row.name, order_records.ENGINE, action, d.phase, {"reason": d.reason})
        await tx.audit(actor=order_records.ENGINE, action=f"order.{action}", resource=order_records.resource(row.name),
                       before=before, after=await order_records.state_digest(tx.conn, row.name),
                       detail={"phase": d.phase.value, "reason": d.reason})


async def _from_revision(tx: Tx, order: str, app: str) -> int:
    item = (await tx.conn.execute(select(order_items.c.from_revision).where(order_items.c.order_name == order,
                                                                            order_items.c.app == app))).one()
    return int(item.from_revision)


async def _item(tx: Tx, order: str, app: str, *, add_release: int | None = None, **values: Any) -> None:
    if add_release is not None:
        current = (await tx.conn.execute(select(order_items.c.releases).where(order_items.c.order_name == order,
                                                                              order_items.c.app == app))).one()
        values["releases"] = [*current.releases, add_release]
    await tx.conn.execute(update(order_items).where(order_items.c.order_name == order, order_items.c.app == app)
                          .values(**values))


async def run(store: Store, stop: asyncio.Event, *, idle_seconds: float = 1.0) -> None:
    await run_passes("orders", reconcile_once, store, stop, idle_seconds=idle_seconds,
                     topics=frozenset({EVERYTHING, INTENT}))

