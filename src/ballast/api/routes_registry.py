"""Routes of the service registry: snapshots and acknowledgements for traffic components,
gateways, and endpoint reads for people."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy import select

from ballast.api import objects
from ballast.api.deps import audited_write, exempt_from_audit, principal, require, require_topology_read, retrying, store_of
from ballast.core.authz import Action
from ballast.core.endpoints import GATEWAY, MESH
from ballast.core.manifests import NAME_PATTERN
from ballast.errors import NotFound
from ballast.services import endpoints as registry
from ballast.services.access import Principal
from ballast.store.schema import apps
from ballast.wire.reports import Acknowledgement, GatewayRegistration

router = APIRouter()
ComponentName = Path(pattern=NAME_PATTERN, max_length=63)


@router.get("/registry", tags=["registry"])
async def registry_snapshot(request: Request, known: int | None = Query(None, ge=0, le=2**62),
                            timeout: float = Query(0.0, ge=0, le=60), who: Principal = Depends(principal)) -> dict[str, Any]:
    """Every service with its routes and endpoints; long-polls while the generation equals `known`."""
    require(who, Action.NODE)
    return await registry.snapshot(store_of(request), known, timeout)


async def _ack(request: Request, kind: str, name: str, body: Acknowledgement) -> dict[str, Any]:
    exempt_from_audit(request)

    async def attempt() -> dict[str, Any]:
        async with store_of(request).write() as tx:
            return await registry.acknowledge(tx, kind, name, body.generation, body.applied_hash, body.error)

    return await retrying(attempt)


@router.post("/nodes/{name}/ack", tags=["registry"])
async def ack_mesh(body: Acknowledgement, request: Request, name: str = ComponentName,
                   who: Principal = Depends(principal)) -> dict[str, Any]:
    """The node's agent has applied the registry up to `generation` in every sidecar it runs."""
    require(who, Action.NODE)
    return await _ack(request, MESH, name, body)


@router.put("/gateways/{name}", tags=["registry"])
async def register_gateway(body: GatewayRegistration, request: Request, name: str = ComponentName,
                           who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.NODE)

    return await audited_write(request, lambda tx: registry.register_gateway(tx, name, body.address, who.user,
                                                                            body.metrics_address))


@router.post("/gateways/{name}/ack", tags=["registry"])
async def ack_gateway(body: Acknowledgement, request: Request, name: str = ComponentName,
                      who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.NODE)
    return await _ack(request, GATEWAY, name, body)


@router.get("/gateways", tags=["registry"])
async def list_gateways(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require_topology_read(who)
    store = store_of(request)
    async with store.read() as conn:
        rows = await registry.list_components(conn, GATEWAY)
        current = await registry.generation(conn)
    return {"items": [objects.gateway(r, current, store.clock()) for r in rows]}


@router.get("/gateways/{name}", tags=["registry"])
async def get_gateway(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    for item in (await list_gateways(request, who))["items"]:
        if item["metadata"]["name"] == name:
            return item  # type: ignore[no-any-return]
    raise NotFound(f"gateway {name!r} not found")


@router.delete("/gateways/{name}", tags=["registry"])
async def delete_gateway(request: Request, name: str = ComponentName, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Forget a gateway: releases stop waiting for its acknowledgements."""
    require(who, Action.MANAGE_CELLS)

    await audited_write(request, lambda tx: registry.delete_component(tx, GATEWAY, name, who.user))
    return {"deleted": f"Gateway/{name}"}


@router.get("/apps/{app}/endpoints", tags=["registry"])
async def list_endpoints(app: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Each endpoint of the service: its state, and which components have acknowledged it."""
    require(who, Action.READ, app)
    async with store_of(request).read() as conn:
        app_row = (await conn.execute(select(apps.c.name).where(apps.c.name == app))).first()
        rows = await registry.list_endpoints(conn, app)
        acked = await registry.acknowledged(conn)
    if app_row is None and not rows:
        raise NotFound(f"app {app!r} not found")
    return {"items": [objects.endpoint(r, acked) for r in rows]}
