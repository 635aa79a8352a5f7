"""The guard on direct changes of an app: an active release order or a closed change window refuses them.

Direct changes are what people do through the API — apply an AppService, delete it, start a release, pause,
resume or roll one back. The order engine and the scheduler act through `services.releases` directly and are
not guarded here: an order's own releases are the approved change. The decision is core/change_control.py's;
this module reads what it needs inside the caller's transaction, so what was checked is what gets written.
"""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.change_control import DELETION, RELEASE, ActiveOrder, direct_change_refusal
from ballast.core.orders import check_windows
from ballast.errors import Conflict
from ballast.services import orders, registry, releases
from ballast.store.engine import Tx
from ballast.store.schema import order_items
from ballast.store.schema import releases as release_rows


async def refusal(conn: AsyncConnection, app: str, parts: Sequence[str], now: float) -> str | None:
    """Why a direct change of `app` doing `parts` is refused now, or None."""
    if not parts:
        return None
    order = await orders.active_order_for(conn, app)
    active = ActiveOrder(order.name, order.phase) if order is not None else None
    return direct_change_refusal(app, parts, active, check_windows(await orders.windows(conn), [app], now))


async def guard(conn: AsyncConnection, app: str, parts: Sequence[str], now: float) -> None:
    why = await refusal(conn, app, parts, now)
    if why is not None:
        raise Conflict(why)


async def start_release(tx: Tx, app: str, to_revision: int | None, overrides: dict[str, Any],
                        actor: str) -> dict[str, Any]:
    """A person's `release start`: refused under an active order or outside a window covering the app."""
    await guard(tx.conn, app, (RELEASE,), tx.now)
    return await releases.start(tx, app, to_revision, overrides, actor)


async def delete_app(tx: Tx, app: str, actor: str) -> int:
    """A person's deletion of an app: refused under an active order or outside a window covering the app."""
    await guard(tx.conn, app, (DELETION,), tx.now)
    return await registry.delete_app(tx, app, actor)


async def act_on_release(tx: Tx, app: str, action: str, actor: str, **options: Any) -> dict[str, Any]:
    """A person's pause | resume | rollback of the app's newest release: refused when that release is an order's
    (the order steers it; moving it alone would leave the order showing another state). A window never refuses
    these: stopping or undoing a change is always allowed, and a resume only continues one already started."""
    newest = (await tx.conn.execute(select(release_rows.c.id).where(release_rows.c.app == app)
                                    .order_by(release_rows.c.id.desc()).limit(1))).first()
    if newest is not None:
        owner = await _order_of_release(tx.conn, app, int(newest.id))
        if owner is not None:
            raise Conflict(f"release {newest.id} of {app!r} belongs to release order {owner.name!r} ({owner.phase}); "
                           f"steer it with `ballast order {action} {owner.name}`")
    moved = await releases.act(tx, app, action, actor, **options)
    if moved.get("rollbackOf") is not None:   # a rollback after success is a new release: the order's to start
        order = await orders.active_order_for(tx.conn, app)
        if order is not None:  # raised inside the transaction: the new release is not kept
            raise Conflict(f"app {app!r} belongs to release order {order.name!r} ({order.phase}); its releases "
                           f"are the order's: steer them with `ballast order ...`")
    return moved


async def _order_of_release(conn: AsyncConnection, app: str, release_id: int) -> Any:
    for item in (await conn.execute(select(order_items).where(order_items.c.app == app))).all():
        if release_id in (item.releases or []) or release_id in (item.release_id, item.undo_release_id):
            return await orders.get_order(conn, item.order_name)
    return None
