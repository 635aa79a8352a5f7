"""Isolation groups (business units) as stored: checks at apply, apply, delete, reads.

A group is a set of instances of an app, created for one business flow and
named by the unit's `code`. Its instances register like any other, but as
endpoints of that group: no caller's default pool holds them, so only a
route naming the group (or a call of the same unit, self-convergence) reaches
them. The scheduler places them (controllers/scheduler.py); releases and node
evacuation treat them as the app's instances, each group its own part of
every release group (core/release_plan.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.digests import digest
from ballast.core.manifests import (AppServiceManifest, AppServiceSpec, IsolationGroupManifest, IsolationGroupSpec,
                                    Manifest, stored_spec)
from ballast.core.placement import even_spread, place
from ballast.core.traffic import group_routing
from ballast.errors import Conflict, FieldProblem, NotFound
from ballast.services.endpoints import bump_registry
from ballast.services.placement import placement_inputs
from ballast.store.engine import Tx
from ballast.store.schema import apps, cells, components, endpoints, instances, isolation_groups

KIND = "IsolationGroup"


def wanted(spec: IsolationGroupSpec, all_cells: list[str]) -> dict[str, int]:
    """The group's instances per cell: as declared, or `replicas` spread evenly over every cell."""
    if spec.cells is not None:
        return dict(spec.cells)
    return even_spread(spec.replicas or 0, sorted(all_cells)) if all_cells else {}


async def problems(conn: AsyncConnection, manifests: list[Manifest]) -> list[FieldProblem]:
    """What the store says against the groups of a request: the app, its cells, the code, the capacity."""
    out: list[FieldProblem] = []
    groups = [(i, m) for i, m in enumerate(manifests) if isinstance(m, IsolationGroupManifest)]
    if not groups:
        return out
    app_specs: dict[str, AppServiceSpec] = {r.name: stored_spec(r.spec)
                                            for r in (await conn.execute(select(apps.c.name, apps.c.spec))).all()}
    app_specs.update({m.metadata.name: m.spec for m in manifests if isinstance(m, AppServiceManifest)})
    cell_names = list((await conn.execute(select(cells.c.name))).scalars())
    stored = {r.name: r for r in (await conn.execute(select(isolation_groups))).all()}
    taken = {(r.app, r.code): r.name for r in stored.values()}
    node_views, placed = await placement_inputs(conn, 0.0)
    now_ready = {n.name: n for n in node_views}
    for index, m in groups:
        where, spec, name = f"items[{index}]", m.spec, m.metadata.name
        app_spec = app_specs.get(spec.app)
        if app_spec is None:
            out.append(FieldProblem(f"{where}.spec.app", spec.app, "an existing AppService (or one applied in "
                                                                   "the same request)"))
            continue
        if app_spec.strategy.upgrade == "ordered":
            out.append(FieldProblem(f"{where}.spec.app", spec.app, "an app whose strategy.upgrade is inPlace or "
                                                                   "replace: groups of ordered apps are not supported"))
        old = stored.get(name)
        if old is not None and (old.app, old.code) != (spec.app, spec.code):
            out.append(FieldProblem(f"{where}.spec.code" if old.app == spec.app else f"{where}.spec.app",
                                    spec.code if old.app == spec.app else spec.app,
                                    f"unchanged ({old.app}/{old.code}): a group's app and code cannot change; "
                                    f"delete the group and create another"))
            continue
        owner = taken.get((spec.app, spec.code))
        if owner is not None and owner != name:
            out.append(FieldProblem(f"{where}.spec.code", spec.code,
                                    f"a code app {spec.app!r} has no group of yet (group {owner!r} has it)"))
            continue
        for cell in spec.cells or {}:
            if cell not in cell_names:
                out.append(FieldProblem(f"{where}.spec.cells.{cell}", cell, "an existing cell (one of: "
                                        + (", ".join(sorted(cell_names)) or "none defined") + ")"))
        if any(p.path.startswith(f"{where}.spec.cells.") for p in out):
            continue
        counts = wanted(spec, cell_names)
        decision = place(spec.app, counts, app_spec.template.resources.request(), placed,
                         [n for n in now_ready.values()], group=spec.code)
        for cell, missing, reason in decision.unplaced:
            field = f"{where}.spec.cells.{cell}" if spec.cells is not None else f"{where}.spec.replicas"
            value = counts.get(cell, 0) if spec.cells is not None else spec.replicas
            out.append(FieldProblem(field, value, f"a size the cell's nodes can hold: {missing} instance(s) of "
                                                  f"{spec.app} would not fit ({reason})"))
    return out


def _group_digest(spec: dict[str, Any]) -> str:
    return digest(spec)


