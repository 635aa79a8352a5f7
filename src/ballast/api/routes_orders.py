"""Routes for release orders and change windows: approve / reject, start, pause / resume / rollback, read, report."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import AfterValidator, Field

from ballast.api.deps import Name, RequestBody, audited_write, principal, require, store_of
from ballast.core.authz import Action
from ballast.core.manifests import StoredText
from ballast.core.orders import OrderPhase
from ballast.errors import FieldProblem, InvalidInput
from ballast.services import orders
from ballast.services.access import Principal
from ballast.wire.text import require_storable

router = APIRouter()


class Decision(RequestBody):
    comment: StoredText = Field("", max_length=4000)
    emergency: bool = False


class Rejection(Decision):
    comment: Annotated[str, AfterValidator(require_storable)] = Field(
        pattern=r"^[^\x00]*[^\s\x00][^\x00]*$", max_length=4000, description="why: a reason for the author")


class StartOrder(RequestBody):
    emergency: bool = False


class OrderAction(RequestBody):
    expectPhase: str | None = Field(None, max_length=16, description="compare-and-set: act only in this phase")


# Either an ISO 8601 date or a date-time (fromisoformat's reading of both: without an offset, UTC).
MOMENT = {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]}


async def _read_order(request: Request, who: Principal, name: str) -> Any:
    async with store_of(request).read() as conn:
        row = await orders.get_order(conn, name)
    for app in orders.order_apps(row.spec):
        require(who, Action.READ, app)
    return row


@router.get("/orders", tags=["orders"])
async def list_orders(request: Request, state: OrderPhase | None = Query(None),
                      app: str | None = Query(None, max_length=63), author: str | None = Query(None, max_length=63),
                      since: str | None = Query(None, max_length=40, json_schema_extra=MOMENT),
                      until: str | None = Query(None, max_length=40, json_schema_extra=MOMENT),
                      who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ)
    async with store_of(request).read() as conn:
        rows = await orders.list_orders(conn, phase=state.value if state else None, app=app, author=author, since=_moment("since", since),
                                        until=_moment("until", until))
    return {"items": [orders.summary(r) for r in rows], "stats": orders.order_stats(rows)}


def _moment(field: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput("invalid filter", problems=[FieldProblem(field, text, "an ISO 8601 date or date-time, "
                                                                                "e.g. 2026-12-01 or 2026-12-01T08:00+01:00")]) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@router.get("/orders/{name}", tags=["orders"])
async def order_status(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    await _read_order(request, who, name)
    async with store_of(request).read() as conn:
        return await orders.status(conn, name)


@router.get("/orders/{name}/report", tags=["orders"])
async def order_report(name: Name, request: Request, format: Literal["json", "markdown"] = "json",
                       who: Principal = Depends(principal)) -> Any:
    await _read_order(request, who, name)
    async with store_of(request).read() as conn:
        body = await orders.report(conn, name)
    if format == "markdown":
        return PlainTextResponse(orders.render_markdown(body), media_type="text/markdown")
    return body


async def _decide(name: str, request: Request, who: Principal, *, approve: bool, body: Decision) -> dict[str, Any]:
    await _read_order(request, who, name)
    return await audited_write(request, lambda tx: orders.decide_approval(
        tx, name, who, approve=approve, emergency=body.emergency, comment=body.comment))


@router.post("/orders/{name}/approve", tags=["orders"])
async def approve(name: Name, request: Request, body: Decision = Decision(),
                  who: Principal = Depends(principal)) -> dict[str, Any]:
    return await _decide(name, request, who, approve=True, body=body)


@router.post("/orders/{name}/reject", tags=["orders"])
async def reject(name: Name, body: Rejection, request: Request,
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    return await _decide(name, request, who, approve=False, body=body)


async def _may_change(request: Request, who: Principal, name: str) -> None:
    row = await _read_order(request, who, name)
    for app in orders.order_apps(row.spec):
        require(who, Action.APPLY_APP, app)


@router.post("/orders/{name}/start", tags=["orders"])
async def start(name: Name, request: Request, body: StartOrder = StartOrder(),
                who: Principal = Depends(principal)) -> dict[str, Any]:
    await _may_change(request, who, name)
    return await audited_write(request, lambda tx: orders.start(tx, name, who, emergency=body.emergency))


async def _act(name: str, action: str, request: Request, who: Principal, body: OrderAction) -> dict[str, Any]:
    await _may_change(request, who, name)
    return await audited_write(request, lambda tx: orders.act(tx, name, action, who.user, body.expectPhase))


@router.post("/orders/{name}/pause", tags=["orders"])
async def pause(name: Name, request: Request, body: OrderAction = OrderAction(),
                who: Principal = Depends(principal)) -> dict[str, Any]:
    return await _act(name, "pause", request, who, body)


@router.post("/orders/{name}/resume", tags=["orders"])
async def resume(name: Name, request: Request, body: OrderAction = OrderAction(),
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    return await _act(name, "resume", request, who, body)


@router.post("/orders/{name}/rollback", tags=["orders"])
async def rollback(name: Name, request: Request, body: OrderAction = OrderAction(),
                   who: Principal = Depends(principal)) -> dict[str, Any]:
    return await _act(name, "rollback", request, who, body)


@router.get("/changewindows", tags=["orders"])
async def list_windows(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ)
    store = store_of(request)
    async with store.read() as conn:
        return {"items": await orders.list_windows(conn, store.clock())}


@router.delete("/changewindows/{name}", tags=["orders"])
async def delete_window(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.MANAGE_WINDOWS)
    await audited_write(request, lambda tx: orders.delete_window(tx, name, who.user))
    return {"deleted": name}
