"""Routes for declared resources: apply, cells, apps, revisions, instances, artifacts, audit."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ConfigDict, Field

from ballast.api import objects
from ballast.api.deps import (AppName, InstanceId, Name, RequestBody, audited_write, mark_audited, may_read_app, one,
                              principal, require, require_person, require_topology_read, retrying, store_of)
from ballast.core.archive import ArchiveLimits
from ballast.core import paging
from ballast.core.authz import Action, may_fetch_artifact, readable_apps
from ballast.core.identity import NODE, component_of
from ballast.core.manifests import DIGEST_PATTERN, parse_documents
from ballast.errors import FieldProblem, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from ballast.services import apply as apply_service
from ballast.services import apps, artifacts, audit_trail, change_control, instances, registry, topology
from ballast.services.access import Principal
from ballast.wire.reports import InstancePhase
from ballast.wire.text import COUNTER_MAX, INT32_MAX

router = APIRouter()


class ApplyRequest(RequestBody):
    model_config = ConfigDict(populate_by_name=True)
    items: list[Any] = Field(min_length=1, max_length=500)
    dry_run: bool = Field(False, alias="dryRun")


@router.post("/apply", tags=["resources"])
async def apply(body: ApplyRequest, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    manifests = parse_documents(body.items)

    def authorize(action: Action, app: str | None) -> None:
        require(who, action, app)

    results = await retrying(lambda: apply_service.apply(store_of(request), manifests, actor=who.user,
                                                         authorize=authorize, dry_run=body.dry_run,
                                                         outbound_policy=request.app.state.outbound))
    if not body.dry_run:
        mark_audited(request)
    return {"dryRun": body.dry_run, "results": [r.to_dict() for r in results]}


async def _cells(request: Request, who: Principal, name: str | None = None) -> list[dict[str, Any]]:
    require_topology_read(who)
    async with store_of(request).read() as conn:
        return [objects.cell(c) for c in await topology.list_cells(conn, name)]


@router.get("/cells", tags=["resources"])
async def list_cells(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"items": await _cells(request, who)}


@router.get("/cells/{name}", tags=["resources"])
async def get_cell(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return one(await _cells(request, who, name), f"cell {name!r} not found")


@router.delete("/cells/{name}", tags=["resources"])
async def delete_cell(name: Name, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.MANAGE_CELLS)

    await audited_write(request, lambda tx: registry.delete_cell(tx, name, who.user))
    return {"deleted": f"Cell/{name}"}


async def _apps(request: Request, who: Principal, name: str | None = None) -> list[dict[str, Any]]:
    require_person(who)
    async with store_of(request).read() as conn:
        return [objects.app(a) for a in await apps.list_apps(conn, name) if may_read_app(who, a.name)]


@router.get("/apps", tags=["resources"])
async def list_apps(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"items": await _apps(request, who)}


@router.get("/apps/{name}", tags=["resources"])
async def get_app(name: AppName, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ, name)
    return one(await _apps(request, who, name), f"app {name!r} not found")


@router.delete("/apps/{name}", tags=["resources"])
async def delete_app(name: AppName, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.APPLY_APP, name)

    stopping = await audited_write(request, lambda tx: change_control.delete_app(tx, name, who.user))
    return {"deleted": f"AppService/{name}", "instancesStopping": stopping}


async def _revisions(request: Request, who: Principal, app: str, number: int | None = None) -> list[dict[str, Any]]:
    require(who, Action.READ, app)
    async with store_of(request).read() as conn:
        return [objects.revision(r) for r in await apps.list_revisions(conn, app, number)]


@router.get("/apps/{name}/revisions", tags=["resources"])
async def list_revisions(name: AppName, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"items": await _revisions(request, who, name)}


@router.get("/apps/{name}/revisions/{number}", tags=["resources"])
async def get_revision(name: AppName, number: Annotated[int, Path(ge=1, le=INT32_MAX)], request: Request,
                       who: Principal = Depends(principal)) -> dict[str, Any]:
    return one(await _revisions(request, who, name, number), f"app {name!r} has no revision {number}")


async def _instances(request: Request, who: Principal, *, instance_id: str) -> list[dict[str, Any]]:
    """The instance, if it exists and the caller may read its app (else, to them, it is not there)."""
    require_person(who)
    store = store_of(request)
    async with store.read() as conn:
        found = await instances.list_instances(conn, store.clock(), instance_id=instance_id,
                                                 grace=store.node_grace_seconds)
    return [objects.instance(i) for i in found if may_read_app(who, i.app)]


PAGE_MAX = 5000
WATCH_SECONDS = 30.0


@router.get("/instances", tags=["resources"])
async def list_instances(
        request: Request,
        app: str | None = Query(None, max_length=63), node: str | None = Query(None, max_length=63),
        cell: str | None = Query(None, max_length=63),
        revision: int | None = Query(None, ge=1, le=INT32_MAX, description="the desired revision (spec.revision)"),
        phase: InstancePhase | None = Query(None, description="the phase its agent last reported"),
        ready: bool | None = Query(None, description="ready as its agent last reported"),
        desired: Literal["running", "deleted"] | None = Query(None),
        limit: int | None = Query(None, ge=1, le=PAGE_MAX, description="at most this many (absent: all); "
                                  "metadata.continue then names the next page"),
        continue_: str | None = Query(None, alias="continue", max_length=paging.MAX_TOKEN,
                                      description="the previous page's metadata.continue, with the same filters"),
        watch: bool = Query(False, description="long-poll for changes after resourceVersion instead of listing"),
        resource_version: int | None = Query(None, alias="resourceVersion", ge=0, le=COUNTER_MAX,
                                             description="watch: report changes after this version (a list's "
                                             "metadata.resourceVersion, or the last watch answer's)"),
        timeout: float = Query(WATCH_SECONDS, ge=0, le=60, description="watch: answer by then, changes or not"),
        who: Principal = Depends(principal)) -> dict[str, Any]:
    """Instances by app, cell and id, filtered (all filters ANDed) and paged on the server; or, with `watch`,
    the changes after `resourceVersion` (ADDED, MODIFIED, DELETED) as soon as there are any."""
    require_person(who)
    if app is not None:
        require(who, Action.READ, app)
    filters = instances.InstanceFilter(app=app, node=node, cell=cell, revision=revision, phase=phase, ready=ready,
                                       desired=desired)
    readable = readable_apps(who.bindings)    # authorization inside the query: full pages, no other app's rows
    store = store_of(request)
    if watch:
        _refuse_with_watch(resource_version, limit=limit, continue_=continue_)
        assert resource_version is not None
        return objects.changes(await instances.watch(store, resource_version, filters, readable=readable,
                                                     timeout=timeout))
    after = paging.decode(continue_, instances.LIST, filters.as_dict(), instances.KEY_SHAPE) if continue_ else None
    async with store.read() as conn:
        version = await instances.current_version(conn)   # first: everything up to it is in the page
        page = await instances.list_page(conn, store.clock(), filters, readable=readable, after=after, limit=limit,
                                         grace=store.node_grace_seconds)
    token = paging.encode(instances.LIST, page.next_after, filters.as_dict()) if page.next_after else None
    return {"items": [objects.instance(i) for i in page.items], "metadata": objects.list_metadata(version, token)}


def _refuse_with_watch(resource_version: int | None, **paged: Any) -> None:
    problems = [FieldProblem(name.rstrip("_"), value, "nothing with watch=true: a watch answers changes, not pages")
                for name, value in paged.items() if value is not None]
    if resource_version is None:
        problems.append(FieldProblem("resourceVersion", None, "with watch=true, the metadata.resourceVersion of a "
                                     "list (or of the last watch answer) to report changes after"))
    if problems:
        raise InvalidInput("invalid watch", problems=problems)


@router.get("/instances/{instance_id}", tags=["resources"])
async def get_instance(instance_id: InstanceId, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return one(await _instances(request, who, instance_id=instance_id), f"instance {instance_id!r} not found")


@router.post("/artifacts", tags=["artifacts"], status_code=201)
async def push_artifact(request: Request, response: Response, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Upload a package (a .tar.gz within the server's limits); it is stored under its sha256 digest."""
    require(who, Action.PUSH_ARTIFACT)
    limits: ArchiveLimits = request.app.state.artifact_limits
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise PayloadTooLarge(f"artifact of {declared} bytes exceeds the limit of {limits.max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limits.max_bytes:
            raise PayloadTooLarge(f"artifact exceeds the limit of {limits.max_bytes} bytes")
    if not body:
        raise InvalidInput("empty artifact", problems=[FieldProblem("body", "", "a non-empty .tar.gz package")])
    content = bytes(body)
    await artifacts.check(content, limits)

    pushed = await audited_write(request, lambda tx: artifacts.push(tx, content, who.user))
    response.status_code = 201 if pushed.created else 200
    return {"digest": pushed.digest, "size": pushed.size, "created": pushed.created}


@router.get("/artifacts", tags=["artifacts"])
async def list_artifacts(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require_topology_read(who)
    async with store_of(request).read() as conn:
        found = await artifacts.list_artifacts(conn)
    return {"items": [objects.artifact(a) for a in found]}


@router.get("/artifacts/{digest}", tags=["artifacts"])
async def fetch_artifact(digest: Annotated[str, Path(pattern=DIGEST_PATTERN)], request: Request,
                         who: Principal = Depends(principal)) -> Response:
    """The package: to a node whose own granted instances run it, and to people who may read an app that runs
    it (see core.authz.may_fetch_artifact); to anyone else it is not there."""
    component = component_of(who.user, who.bindings)
    if component is None:
        require_topology_read(who)
    async with store_of(request).read() as conn:
        content = None
        if component is not None:
            if not (component[0] == NODE and await artifacts.assigned_to(conn, component[1], digest)):
                raise Forbidden(f"{who.user} may fetch only the artifacts its own instances run, not {digest}")
            content = await artifacts.content(conn, digest)
        elif may_fetch_artifact(who.bindings, await artifacts.referencing_apps(conn, digest)):
            content = await artifacts.content(conn, digest)
    if content is None:
        raise NotFound(f"artifact {digest} not found; push it with 'ballast artifact push DIR'")
    return Response(content=content, media_type="application/gzip")


@router.get("/audit", tags=["audit"])
async def list_audit(request: Request, limit: int = Query(100, ge=1, le=10_000), after: int = Query(0, ge=0, le=COUNTER_MAX),
                     oldest: bool = Query(False, description="with after=0: the first records, not the newest"),
                     resource: str | None = Query(None, max_length=200, description="only records of this resource, "
                                                  "e.g. Node/node-a1"),
                     continue_: str | None = Query(None, alias="continue", max_length=paging.MAX_TOKEN,
                                                   description="the previous page's metadata.continue: the next "
                                                   "`limit` records (older ones when the first page was the newest)"),
                     who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ)
    # after=0 without `oldest` pages back from the newest record; otherwise forward from `after`.
    newest = after == 0 and not oldest
    filters = {"resource": resource, "order": "newest" if newest else "oldest"}
    key = paging.decode(continue_, audit_trail.LIST, filters, audit_trail.KEY_SHAPE) if continue_ else None
    async with store_of(request).read() as conn:
        page = await audit_trail.page(conn, after=key[0] if key and not newest else after,
                                      before=key[0] if key and newest else None, newest=newest, limit=limit,
                                      resource=resource)
    token = paging.encode(audit_trail.LIST, page.next_after, filters) if page.next_after else None
    return {"items": [objects.audit_record(r) for r in page.items], "metadata": objects.list_metadata(None, token)}


async def _anchor(request: Request) -> audit_trail.Anchor | None:
    """This server's signed checkpoints, read now (the file lives outside the database), or None when unanchored."""
    anchor = request.app.state.audit_anchor
    if anchor is None:
        return None
    return audit_trail.Anchor(await asyncio.to_thread(anchor.file.lines), anchor.signer.public_key())


@router.get("/audit/verify", tags=["audit"])
async def verify_audit(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Verify the chain against its head row and against this server's signed checkpoints."""
    require(who, Action.READ)
    anchor = await _anchor(request)
    async with store_of(request).read() as conn:
        return objects.chain_check(await audit_trail.check(conn, anchor=anchor))


class RecordRef(RequestBody):
    model_config = ConfigDict(extra="ignore")
    seq: int = Field(ge=1, le=COUNTER_MAX)
    hash: str = Field(min_length=1, max_length=80)


class VerifyRecords(RequestBody):
    records: list[RecordRef] = Field(min_length=1, max_length=100_000)


@router.post("/audit/verify", tags=["audit"])
async def verify_audit_records(body: VerifyRecords, request: Request,
                               who: Principal = Depends(principal)) -> dict[str, Any]:
    """Verify the chain and that each given record (from a report) is in it with exactly this hash."""
    require(who, Action.READ)
    request.state.audit_exempt = True  # a check changes nothing
    anchor = await _anchor(request)
    async with store_of(request).read() as conn:
        check = await audit_trail.check(conn, [(x.seq, x.hash) for x in body.records], anchor)
    return objects.chain_check(check)