async def apply(tx: Tx, m: IsolationGroupManifest, actor: str) -> str:
    """Store one group (created | configured | unchanged); the registry moves when what components route by does."""
    name = m.metadata.name
    spec = m.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    row = (await tx.conn.execute(select(isolation_groups).where(isolation_groups.c.name == name))).first()
    resource = f"{KIND}/{name}"
    if row is not None and row.spec == spec:
        await tx.audit(actor=actor, action="apply", resource=resource, before=_group_digest(row.spec),
                       after=_group_digest(spec), detail={"outcome": "unchanged"})
        return "unchanged"
    routing_changed = (row is None or group_routing(IsolationGroupSpec.model_validate(row.spec), name)
                       != group_routing(m.spec, name))
    if routing_changed:
        await bump_registry(tx)
    generation = tx.rv if routing_changed or row is None else row.generation
    if row is None:
        await tx.conn.execute(insert(isolation_groups).values(
            name=name, app=m.spec.app, code=m.spec.code, spec=spec, status={}, generation=generation,
            created_at=tx.now, updated_at=tx.now, resource_version=tx.rv))
        outcome = "created"
    else:
        await tx.conn.execute(update(isolation_groups).where(isolation_groups.c.name == name).values(
            spec=spec, generation=generation, updated_at=tx.now, resource_version=tx.rv))
        outcome = "configured"
    await tx.audit(actor=actor, action="apply", resource=resource,
                   before=_group_digest(row.spec) if row is not None else "", after=_group_digest(spec),
                   detail={"outcome": outcome, "app": m.spec.app, "code": m.spec.code})
    return outcome


async def stored_app(conn: AsyncConnection, name: str) -> str:
    row = (await conn.execute(select(isolation_groups.c.app).where(isolation_groups.c.name == name))).first()
    if row is None:
        raise NotFound(f"{KIND} {name!r} not found")
    return str(row.app)


async def delete_group(tx: Tx, name: str, actor: str) -> dict[str, Any]:
    """Remove a group: its instances are drained and retired like any (no caller's default pool ever held them)."""
    row = (await tx.conn.execute(select(isolation_groups).where(isolation_groups.c.name == name))).first()
    if row is None:
        raise NotFound(f"{KIND} {name!r} not found")
    from ballast.services.releases import active_release   # releases import placement; groups are a leaf
    running = await active_release(tx.conn, row.app)
    if running is not None:
        raise Conflict(f"app {row.app!r} has release {running.id} {running.phase}; its group {name!r} was not "
                       f"deleted: wait for the release to end, then delete it")
    retired = (await tx.conn.execute(update(instances).where(
        instances.c.app == row.app, instances.c.group_code == row.code, instances.c.desired == "running")
        .values(desired="deleted", desired_version=tx.rv, changed_at=tx.now, resource_version=tx.rv)
        .returning(instances.c.id))).scalars().all()
    await tx.conn.execute(delete(isolation_groups).where(isolation_groups.c.name == name))
    await bump_registry(tx)
    await tx.audit(actor=actor, action="delete", resource=f"{KIND}/{name}", before=_group_digest(row.spec),
                   detail={"app": row.app, "code": row.code, "retired": sorted(retired)})
    return {"name": name, "retired": sorted(retired)}


async def listing(conn: AsyncConnection, app: str | None = None) -> list[dict[str, Any]]:
    """Every group (of `app`), with its instances and ready endpoints per cell against what it wants."""
    query = select(isolation_groups).order_by(isolation_groups.c.app, isolation_groups.c.code)
    if app is not None:
        query = query.where(isolation_groups.c.app == app)
    rows = (await conn.execute(query)).all()
    if not rows:
        return []
    cell_names = list((await conn.execute(select(cells.c.name))).scalars())
    apps_named = {r.app for r in rows}
    live = (await conn.execute(select(instances.c.app, instances.c.group_code, instances.c.cell, instances.c.ready)
                               .where(instances.c.app.in_(apps_named), instances.c.desired == "running"))).all()
    ready_eps = (await conn.execute(select(endpoints.c.service, endpoints.c.group_code, endpoints.c.cell).where(
        endpoints.c.service.in_(apps_named), endpoints.c.state == "ready"))).all()
    acks = {f"{c.kind}/{c.name}": int(c.acked_generation) for c in (await conn.execute(
        select(components.c.kind, components.c.name, components.c.acked_generation))).all()}
    out = []
    for r in rows:
        spec = IsolationGroupSpec.model_validate(r.spec)
        have = Counter(i.cell for i in live if i.app == r.app and i.group_code == r.code)
        routable = Counter(e.cell for e in ready_eps if e.service == r.app and e.group_code == r.code)
        want = wanted(spec, cell_names)
        out.append({"name": r.name, "app": r.app, "code": r.code, "convergence": spec.convergence,
                    "stress": spec.stress, "spec": r.spec,
                    "cells": {c: {"wanted": want.get(c, 0), "instances": have.get(c, 0), "ready": routable.get(c, 0)}
                              for c in sorted(set(want) | set(have))},
                    "wanted": sum(want.values()), "instances": sum(have.values()), "ready": sum(routable.values()),
                    "generation": r.generation, "inEffect": all(g >= r.generation for g in acks.values()),
                    "pending": sorted(k for k, g in acks.items() if g < r.generation),
                    "status": r.status, "createdAt": r.created_at, "updatedAt": r.updated_at,
                    "resourceVersion": r.resource_version})
    return out
