"""Routes of the service registry: snapshots and acknowledgements for traffic components,
gateways, and endpoint reads for people."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from ballast.api import objects
from ballast.api.deps import (AppName, Name, audited_write, one, principal, require, require_self, require_topology_read,
                              store_of, telemetry_write)
from ballast.core.authz import Action
from ballast.core.endpoints import GATEWAY, MESH
from ballast.core import identity, paging
from ballast.core.manifests import NAME_PATTERN
from ballast.core.outbound import gateway_home
from ballast.services import endpoints as registry
from ballast.services import outbound
from ballast.services.access import Principal
from ballast.wire.reports import Acknowledgement, GatewayRegistration
from ballast.wire.text import COUNTER_MAX

log = logging.getLogger("ballast.registry")
router = APIRouter()
ComponentName = Path(pattern=NAME_PATTERN, max_length=63)


@router.get("/registry", tags=["registry"])
async def registry_snapshot(request: Request, known: int | None = Query(None, ge=0, le=COUNTER_MAX),
                            timeout: float = Query(0.0, ge=0, le=60), who: Principal = Depends(principal)) -> Response:
    """Every service with its routes and endpoints; long-polls while the generation equals `known`."""
    require(who, Action.READ_REGISTRY)
    generation, body = await registry.snapshot_body(store_of(request), known, timeout)
    if generation != known:
        # When a long-poll is answered with a new generation (its JSON encoded once for every component): the
        # control plane's share of propagation, measured by benchmarks/propagation.py.
        log.info("registry-answer to=%s known=%s generation=%s at=%.6f", who.user, known, generation, time.time())
    return Response(content=body, media_type="application/json")


async def _ack(request: Request, who: Principal, kind: str, name: str, body: Acknowledgement) -> dict[str, Any]:
    return await telemetry_write(request, lambda tx: registry.acknowledge(tx, kind, name, body.generation,
                                                                          body.applied_hash, body.error, who.token_id))


@router.post("/nodes/{name}/ack", tags=["registry"])
async def ack_mesh(body: Acknowledgement, request: Request, name: str = ComponentName,
                   who: Principal = Depends(principal)) -> dict[str, Any]:
    """The node's agent has applied the registry up to `generation` in every sidecar it runs."""
    require_self(who, identity.NODE, name)
    return await _ack(request, who, MESH, name, body)


@router.put("/gateways/{name}", tags=["registry"])
async def register_gateway(body: GatewayRegistration, request: Request, name: str = ComponentName,
                           who: Principal = Depends(principal)) -> dict[str, Any]:
    require_self(who, identity.GATEWAY, name)
    outbound.refuse_telemetry_address(request.app.state.outbound, gateway_home(body.address, body.metrics_address),
                                      body.metrics_address)

    return await audited_write(request, lambda tx: registry.register_gateway(tx, name, body.address, who.user,
                                                                            body.metrics_address))


@router.post("/gateways/{name}/ack", tags=["registry"])
async def ack_gateway(body: Acknowledgement, request: Request, name: str = ComponentName,
                      who: Principal = Depends(principal)) -> dict[str, Any]:
    require_self(who, identity.GATEWAY, name)
    return await _ack(request, who, GATEWAY, name, body)


async def _gateways(request: Request, who: Principal, name: str | None = None) -> list[dict[str, Any]]:
    require_topology_read(who)
    store = store_of(request)
    async with store.read() as conn:
        return [objects.gateway(g) for g in await registry.list_gateways(conn, store.clock(), name)]


@router.get("/gateways", tags=["registry"])
async def list_gateways(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"items": await _gateways(request, who)}


@router.get("/gateways/{name}", tags=["registry"])
async def get_gateway(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return one(await _gateways(request, who, name), f"gateway {name!r} not found")


@router.delete("/gateways/{name}", tags=["registry"])
async def delete_gateway(request: Request, name: str = ComponentName, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Forget a gateway: releases stop waiting for its acknowledgements."""
    require(who, Action.MANAGE_CELLS)

    await audited_write(request, lambda tx: registry.delete_component(tx, GATEWAY, name, who.user))
    return {"deleted": f"Gateway/{name}"}


@router.get("/apps/{app}/endpoints", tags=["registry"])
async def list_endpoints(app: AppName, request: Request,
                         limit: int | None = Query(None, ge=1, le=5000, description="at most this many (absent: "
                                                   "all); metadata.continue then names the next page"),
                         continue_: str | None = Query(None, alias="continue", max_length=paging.MAX_TOKEN,
                                                       description="the previous page's metadata.continue"),
                         who: Principal = Depends(principal)) -> dict[str, Any]:
    """Each endpoint of the service, by cell and id: its state, and which components have acknowledged it."""
    require(who, Action.READ, app)
    filters = {"app": app}
    after = paging.decode(continue_, registry.ENDPOINTS_LIST, filters, registry.ENDPOINT_KEY_SHAPE) if continue_ else None
    async with store_of(request).read() as conn:
        page = await registry.list_endpoints(conn, app, after=after, limit=limit)
        acked = await registry.acknowledged(conn)
        credentials = await registry.acknowledging_credentials(conn)
    token = paging.encode(registry.ENDPOINTS_LIST, page.next_after, filters) if page.next_after else None
    return {"items": [objects.endpoint(e, acked, credentials) for e in page.items],
            "metadata": objects.list_metadata(None, token)}
