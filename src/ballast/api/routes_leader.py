"""`GET /v1/leader`: which replica runs the controllers, at which epoch (controllers/leadership.py).

Any role that reads may ask; the answer also names the replica that answered and the store it serves.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ballast.api.deps import principal, require_topology_read, store_of
from ballast.services.access import Principal
from ballast.store import lease

router = APIRouter()


@router.get("/leader", tags=["health"])
async def leader(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """The controllers lease as the store holds it: holder, epoch, when it was taken, renewed and expires."""
    require_topology_read(who)
    store = store_of(request)
    async with store.read() as conn:
        record = await lease.read(conn, lease.CONTROLLERS)
    now = store.clock()
    return {"lease": record.to_json(now) if record is not None else None,
            "answeredBy": request.app.state.replica, "store": store.store_id,
            "fencedWrites": dict(store.fenced_writes)}
