"""Routes for scheduled tasks: read and delete tasks, manual runs, runs with their shards, and the gateway's
claims and reports of shards.

Tasks are created and changed by `POST /v1/apply` like every declared resource. Who may do what follows the
task's target app: its operators apply, delete and run its tasks, its readers read them; only a gateway's own
credential claims shards for that gateway and reports their outcomes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request

from ballast.api.deps import Name, audited_write, principal, require, require_self, store_of, telemetry_write
from ballast.core import identity
from ballast.core.authz import Action, allowed
from ballast.core.manifests import NAME_PATTERN
from ballast.errors import NotFound
from ballast.services import scheduled_tasks, task_shards
from ballast.services.access import Principal
from ballast.store.engine import Tx
from ballast.wire.tasks import ShardClaim, ShardOutcome
from ballast.wire.text import INT32_MAX

router = APIRouter()
ComponentName = Path(pattern=NAME_PATTERN, max_length=63)


def _may_read(who: Principal, service: str | None) -> bool:
    return service is not None and allowed(who.bindings, Action.READ, service)


@router.get("/scheduledtasks", tags=["tasks"])
async def list_tasks(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Every ScheduledTask the caller may read (a reader of its target app), with its next and last run."""
    if not any(allowed((b,), Action.READ, b.apps[0] if b.apps else None) for b in who.bindings):
        require(who, Action.READ)
    store = store_of(request)
    async with store.read() as conn:
        items = await scheduled_tasks.listing(conn, store.clock())
    return {"items": [i for i in items if _may_read(who, i["spec"]["target"]["service"])]}


@router.get("/scheduledtasks/{name}", tags=["tasks"])
async def get_task(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    store = store_of(request)
    async with store.read() as conn:
        service = await scheduled_tasks.stored_service(conn, name)
        require(who, Action.READ, service)
        return (await scheduled_tasks.listing(conn, store.clock(), name))[0]


@router.delete("/scheduledtasks/{name}", tags=["tasks"])
async def delete_task(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Remove the task; shards no gateway claimed yet are cancelled, claimed ones finish."""
    async def change(tx: Tx) -> None:
        require(who, Action.APPLY_APP, await scheduled_tasks.stored_service(tx.conn, name))
        await scheduled_tasks.delete_task(tx, name, who.user)
    await audited_write(request, change)
    return {"deleted": f"{scheduled_tasks.KIND}/{name}"}


@router.post("/scheduledtasks/{name}/runs", tags=["tasks"])
async def run_now(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """A manual run, now: persisted with all its shards (and audited) before any call is made."""
    async def change(tx: Tx) -> int:
        require(who, Action.APPLY_APP, await scheduled_tasks.stored_service(tx.conn, name))
        return await scheduled_tasks.manual_run(tx, name, who.user)
    run_id = await audited_write(request, change)
    return {"task": name, "run": run_id}


@router.get("/scheduledtasks/{name}/runs", tags=["tasks"])
async def list_runs(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """The task's newest runs (and the scheduled times it skipped or missed), each with every shard's outcome."""
    store = store_of(request)
    async with store.read() as conn:
        require(who, Action.READ, await scheduled_tasks.stored_service(conn, name))
        return {"items": await scheduled_tasks.runs(conn, name, store.clock())}


@router.get("/taskruns/{run_id}", tags=["tasks"])
async def get_run(request: Request, run_id: int = Path(ge=1, le=INT32_MAX),
                  who: Principal = Depends(principal)) -> dict[str, Any]:
    store = store_of(request)
    async with store.read() as conn:
        found = await scheduled_tasks.run(conn, run_id, store.clock())
    if not _may_read(who, found["service"]):
        raise NotFound(f"task run {run_id} not found")   # as for a run that does not exist: no probing
    return found


@router.post("/gateways/{name}/task-shards/claim", tags=["tasks"])
async def claim_shards(body: ShardClaim, request: Request, name: str = ComponentName,
                       who: Principal = Depends(principal)) -> dict[str, Any]:
    """Shards for this gateway to call, each leased to it (a lease that runs out frees the shard again)."""
    require_self(who, identity.GATEWAY, name)
    calls = await telemetry_write(request, lambda tx: task_shards.claim(tx, name, body.max))
    return {"items": [c.to_json() for c in calls]}


@router.post("/gateways/{name}/task-shards/report", tags=["tasks"])
async def report_shard(body: ShardOutcome, request: Request, name: str = ComponentName,
                       who: Principal = Depends(principal)) -> dict[str, Any]:
    """The outcome of a shard this gateway claimed: recorded once; a repeated report changes nothing."""
    require_self(who, identity.GATEWAY, name)
    return await telemetry_write(request, lambda tx: task_shards.report(tx, name, body))
