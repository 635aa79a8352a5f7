"""What `GET /metrics` reports of the control plane's own state, read from the store per scrape.

The newest release of each app (its phase, groups, target, and the newest verification of each group with
the numbers it was judged on), every order's phase, running instances, registry endpoints and the audit
chain's length, as frozen values. The API layer turns them into Prometheus families; this module is where
the tables are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.services import verifications
from ballast.store.schema import audit, endpoints, instances, orders, releases


@dataclass(frozen=True)
class GroupVerification:
    """The newest verification attempt of one group."""

    group: str                     # the group's name in the plan (its index when the plan has none)
    state: str
    result: dict[str, Any] | None  # per side ("canary", "baseline"): the numbers the verdict was judged on


@dataclass(frozen=True)
class NewestRelease:
    app: str
    id: int
    kind: str
    phase: str
    completed_groups: int
    groups: int
    to_revision: int
    verifications: tuple[GroupVerification, ...]   # by group index


@dataclass(frozen=True)
class OrderPhaseRecord:
    name: str
    phase: str
    emergency: bool


@dataclass(frozen=True)
class InstanceKey:
    app: str
    cell: str
    revision: int
    ready: bool


@dataclass(frozen=True)
class ControlPlaneState:
    releases: tuple[NewestRelease, ...]
    orders: tuple[OrderPhaseRecord, ...]
    instances: dict[InstanceKey, int]          # running instances
    endpoints: dict[tuple[str, str], int]      # (service, state) -> registry endpoints
    audit_records: int


async def read(conn: AsyncConnection) -> ControlPlaneState:
    latest = (await conn.execute(select(releases).where(releases.c.id.in_(
        select(func.max(releases.c.id)).group_by(releases.c.app))))).all()
    order_rows = (await conn.execute(select(orders.c.name, orders.c.phase, orders.c.emergency))).all()
    running = (await conn.execute(select(instances.c.app, instances.c.cell, instances.c.revision, instances.c.ready)
                                  .where(instances.c.desired == "running"))).all()
    eps = (await conn.execute(select(endpoints.c.service, endpoints.c.state))).all()
    records = (await conn.execute(select(func.count()).select_from(audit))).scalar_one()
    return ControlPlaneState(
        releases=tuple([await _newest_release(conn, r) for r in latest]),
        orders=tuple(OrderPhaseRecord(o.name, o.phase, o.emergency) for o in order_rows),
        instances=dict(Counter(InstanceKey(i.app, i.cell, i.revision, i.ready) for i in running)),
        endpoints=dict(Counter((e.service, e.state) for e in eps)),
        audit_records=int(records))


async def _newest_release(conn: AsyncConnection, r: Any) -> NewestRelease:
    attempts = await verifications.rows(conn, r.id)
    names = {g["index"]: g["name"] for g in r.plan}
    groups = []
    for index in sorted({a.group_index for a in attempts}):
        newest = verifications.latest(attempts, index)
        assert newest is not None
        groups.append(GroupVerification(names.get(index, str(index)), newest.state, newest.result))
    return NewestRelease(app=r.app, id=r.id, kind=r.kind, phase=r.phase, completed_groups=r.completed_groups,
                         groups=len(r.plan), to_revision=r.to_revision, verifications=tuple(groups))
