"""Routes that give nodes and gateways their own credentials: an admin mints a one-time join token, the
component exchanges it once for its credential (services/joining.py)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from ballast.api.deps import RequestBody, audited_write, principal, require
from ballast.core.authz import Action
from ballast.core.manifests import NAME_PATTERN
from ballast.services import joining
from ballast.services.access import Principal

router = APIRouter()
COMPONENT_NAME_MAX = joining.NAME_MAX


class NewJoinToken(RequestBody):
    kind: Literal["node", "gateway"] | None = Field(None, description="with a name: the kind of that component")
    name: str | None = Field(None, pattern=NAME_PATTERN, max_length=COMPONENT_NAME_MAX,
                             description="the one component it may join (null: any new one)")
    ttlSeconds: float | None = Field(None, gt=0, le=joining.MAX_JOIN_SECONDS)


class JoinRequest(RequestBody):
    kind: Literal["node", "gateway"]
    name: str = Field(pattern=NAME_PATTERN, max_length=COMPONENT_NAME_MAX)


@router.post("/join-tokens", tags=["access"], status_code=201)
async def create_join_token(body: NewJoinToken, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """A one-time token a new node or gateway (or one re-joining by name) exchanges for its credential."""
    require(who, Action.MANAGE_ACCESS)
    return await audited_write(request, lambda tx: joining.create_join_token(tx, body.kind, body.name, body.ttlSeconds,
                                                                             who.user))


@router.post("/join", tags=["access"])
async def join(body: JoinRequest, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Authenticated by a join token, which this consumes: the node's or gateway's own credential, shown once."""
    return await audited_write(request, lambda tx: joining.join(tx, who, body.kind, body.name))
