"""Routes for releases: plan, start, status, pause / resume / rollback, history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from ballast.api.deps import (AppName, RequestBody, audited_write, mark_audited, principal, require, retrying,
                              store_of)
from ballast.core.authz import Action
from ballast.core.manifests import StrategyOverride
from ballast.services import change_control, outbound, releases
from ballast.services.access import Principal
from ballast.wire.text import INT32_MAX

router = APIRouter()


class StartRelease(RequestBody):
    toRevision: int | None = Field(None, ge=1, le=INT32_MAX)
    strategy: StrategyOverride = Field(default_factory=StrategyOverride)


class ReleaseAction(RequestBody):
    fast: bool = False
    expectPhase: str | None = Field(None, max_length=16, description="compare-and-set: act only if the release is in this phase")
    reverify: bool = Field(False, description="resume: judge a new window instead of accepting the verdict that "
                                              "stopped the release")


@router.post("/apps/{app}/releases/plan", tags=["releases"])
async def plan_release(app: AppName, body: StartRelease, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """The groups a release would use, computed without changing anything."""
    require(who, Action.READ, app)
    request.state.audit_exempt = True  # a preview changes nothing
    outbound.refuse_verify_urls(request.app.state.outbound, getattr(body.strategy, "verify", None), "strategy.verify")
    async with store_of(request).read() as conn:
        return await releases.preview(conn, app, body.toRevision, body.strategy.model_dump(by_alias=True))


@router.post("/apps/{app}/releases", tags=["releases"], status_code=201)
async def start_release(app: AppName, body: StartRelease, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.APPLY_APP, app)
    outbound.refuse_verify_urls(request.app.state.outbound, getattr(body.strategy, "verify", None), "strategy.verify")

    async def attempt() -> dict[str, Any]:
        async with store_of(request).write() as tx:  # refused under an active order or a closed window
            return await change_control.start_release(tx, app, body.toRevision,
                                                      body.strategy.model_dump(by_alias=True), who.user)

    result = await retrying(attempt)
    mark_audited(request)
    return result


@router.get("/apps/{app}/releases", tags=["releases"])
async def release_history(app: AppName, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ, app)
    async with store_of(request).read() as conn:
        return {"items": await releases.history(conn, app)}


@router.get("/apps/{app}/release", tags=["releases"])
async def release_status(app: AppName, request: Request, id: int | None = Query(None, ge=1, le=INT32_MAX),
                         who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ, app)
    store = store_of(request)
    async with store.read() as conn:
        return await releases.status(conn, app, store.clock(), id)


async def _act(app: str, action: str, body: ReleaseAction, request: Request, who: Principal) -> dict[str, Any]:
    require(who, Action.APPLY_APP, app)

    return await audited_write(request, lambda tx: change_control.act_on_release(
        tx, app, action, who.user, fast=body.fast, expect_phase=body.expectPhase, reverify=body.reverify))


@router.post("/apps/{app}/release/pause", tags=["releases"])
async def pause(app: AppName, request: Request, body: ReleaseAction = ReleaseAction(),
                who: Principal = Depends(principal)) -> dict[str, Any]:
    return await _act(app, "pause", body, request, who)


@router.post("/apps/{app}/release/resume", tags=["releases"])
async def resume(app: AppName, request: Request, body: ReleaseAction = ReleaseAction(),
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    return await _act(app, "resume", body, request, who)


@router.post("/apps/{app}/release/rollback", tags=["releases"])
async def rollback(app: AppName, request: Request, body: ReleaseAction = ReleaseAction(),
                   who: Principal = Depends(principal)) -> dict[str, Any]:
    """Turn the release in flight round; once it has succeeded, start a new release back to the revision that ran
    before it (the app's strategy, or all at once with `fast`)."""
    return await _act(app, "rollback", body, request, who)
