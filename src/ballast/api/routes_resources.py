"""Routes for declared resources: apply, cells, apps, revisions, instances, artifacts, audit."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, insert, select

from ballast.api import objects
from ballast.api.deps import (audited_write, mark_audited, may_read_app, principal, require, require_topology_read, retrying,
                              store_of)
from ballast.core.authz import Action
from ballast.core.manifests import DIGEST_PATTERN, parse_documents
from ballast.errors import FieldProblem, InvalidInput, NotFound, PayloadTooLarge
from ballast.services import apply as apply_service
from ballast.services import registry
from ballast.services.access import Principal
from ballast.store import audit_log
from ballast.store.schema import apps, artifacts, cells, instances, nodes, revisions

router = APIRouter()
MAX_ARTIFACT_BYTES = 200 * 1024 * 1024
_DIGEST = re.compile(DIGEST_PATTERN)


class ApplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    items: list[Any] = Field(min_length=1, max_length=500)
    dry_run: bool = Field(False, alias="dryRun")


@router.post("/apply", tags=["resources"])
async def apply(body: ApplyRequest, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    manifests = parse_documents(body.items)

    def authorize(action: Action, app: str | None) -> None:
        require(who, action, app)

    results = await retrying(lambda: apply_service.apply(store_of(request), manifests, actor=who.user,
                                                         authorize=authorize, dry_run=body.dry_run))
    if not body.dry_run:
        mark_audited(request)
    return {"dryRun": body.dry_run, "results": [r.to_dict() for r in results]}


@router.get("/cells", tags=["resources"])
async def list_cells(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require_topology_read(who)
    async with store_of(request).read() as conn:
        node_rows = (await conn.execute(select(nodes.c.name, nodes.c.cell).order_by(nodes.c.name))).all()
        by_cell: dict[str, list[str]] = defaultdict(list)
        for n in node_rows:
            by_cell[n.cell].append(n.name)
        rows = (await conn.execute(select(cells).order_by(cells.c.name))).all()
    return {"items": [objects.cell(r, by_cell[r.name]) for r in rows]}


@router.get("/cells/{name}", tags=["resources"])
async def get_cell(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    for item in (await list_cells(request, who))["items"]:
        if item["metadata"]["name"] == name:
            return item  # type: ignore[no-any-return]
    raise NotFound(f"cell {name!r} not found")


@router.delete("/cells/{name}", tags=["resources"])
async def delete_cell(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.MANAGE_CELLS)

    await audited_write(request, lambda tx: registry.delete_cell(tx, name, who.user))
    return {"deleted": f"Cell/{name}"}


async def _app_rows(request: Request, who: Principal, name: str | None) -> list[dict[str, Any]]:
    async with store_of(request).read() as conn:
        query = select(apps).order_by(apps.c.name)
        if name is not None:
            query = query.where(apps.c.name == name)
        rows = [r for r in (await conn.execute(query)).all() if may_read_app(who, r.name)]
        counts_query = (select(instances.c.app, instances.c.cell, instances.c.ready, func.count())
                        .where(instances.c.desired == "running")
                        .group_by(instances.c.app, instances.c.cell, instances.c.ready))
        if name is not None:
            counts_query = counts_query.where(instances.c.app == name)
        per_app: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
        for app_name, cell, ready, count in (await conn.execute(counts_query)).all():
            slot = per_app[app_name].setdefault(cell, {"total": 0, "ready": 0})
            slot["total"] += count
            slot["ready"] += count if ready else 0
    return [objects.app(r, per_app[r.name]) for r in rows]


@router.get("/apps", tags=["resources"])
async def list_apps(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"items": await _app_rows(request, who, None)}


@router.get("/apps/{name}", tags=["resources"])
async def get_app(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ, name)
    items = await _app_rows(request, who, name)
    if not items:
        raise NotFound(f"app {name!r} not found")
    return items[0]


@router.delete("/apps/{name}", tags=["resources"])
async def delete_app(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.APPLY_APP, name)

    stopping = await audited_write(request, lambda tx: registry.delete_app(tx, name, who.user))
    return {"deleted": f"AppService/{name}", "instancesStopping": stopping}


@router.get("/apps/{name}/revisions", tags=["resources"])
async def list_revisions(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ, name)
    async with store_of(request).read() as conn:
        app_row = (await conn.execute(select(apps.c.deployed_revision).where(apps.c.name == name))).first()
        if app_row is None:
            raise NotFound(f"app {name!r} not found")
        rows = (await conn.execute(select(revisions).where(revisions.c.app == name).order_by(revisions.c.number))).all()
    return {"items": [objects.revision(r, app_row.deployed_revision) for r in rows]}


@router.get("/apps/{name}/revisions/{number}", tags=["resources"])
async def get_revision(name: str, number: int, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    for item in (await list_revisions(name, request, who))["items"]:
        if item["metadata"]["number"] == number:
            return item  # type: ignore[no-any-return]
    raise NotFound(f"app {name!r} has no revision {number}")


@router.get("/instances", tags=["resources"])
async def list_instances(request: Request, app: str | None = Query(None, max_length=63),
                         node: str | None = Query(None, max_length=63),
                         who: Principal = Depends(principal)) -> dict[str, Any]:
    if app is not None:
        require(who, Action.READ, app)
    async with store_of(request).read() as conn:
        query = select(instances).order_by(instances.c.app, instances.c.cell, instances.c.id)
        if app is not None:
            query = query.where(instances.c.app == app)
        if node is not None:
            query = query.where(instances.c.node == node)
        rows = (await conn.execute(query)).all()
    return {"items": [objects.instance(r) for r in rows if may_read_app(who, r.app)]}


@router.get("/instances/{instance_id}", tags=["resources"])
async def get_instance(instance_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    async with store_of(request).read() as conn:
        row = (await conn.execute(select(instances).where(instances.c.id == instance_id))).first()
    if row is None or not may_read_app(who, row.app):
        raise NotFound(f"instance {instance_id!r} not found")
    return objects.instance(row)


@router.post("/artifacts", tags=["artifacts"], status_code=201)
async def push_artifact(request: Request, response: Response, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Upload a package (a .tar.gz); it is stored under its sha256 digest."""
    require(who, Action.PUSH_ARTIFACT)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_ARTIFACT_BYTES:
        raise PayloadTooLarge(f"artifact of {declared} bytes exceeds the limit of {MAX_ARTIFACT_BYTES}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_ARTIFACT_BYTES:
            raise PayloadTooLarge(f"artifact exceeds the limit of {MAX_ARTIFACT_BYTES} bytes")
    if not body:
        raise InvalidInput("empty artifact", problems=[FieldProblem("body", "", "a non-empty .tar.gz package")])
    digest = "sha256:" + hashlib.sha256(body).hexdigest()

    async def attempt() -> bool:
        async with store_of(request).write() as tx:
            exists = (await tx.conn.execute(select(artifacts.c.digest).where(artifacts.c.digest == digest))).first()
            if exists is None:
                await tx.conn.execute(insert(artifacts).values(digest=digest, size=len(body), content=bytes(body),
                                                               created_at=tx.now))
            await tx.audit(actor=who.user, action="artifact.push", resource=f"Artifact/{digest}",
                           after=digest, detail={"size": len(body), "new": exists is None})
            return exists is None

    created = await retrying(attempt)
    mark_audited(request)
    response.status_code = 201 if created else 200
    return {"digest": digest, "size": len(body), "created": created}


@router.get("/artifacts", tags=["artifacts"])
async def list_artifacts(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require_topology_read(who)
    async with store_of(request).read() as conn:
        rows = (await conn.execute(select(artifacts.c.digest, artifacts.c.size, artifacts.c.created_at)
                                   .order_by(artifacts.c.created_at))).all()
    return {"items": [{"digest": r.digest, "size": r.size, "createdAt": objects.iso(r.created_at)} for r in rows]}


@router.get("/artifacts/{digest}", tags=["artifacts"])
async def fetch_artifact(digest: str, request: Request, who: Principal = Depends(principal)) -> Response:
    require_topology_read(who)
    if not _DIGEST.match(digest):
        raise InvalidInput("invalid digest", problems=[FieldProblem("digest", digest, "sha256:<64 hex digits>")])
    async with store_of(request).read() as conn:
        row = (await conn.execute(select(artifacts.c.content).where(artifacts.c.digest == digest))).first()
    if row is None:
        raise NotFound(f"artifact {digest} not found; push it with 'ballast artifact push DIR'")
    return Response(content=row.content, media_type="application/gzip")


@router.get("/audit", tags=["audit"])
async def list_audit(request: Request, limit: int = Query(100, ge=1, le=10_000), after: int = Query(0, ge=0, le=2**63 - 1),
                     who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ)
    async with store_of(request).read() as conn:
        recs = await audit_log.records(conn, after_seq=after, limit=limit, newest_first=after == 0)
    recs.sort(key=lambda r: r.seq)
    return {"items": [r.__dict__ for r in recs]}


@router.get("/audit/verify", tags=["audit"])
async def verify_audit(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    require(who, Action.READ)
    async with store_of(request).read() as conn:
        count, breaks, head = await audit_log.verify_all(conn)
    return {"records": count, "ok": not breaks, "headHash": head,
            "breaks": [{"seq": b.seq, "problem": b.problem} for b in breaks]}



class RecordRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    seq: int = Field(ge=1, le=2**63 - 1)
    hash: str = Field(min_length=1, max_length=80)


class VerifyRecords(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[RecordRef] = Field(min_length=1, max_length=100_000)


@router.post("/audit/verify", tags=["audit"])
async def verify_audit_records(body: VerifyRecords, request: Request,
                               who: Principal = Depends(principal)) -> dict[str, Any]:
    """Verify the chain and that each given record (from a report) is in it with exactly this hash."""
    require(who, Action.READ)
    request.state.audit_exempt = True  # a check changes nothing
    async with store_of(request).read() as conn:
        count, breaks, head = await audit_log.verify_all(conn)
        first, last = min(x.seq for x in body.records), max(x.seq for x in body.records)
        stored = {r.seq: r.hash for r in await audit_log.records(conn, after_seq=first - 1, limit=last - first + 1)}
    mismatches = [{"seq": x.seq, "problem": "no such record" if x.seq not in stored else
                   f"hash {x.hash[:16]}… differs from the chain's {stored[x.seq][:16]}…"}
                  for x in body.records if stored.get(x.seq) != x.hash]
    return {"records": count, "ok": not breaks and not mismatches, "headHash": head, "checked": len(body.records),
            "breaks": [{"seq": b.seq, "problem": b.problem} for b in breaks], "mismatches": mismatches}
