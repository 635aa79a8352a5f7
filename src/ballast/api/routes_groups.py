"""Routes for isolation groups (business units): read and delete them; `POST /v1/apply` creates and changes them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from ballast.api.deps import Name, audited_write, principal, require, store_of
from ballast.core.authz import Action, allowed
from ballast.errors import NotFound
from ballast.services import isolation_groups
from ballast.services.access import Principal
from ballast.store.engine import Tx

router = APIRouter()


def _require_reader(who: Principal) -> None:
    """Some app's reader at least (a scoped one sees the groups of its apps); components read no groups."""
    if not any(allowed((b,), Action.READ, b.apps[0] if b.apps else None) for b in who.bindings):
        require(who, Action.READ)


async def _list(request: Request, who: Principal, app: str | None) -> list[dict[str, Any]]:
    _require_reader(who)
    async with store_of(request).read() as conn:
        items = await isolation_groups.listing(conn, app)
    return [i for i in items if allowed(who.bindings, Action.READ, i["app"])]


@router.get("/isolationgroups", tags=["groups"])
async def list_groups(request: Request, who: Principal = Depends(principal),
                      app: Name | None = Query(None, description="only this app's groups")) -> dict[str, Any]:
    """Every isolation group with its instances and ready endpoints per cell against what it wants."""
    return {"items": await _list(request, who, app)}


@router.get("/isolationgroups/{name}", tags=["groups"])
async def get_group(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    found = [i for i in await _list(request, who, None) if i["name"] == name]
    if not found:
        raise NotFound(f"IsolationGroup {name!r} not found")
    return found[0]


@router.delete("/isolationgroups/{name}", tags=["groups"])
async def delete_group(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Retire the group's instances (drained first) and forget the group; rules naming it fall back."""
    result: dict[str, Any] = {}

    async def change(tx: Tx) -> None:
        require(who, Action.APPLY_APP, await isolation_groups.stored_app(tx.conn, name))
        result.update(await isolation_groups.delete_group(tx, name, who.user))
    await audited_write(request, change)
    return {"deleted": f"IsolationGroup/{name}", **result}
