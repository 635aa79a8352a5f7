"""Apps and their revisions as people read them: the values `GET /v1/apps` and its revisions render.

Applying an app lives in `apply`, deleting it in `registry`; this module only reads, inside the caller's
connection, and returns frozen values: an app with how many of its instances run (and are ready) per cell,
a revision with whether the app's instances run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.errors import NotFound
from ballast.store.schema import apps, instances, nodes, revisions


@dataclass(frozen=True)
class InstanceCounts:
    total: int   # desired running
    ready: int   # of those, ready


@dataclass(frozen=True)
class AppRecord:
    name: str
    labels: dict[str, Any]
    generation: int
    created_at: float
    resource_version: int
    spec: dict[str, Any]
    latest_revision: int
    deployed_revision: int
    unplaced: list[dict[str, Any]] | None   # the scheduler's last word on instances it found no room for
    message: str | None                     # ... and why it holds counts other than the declared ones
    cells: dict[str, InstanceCounts]        # per cell that has any


@dataclass(frozen=True)
class RevisionRecord:
    app: str
    number: int
    created_at: float
    template: dict[str, Any]
    hash: str
    deployed: bool   # the app's deployed revision


async def list_apps(conn: AsyncConnection, name: str | None = None) -> list[AppRecord]:
    """Every app (or the one named) with its own instance counts per cell (its isolation groups' are theirs), in
    name order."""
    query = select(apps).order_by(apps.c.name)
    counts_query = (select(instances.c.app, instances.c.cell, instances.c.ready, func.count())
                    .where(instances.c.desired == "running", instances.c.group_code == "")
                    .group_by(instances.c.app, instances.c.cell, instances.c.ready))
    if name is not None:
        query, counts_query = query.where(apps.c.name == name), counts_query.where(instances.c.app == name)
    rows = (await conn.execute(query)).all()
    stranded_query = (select(instances.c.app, instances.c.id, instances.c.node)
                      .join(nodes, nodes.c.name == instances.c.node)
                      .where(instances.c.desired == "running", nodes.c.lifecycle == "NotReady")
                      .order_by(instances.c.id))
    if name is not None:
        stranded_query = stranded_query.where(instances.c.app == name)
    stranded: dict[str, list[str]] = {}
    for s in (await conn.execute(stranded_query)).all():
        stranded.setdefault(s.app, []).append(f"{s.id} waits for node {s.node} (NotReady)")
    per_app: dict[str, dict[str, tuple[int, int]]] = {}
    for app_name, cell, ready, count in (await conn.execute(counts_query)).all():
        total, ready_count = per_app.setdefault(app_name, {}).get(cell, (0, 0))
        per_app[app_name][cell] = (total + count, ready_count + (count if ready else 0))
    return [AppRecord(name=r.name, labels=r.labels, generation=r.generation, created_at=r.created_at,
                      resource_version=r.resource_version, spec=r.spec, latest_revision=r.latest_revision,
                      deployed_revision=r.deployed_revision, unplaced=r.status.get("unplaced"),
                      message=_waiting(stranded.get(r.name), r.spec) or r.status.get("message"),
                      cells={c: InstanceCounts(t, k) for c, (t, k) in per_app.get(r.name, {}).items()})
            for r in rows]


def _waiting(stranded: list[str] | None, spec: dict[str, Any]) -> str | None:
    """Instances of a NotReady node that are not replaced, and why: an ordered instance keeps its data on its
    node; any other waits because a release holds the app."""
    if not stranded:
        return None
    if ((spec.get("strategy") or {}).get("upgrade")) == "ordered":
        return ("; ".join(stranded) + ": ordered instances keep their data on their node, so they wait for it; "
                "`ballast instance move ID` moves one to another node of its cell without its data")
    return "; ".join(stranded) + ": replaced once the app's release ends"


async def list_revisions(conn: AsyncConnection, app: str, number: int | None = None) -> list[RevisionRecord]:
    """The app's revisions (or the one numbered), oldest first; NotFound if there is no such app."""
    deployed = (await conn.execute(select(apps.c.deployed_revision).where(apps.c.name == app))).scalar()
    if deployed is None:
        raise NotFound(f"app {app!r} not found")
    query = select(revisions).where(revisions.c.app == app).order_by(revisions.c.number)
    if number is not None:
        query = query.where(revisions.c.number == number)
    return [RevisionRecord(app=r.app, number=r.number, created_at=r.created_at, template=r.template, hash=r.hash,
                           deployed=r.number == deployed)
            for r in (await conn.execute(query)).all()]
