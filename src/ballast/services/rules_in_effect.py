"""The rules as traffic components receive them in the registry snapshot: `stable` and `latest` resolved."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.store.schema import apps, traffic_rules
from ballast.wire.traffic import ColoringInEffect, ColoringRuleSpec, Destination, RuleInEffect, TrafficRuleSpec

TRAFFIC_RULE = "TrafficRule"


def _resolve(spec: TrafficRuleSpec, stable: int, latest: int) -> TrafficRuleSpec:
    def one(d: Destination) -> Destination:
        if d.revision == "stable":
            return d.model_copy(update={"revision": stable})
        if d.revision == "latest":
            return d.model_copy(update={"revision": latest})
        return d
    routes = [r.model_copy(update={"to": [one(d) for d in r.to]}) for r in spec.routes]
    return spec.model_copy(update={"routes": routes})


async def in_effect(conn: AsyncConnection) -> tuple[dict[str, tuple[RuleInEffect, ...]], tuple[ColoringInEffect, ...]]:
    """The rules as components route by them: by service, with `stable` and `latest` resolved; and the marking."""
    revs = {r.name: (r.deployed_revision, r.latest_revision) for r in (await conn.execute(
        select(apps.c.name, apps.c.deployed_revision, apps.c.latest_revision))).all()}
    by_service: dict[str, list[RuleInEffect]] = {}
    coloring = []
    for row in (await conn.execute(select(traffic_rules).order_by(traffic_rules.c.name))).all():
        if row.kind == TRAFFIC_RULE:
            stable, latest = revs.get(row.service, (0, 0))
            spec = _resolve(TrafficRuleSpec.model_validate(row.spec), stable or latest or 0, latest or 0)
            by_service.setdefault(row.service, []).append(RuleInEffect(name=row.name, generation=row.generation,
                                                                       spec=spec))
        else:
            coloring.append(ColoringInEffect(name=row.name, generation=row.generation,
                                             spec=ColoringRuleSpec.model_validate(row.spec)))
    return {k: tuple(v) for k, v in by_service.items()}, tuple(coloring)
