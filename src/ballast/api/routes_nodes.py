"""Routes node agents use (register, report, long-poll assignments) and node reads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field

from ballast.api import objects
from ballast.api.deps import (Name, audited_write, one, principal, require, require_self, require_topology_read,
                              store_of, telemetry_write)
from ballast.core.authz import Action
from ballast.core.identity import NODE
from ballast.core.manifests import NAME_PATTERN
from ballast.services import evacuation, outbound, registry, topology
from ballast.services.access import Principal
from ballast.wire.message import StrictMessage
from ballast.wire.reports import NodeRegistration, StatusReport

router = APIRouter()
NodeName = Path(pattern=NAME_PATTERN, max_length=63)


async def _nodes(request: Request, who: Principal, name: str | None = None) -> list[dict[str, Any]]:
    require_topology_read(who)
    store = store_of(request)
    async with store.read() as conn:
        return [objects.node(n) for n in await topology.list_nodes(conn, store.clock(), name, store.node_grace_seconds)]


@router.get("/nodes", tags=["nodes"])
async def list_nodes(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"items": await _nodes(request, who)}


@router.get("/nodes/{name}", tags=["nodes"])
async def get_node(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return one(await _nodes(request, who, name), f"node {name!r} not found")


@router.put("/nodes/{name}", tags=["nodes"])
async def register_node(body: NodeRegistration, request: Request, name: str = NodeName,
                        who: Principal = Depends(principal)) -> dict[str, Any]:
    require_self(who, NODE, name)
    outbound.refuse_telemetry_address(request.app.state.outbound, body.ip, body.metrics_address)

    return await audited_write(request, lambda tx: registry.register_node(tx, name, body, who.user))


@router.post("/nodes/{name}/status", tags=["nodes"])
async def report_status(body: StatusReport, request: Request, name: str = NodeName,
                        who: Principal = Depends(principal)) -> dict[str, Any]:
    require_self(who, NODE, name)
    reports = body.instances

    recorded = await telemetry_write(request, lambda tx: registry.report_status(tx, name, reports, body.conditions,
                                                                                 body.sequence))
    return {"ok": True, "recorded": recorded, "serverTime": store_of(request).clock()}   # the agent estimates its clock's offset from it


@router.get("/nodes/{name}/assignments", tags=["nodes"])
async def assignments(request: Request, name: str = NodeName, known: str | None = Query(None, max_length=64),
                      timeout: float = Query(0.0, ge=0, le=60), who: Principal = Depends(principal)) -> dict[str, Any]:
    require_self(who, NODE, name)
    return await registry.assignments(store_of(request), name, known, timeout)


@router.delete("/nodes/{name}", tags=["nodes"])
async def delete_node(request: Request, name: str = NodeName, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.MANAGE_CELLS)

    await audited_write(request, lambda tx: registry.delete_node(tx, name, who.user))
    return {"deleted": f"Node/{name}"}


@router.post("/nodes/{name}/drain", tags=["nodes"])
async def drain_node(request: Request, name: str = NodeName, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Cordon the node and move its instances to other nodes of its cell, each drained before it stops."""
    require(who, Action.MANAGE_CELLS)
    return await audited_write(request, lambda tx: evacuation.drain(tx, name, who.user))


@router.post("/nodes/{name}/uncordon", tags=["nodes"])
async def uncordon_node(request: Request, name: str = NodeName, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.MANAGE_CELLS)
    return await audited_write(request, lambda tx: evacuation.uncordon(tx, name, who.user))


class MoveRequest(StrictMessage):
    node: str | None = Field(None, pattern=NAME_PATTERN, max_length=63,
                             description="the ready node of its cell to move to (default: placement chooses)")


@router.post("/instances/{instance_id}/move", tags=["nodes"])
async def move_instance(body: MoveRequest, request: Request, instance_id: str = Path(max_length=80),
                        who: Principal = Depends(principal)) -> dict[str, Any]:
    """Move an instance off a NotReady node to a ready node of its cell, without its data (ordered instances wait
    for their node otherwise)."""
    require(who, Action.MANAGE_CELLS)
    return await audited_write(request, lambda tx: evacuation.move_instance(tx, instance_id, body.node, who.user))
