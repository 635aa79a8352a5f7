"""`GET /metrics`: the control plane's state in Prometheus text format, read from the store per scrape.

Releases (phase, groups done of all), orders (phase), instances (by app, cell, revision, readiness),
registry endpoints (by service and state) and the audit chain's length. A scrape needs a token that may
read, like every API call (Prometheus: `authorization: {credentials: TOKEN}`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from ballast.api.deps import principal, require, store_of
from ballast.core.authz import Action
from ballast.core.orders import OrderPhase
from ballast.core.release_engine import Phase
from ballast.errors import NotFound
from ballast.services import request_metrics
from ballast.services.access import Principal
from ballast.store.schema import apps, audit, endpoints, instances, orders, releases

router = APIRouter()


class _Snapshot(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.families


async def _families(conn: Any) -> list[GaugeMetricFamily]:
    latest = (await conn.execute(select(releases).where(releases.c.id.in_(
        select(func.max(releases.c.id)).group_by(releases.c.app))))).all()
    phase = GaugeMetricFamily("ballast_release_phase", "1 for the phase the newest release of each app is in",
                              labels=["app", "release", "kind", "phase"])
    done = GaugeMetricFamily("ballast_release_completed_groups", "groups of the newest release that are done",
                             labels=["app", "release"])
    total = GaugeMetricFamily("ballast_release_groups", "groups in the newest release's plan", labels=["app", "release"])
    target = GaugeMetricFamily("ballast_release_target_revision", "the revision the newest release goes to",
                               labels=["app", "release"])
    for r in latest:
        for p in Phase:
            phase.add_metric([r.app, str(r.id), r.kind, p.value], 1.0 if r.phase == p.value else 0.0)
        done.add_metric([r.app, str(r.id)], r.completed_groups)
        total.add_metric([r.app, str(r.id)], len(r.plan))
        target.add_metric([r.app, str(r.id)], r.to_revision)
    order_phase = GaugeMetricFamily("ballast_order_phase", "1 for the phase each release order is in",
                                    labels=["order", "phase", "emergency"])
    for o in (await conn.execute(select(orders.c.name, orders.c.phase, orders.c.emergency))).all():
        for op in OrderPhase:
            order_phase.add_metric([o.name, op.value, str(o.emergency).lower()], 1.0 if o.phase == op.value else 0.0)
    inst = GaugeMetricFamily("ballast_instances", "running instances", labels=["app", "cell", "revision", "ready"])
    counts = Counter((i.app, i.cell, str(i.revision), str(i.ready).lower()) for i in (await conn.execute(
        select(instances.c.app, instances.c.cell, instances.c.revision, instances.c.ready)
        .where(instances.c.desired == "running"))).all())
    for key, n in sorted(counts.items()):
        inst.add_metric(list(key), n)
    eps = GaugeMetricFamily("ballast_endpoints", "registry endpoints", labels=["service", "state"])
    for (service, state), n in sorted(Counter((e.service, e.state) for e in (await conn.execute(
            select(endpoints.c.service, endpoints.c.state))).all()).items()):
        eps.add_metric([service, state], n)
    records = GaugeMetricFamily("ballast_audit_records", "records in the audit chain")
    records.add_metric([], (await conn.execute(select(func.count()).select_from(audit))).scalar_one())
    return [phase, done, total, target, order_phase, inst, eps, records]


@router.get("/metrics", tags=["metrics"], include_in_schema=False)
async def metrics(request: Request, who: Principal = Depends(principal)) -> Response:
    require(who, Action.READ)
    async with store_of(request).read() as conn:
        families = await _families(conn)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/apps/{app}/metrics", tags=["metrics"])
async def app_request_metrics(app: str, request: Request,
                              by: Literal["revision", "cell", "instance"] = Query("revision"),
                              window: float = Query(30.0, gt=0, le=300, description="seconds"),
                              source: Literal["sidecar", "gateway"] = Query("sidecar"),
                              who: Principal = Depends(principal)) -> dict[str, Any]:
    """What the app's instances served in the last `window` seconds, grouped `by` revision, cell or instance, as
    their sidecars counted it (or the gateways); unreadable sources are named."""
    require(who, Action.READ, app)
    async with store_of(request).read() as conn:
        row = (await conn.execute(select(apps.c.deployed_revision, apps.c.latest_revision)
                                  .where(apps.c.name == app))).first()
        if row is None:
            raise NotFound(f"app {app!r} not found")
        sources = await request_metrics.sources(conn, app, source)
    readings = await request_metrics.read(sources, app, window)
    return {"app": app, "by": by, "source": source, "windowSeconds": window,
            "deployedRevision": row.deployed_revision, "latestRevision": row.latest_revision,
            "rows": request_metrics.rows(readings, by, window), "sources": [r.to_json() for r in readings]}
