"""Routes for users, role bindings and API tokens."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field

from ballast.api.deps import Name, RequestBody, TokenId, audited_write, principal, require, require_person, store_of
from ballast.core.authz import Action, PersonRole, allowed, explain_denial
from ballast.core.manifests import NAME_PATTERN, StoredText
from ballast.errors import FieldProblem, Forbidden, InvalidInput
from ballast.services import access
from ballast.services.access import Principal
from ballast.store.engine import Tx

router = APIRouter()


USER_NAME_PATTERN = access.USER_NAME.pattern
AppNames = list[Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]]


class NewUser(RequestBody):
    name: str = Field(pattern=USER_NAME_PATTERN, max_length=63, description="lower-case letters, digits, - _ . @")
    role: PersonRole = Field(strict=False)  # an enum: strict would take only the Python object
    apps: AppNames | None = Field(None, max_length=1000, description="the apps the role is scoped to (null: all)")


class NewBinding(RequestBody):
    role: PersonRole = Field(strict=False)
    apps: AppNames | None = Field(None, max_length=1000)


class NewToken(RequestBody):
    user: StoredText | None = Field(None, max_length=63)
    name: StoredText = Field("", max_length=128)
    ttlSeconds: float | None = Field(None, gt=0, le=10 * 365 * 86400)


def _apps(apps: list[str] | None) -> list[str] | None:
    if apps is None:
        return None
    bad = [a for a in apps if not re.match(NAME_PATTERN, a)]
    if bad:
        raise InvalidInput("invalid app names", problems=[FieldProblem("apps", bad, "app names (lower-case DNS labels)")])
    return sorted(set(apps))


@router.get("/whoami", tags=["access"])
async def whoami(who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"user": who.user, "token": who.token_id,
            "bindings": [{"role": b.role.value, "apps": list(b.apps) if b.apps is not None else None} for b in who.bindings]}


@router.get("/users", tags=["access"])
async def list_users(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ)
    async with store_of(request).read() as conn:
        return {"items": await access.list_users(conn)}


@router.post("/users", tags=["access"], status_code=201)
async def create_user(body: NewUser, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.MANAGE_ACCESS)
    name, role, apps = access.validate_user_name(body.name), access.validate_role(body.role.value), _apps(body.apps)

    return await audited_write(request, lambda tx: access.create_user(tx, name, role, apps, who.user))


@router.delete("/users/{name}", tags=["access"])
async def delete_user(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.MANAGE_ACCESS)

    await audited_write(request, lambda tx: access.delete_user(tx, name, who.user))
    return {"deleted": f"User/{name}"}


@router.post("/users/{name}/bindings", tags=["access"], status_code=201)
async def bind(name: Name, body: NewBinding, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.MANAGE_ACCESS)
    role, apps = access.validate_role(body.role.value), _apps(body.apps)

    await audited_write(request, lambda tx: access.bind(tx, name, role, apps, who.user))
    return {"user": name, "role": role.value, "apps": apps}


@router.delete("/users/{name}/bindings/{role}", tags=["access"])
async def unbind(name: Name, role: Annotated[PersonRole, Path()], request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.MANAGE_ACCESS)
    parsed = access.validate_role(role.value)

    removed = await audited_write(request, lambda tx: access.unbind(tx, name, parsed, who.user))
    return {"user": name, "role": parsed.value, "removed": removed}


@router.get("/tokens", tags=["access"])
async def list_tokens(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require_person(who)
    mine_only = not allowed(who.bindings, Action.MANAGE_ACCESS)
    async with store_of(request).read() as conn:
        return {"items": await access.list_tokens(conn, who.user if mine_only else None)}


@router.post("/tokens", tags=["access"], status_code=201)
async def create_token(body: NewToken, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require_person(who)
    user = body.user or who.user
    if user != who.user:
        require(who, Action.MANAGE_ACCESS)

    policy: access.TokenPolicy = request.app.state.token_policy

    async def mint(tx: Tx) -> dict[str, Any]:
        expires = policy.expiry(tx.now, body.ttlSeconds, who)
        return await access.create_token(tx, user, body.name, expires, who.user)

    return await audited_write(request, mint)


@router.delete("/tokens/{token_id}", tags=["access"])
async def revoke_token(token_id: TokenId, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    if not allowed(who.bindings, Action.MANAGE_ACCESS):
        # Without the right to manage access, a token that is not one's own is refused before anything is said
        # of whether it exists.
        async with store_of(request).read() as conn:
            owner = await access.token_owner(conn, token_id)
        if owner != who.user:
            raise Forbidden(explain_denial(who.user, who.bindings, Action.MANAGE_ACCESS, None))

    return await audited_write(request, lambda tx: access.revoke_token(tx, token_id, who.user))
