"""Routes node agents use (register, report, long-poll assignments) and node reads."""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ballast.api import objects
from ballast.api.deps import audited_write, one, principal, require, require_topology_read, store_of, telemetry_write
from ballast.core.authz import Action
from ballast.core.manifests import NAME_PATTERN, StoredText, ip_port
from ballast.services import evacuation, registry, topology
from ballast.services.access import Principal

router = APIRouter()
NodeName = Path(pattern=NAME_PATTERN, max_length=63)


class NodeRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cell: str = Field(pattern=NAME_PATTERN)
    ip: str
    cpuMillis: int = Field(gt=0, le=10_000_000)
    memoryBytes: int = Field(gt=0, le=2**50)
    labels: dict[StoredText, StoredText] = Field(default_factory=dict)
    agentVersion: StoredText = Field("", max_length=64)
    metricsAddress: str | None = Field(None, max_length=128, description="IP:PORT of the agent's telemetry "
                                                                           "endpoint (/metrics, request metrics)")

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("metricsAddress")
    @classmethod
    def _metrics_address(cls, value: str | None) -> str | None:
        return None if value is None else ip_port(value)


class DrainReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: int = Field(ge=0, le=2**31 - 1)
    waitedSeconds: float = Field(ge=0, le=86_400)
    inflightAtStop: int = Field(ge=0, le=2**31 - 1)
    timedOut: bool
    at: float = Field(ge=0, le=2**40)


class InstanceReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StoredText = Field(max_length=80)
    phase: str
    ready: bool
    pid: int | None = Field(None, ge=1, le=2**31 - 1)  # the columns are 32-bit integers
    port: int | None = Field(None, ge=1, le=65535)
    restarts: int = Field(ge=0, le=2**31 - 1)
    message: StoredText = Field("", max_length=2000)
    revision: int | None = Field(None, ge=1, description="the revision the running process was started with")
    meshPort: int | None = Field(None, ge=1, le=65535, description="the sidecar's outbound listener")
    drain: DrainReport | None = Field(None, description="the last wait for in-flight requests before a stop")

    @field_validator("phase")
    @classmethod
    def _phase(cls, value: str) -> str:
        if value not in registry.PHASES:
            raise ValueError("one of " + ", ".join(sorted(registry.PHASES)))
        return value


class StatusReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[InstanceReport] = Field(default_factory=list, max_length=5000)


async def _nodes(request: Request, who: Principal, name: str | None = None) -> list[dict[str, Any]]:
    require_topology_read(who)
    store = store_of(request)
    async with store.read() as conn:
        return [objects.node(n) for n in await topology.list_nodes(conn, store.clock(), name)]


@router.get("/nodes", tags=["nodes"])
async def list_nodes(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"items": await _nodes(request, who)}


@router.get("/nodes/{name}", tags=["nodes"])
async def get_node(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return one(await _nodes(request, who, name), f"node {name!r} not found")


@router.put("/nodes/{name}", tags=["nodes"])
async def register_node(body: NodeRegistration, request: Request, name: str = NodeName,
                        who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.NODE)

    return await audited_write(request, lambda tx: registry.register_node(tx, name, body.model_dump(), who.user))


@router.post("/nodes/{name}/status", tags=["nodes"])
async def report_status(body: StatusReport, request: Request, name: str = NodeName,
                        who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.NODE)
    reports = [r.model_dump() for r in body.instances]

    await telemetry_write(request, lambda tx: registry.report_status(tx, name, reports))
    return {"ok": True}


@router.get("/nodes/{name}/assignments", tags=["nodes"])
async def assignments(request: Request, name: str = NodeName, known: str | None = Query(None, max_length=64),
                      timeout: float = Query(0.0, ge=0, le=60), who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.NODE)
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
