"""TrafficRules and ColoringRules as stored: checks that need the store, writes, reads, what components route by.

A rule change moves the registry generation in the transaction that stores it, and the rule records that
generation: it is in effect once every traffic component acknowledged it (the same protocol as endpoints).
Components receive each rule whole, in the snapshot, together with the subsets it names (which are built
from the endpoints of the same snapshot), so no component ever holds a route without its subset: a rule and
its subsets arrive, and go, in one generation. A subset without a ready endpoint sends its calls to the
service's whole pool (or 503, `fallback: fail`) until one is ready and acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core import release_traffic
from ballast.core.digests import digest
from ballast.core.manifests import (API_VERSION, AppServiceManifest, ColoringRuleManifest, Manifest,
                                    TrafficRuleManifest)
from ballast.core.routing_rules import Subset
from ballast.errors import Conflict, FieldProblem, NotFound
from ballast.services.endpoints import bump_registry
from ballast.services.rules_in_effect import in_effect
from ballast.store.engine import Tx
from ballast.store.schema import apps, cells, components, counters, endpoints, isolation_groups, revisions, traffic_rules
from ballast.wire.traffic import GATEWAY_CALLER, RuleInEffect, TrafficRuleSpec

TRAFFIC_RULE = "TrafficRule"
COLORING_RULE = "ColoringRule"
RELEASE_OWNER = "release/"   # core/release_traffic.owner()


def _scope(spec: TrafficRuleSpec) -> str:
    callers = spec.callers()
    return "every caller" if callers is None else "calls from " + ", ".join(callers)


def _overlap(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> set[str] | None:
    """The callers both scopes name (None: both name everyone); empty when they do not overlap."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        return set()   # a caller-specific rule beats the everyone rule: no ambiguity
    return set(a) & set(b)


async def problems(conn: AsyncConnection, manifests: list[Manifest]) -> list[FieldProblem]:
    """What only the store can tell of the rules among `manifests` (apps in the same apply count as existing)."""
    app_rows = {r.name: r for r in (await conn.execute(select(apps.c.name, apps.c.deployed_revision,
                                                              apps.c.latest_revision))).all()}
    known_apps = set(app_rows) | {m.metadata.name for m in manifests if isinstance(m, AppServiceManifest)}
    known_cells = set((await conn.execute(select(cells.c.name))).scalars().all())
    out: list[FieldProblem] = []
    rows = (await conn.execute(select(traffic_rules.c.kind, traffic_rules.c.name, traffic_rules.c.service,
                                      traffic_rules.c.spec, traffic_rules.c.owner))).all()
    owners = {(r.kind, r.name): r.owner for r in rows}
    stored = {r.name: (r.service, TrafficRuleSpec.model_validate(r.spec), r.owner) for r in rows
              if r.kind == TRAFFIC_RULE}
    declared = {m.metadata.name: (m.spec.service, m.spec, "") for m in manifests if isinstance(m, TrafficRuleManifest)}
    merged = {**stored, **declared}
    for index, m in enumerate(manifests):
        where = f"items[{index}]"
        owner = owners.get((m.kind, m.metadata.name), "")
        if isinstance(m, (TrafficRuleManifest, ColoringRuleManifest)) and owner.startswith(RELEASE_OWNER):
            out.append(FieldProblem(f"{where}.metadata.name", m.metadata.name,
                                    f"a name not taken by the rule {owner} owns (it goes with it)"))
        if isinstance(m, TrafficRuleManifest):
            out += await _rule_problems(conn, m, where, known_apps, known_cells, app_rows)
            for other, (service, spec, _) in sorted(merged.items()):
                if other == m.metadata.name or service != m.spec.service:
                    continue
                both = _overlap(m.spec.callers(), spec.callers())
                if both is None or both:
                    out.append(FieldProblem(f"{where}.spec.from", m.spec.model_dump(by_alias=True)["from"],
                                            f"a caller scope no other rule of service {m.spec.service!r} covers: "
                                            f"rule {other!r} already governs {_scope(spec)}"))
        elif isinstance(m, ColoringRuleManifest):
            for k, app in enumerate(m.spec.at.apps):
                if app != GATEWAY_CALLER and app not in known_apps:
                    out.append(FieldProblem(f"{where}.spec.at.apps[{k}]", app,
                                            f"an existing app, or {GATEWAY_CALLER!r} for the gateway"))
    return out


async def _rule_problems(conn: AsyncConnection, m: TrafficRuleManifest, where: str, known_apps: set[str],
                         known_cells: set[str], app_rows: dict[str, Any]) -> list[FieldProblem]:
    out = []
    service = m.spec.service
    if service not in known_apps:
        out.append(FieldProblem(f"{where}.spec.service", service,
                                "an existing app (one of: " + (", ".join(sorted(known_apps)[:20]) or "none") + ")"))
        return out
    for k, caller in enumerate(m.spec.from_.apps if m.spec.from_ is not None else []):
        if caller != GATEWAY_CALLER and caller not in known_apps:
            out.append(FieldProblem(f"{where}.spec.from.apps[{k}]", caller,
                                    f"an existing app, or {GATEWAY_CALLER!r} for the gateway"))
    numbers = set((await conn.execute(select(revisions.c.number).where(revisions.c.app == service))).scalars().all())
    for r, route in enumerate(m.spec.routes):
        for d, dest in enumerate(route.to):
            path = f"{where}.spec.routes[{r}].to[{d}]"
            if isinstance(dest.revision, int) and dest.revision not in numbers and service in app_rows:
                out.append(FieldProblem(f"{path}.revision", dest.revision,
                                        f"a revision of {service!r} (one of: "
                                        + ", ".join(str(n) for n in sorted(numbers)) + ", stable, latest)"))
            for c, cell in enumerate(dest.cells or []):
                if cell not in known_cells:
                    out.append(FieldProblem(f"{path}.cells[{c}]", cell, "an existing cell"))
    return out


async def apply(tx: Tx, m: TrafficRuleManifest | ColoringRuleManifest, actor: str, owner: str = "") -> str:
    """Store one rule (created | configured | unchanged), moving the registry generation when it changed."""
    kind = m.kind
    name = m.metadata.name
    spec = m.spec.model_dump(mode="json", by_alias=True)
    service = m.spec.service if isinstance(m, TrafficRuleManifest) else None
    row = (await tx.conn.execute(select(traffic_rules).where(traffic_rules.c.kind == kind,
                                                             traffic_rules.c.name == name))).first()
    resource = f"{kind}/{name}"
    if row is not None and row.spec == spec:
        await tx.audit(actor=actor, action="apply", resource=resource, before=digest(row.spec), after=digest(spec),
                       detail={"outcome": "unchanged", "generation": row.generation})
        return "unchanged"
    await bump_registry(tx)
    if row is None:
        await tx.conn.execute(insert(traffic_rules).values(kind=kind, name=name, service=service, spec=spec, owner=owner,
                                                           generation=tx.rv, created_at=tx.now, updated_at=tx.now,
                                                           resource_version=tx.rv))
        outcome = "created"
    else:
        await tx.conn.execute(update(traffic_rules).where(traffic_rules.c.kind == kind, traffic_rules.c.name == name)
                              .values(service=service, spec=spec, generation=tx.rv, updated_at=tx.now,
                                      resource_version=tx.rv))
        outcome = "configured"
    await tx.audit(actor=actor, action="apply", resource=resource, before=digest(row.spec) if row is not None else "",
                   after=digest(spec), detail={"outcome": outcome, "generation": tx.rv,
                                               **({"owner": owner} if owner else {})})
    return outcome


async def stored_kind_service(tx: Tx, kind: str, name: str) -> tuple[str | None, dict[str, Any], str]:
    row = (await tx.conn.execute(select(traffic_rules).where(traffic_rules.c.kind == kind,
                                                             traffic_rules.c.name == name))).first()
    if row is None:
        raise NotFound(f"{kind} {name!r} not found")
    return row.service, row.spec, row.owner


async def delete_rule(tx: Tx, kind: str, name: str, actor: str, *, owner: str = "") -> None:
    """Remove a rule; its routes leave every component with the generation this moves to."""
    _, spec, stored_owner = await stored_kind_service(tx, kind, name)
    if stored_owner != owner:
        raise Conflict(f"{kind} {name!r} belongs to {stored_owner}; it goes when that does")
    await tx.conn.execute(delete(traffic_rules).where(traffic_rules.c.kind == kind, traffic_rules.c.name == name))
    await bump_registry(tx)
    await tx.audit(actor=actor, action="delete", resource=f"{kind}/{name}", before=digest(spec),
                   detail={"generation": tx.rv, **({"owner": owner} if owner else {})})


async def revisions_moved(tx: Tx, app: str) -> None:
    """The app's deployed or newest revision changed: rules naming `stable` or `latest` now mean another one."""
    governed = (await tx.conn.execute(select(traffic_rules.c.name).where(
        traffic_rules.c.kind == TRAFFIC_RULE, traffic_rules.c.service == app).limit(1))).first()
    if governed is not None:
        await bump_registry(tx)


@dataclass(frozen=True)
class SubsetState:
    subset: Subset
    ready: int
    total: int
    group_missing: bool = False    # it names an isolation group the service does not have


async def _subset_states(conn: AsyncConnection, rule: RuleInEffect) -> list[list[SubsetState]]:
    rows = (await conn.execute(select(endpoints.c.revision, endpoints.c.cell, endpoints.c.state,
                                      endpoints.c.group_code).where(
        endpoints.c.service == rule.spec.service, endpoints.c.state != "removed"))).all()
    codes = set((await conn.execute(select(isolation_groups.c.code).where(
        isolation_groups.c.app == rule.spec.service))).scalars())
    out = []
    for route in rule.spec.routes:
        states = []
        for d in route.to:
            s = Subset.of(d)
            chosen = [r for r in rows if r.group_code == s.group and (s.revision is None or r.revision == s.revision)
                      and (s.cells is None or r.cell in s.cells)]
            states.append(SubsetState(s, sum(1 for r in chosen if r.state == "ready"), len(chosen),
                                      group_missing=bool(s.group) and s.group not in codes))
        out.append(states)
    return out


async def listing(conn: AsyncConnection, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Rules of `kind` (or the one named) with their generation and which components acknowledged it."""
    query = select(traffic_rules).where(traffic_rules.c.kind == kind).order_by(traffic_rules.c.name)
    if name is not None:
        query = query.where(traffic_rules.c.name == name)
    rows = (await conn.execute(query)).all()
    if name is not None and not rows:
        raise NotFound(f"{kind} {name!r} not found")
    acks = {f"{r.kind}/{r.name}": int(r.acked_generation) for r in (await conn.execute(
        select(components.c.kind, components.c.name, components.c.acked_generation))).all()}
    resolved, _ = await in_effect(conn)
    out = []
    for row in rows:
        acknowledged = sorted(k for k, g in acks.items() if g >= row.generation)
        pending = sorted(k for k, g in acks.items() if g < row.generation)
        item: dict[str, Any] = {"kind": kind, "name": row.name, "spec": row.spec, "owner": row.owner or None,
                                "generation": row.generation, "inEffect": not pending, "acknowledged": acknowledged,
                                "pending": pending, "createdAt": row.created_at, "updatedAt": row.updated_at}
        if kind == TRAFFIC_RULE:
            rule = next((r for r in resolved.get(row.service, ()) if r.name == row.name), None)
            if rule is not None:
                item["routes"] = [
                    {"name": route.name, "to": [
                        {"subset": st.subset.describe(), "weight": d.weight, "readyEndpoints": st.ready,
                         "endpoints": st.total, "fallback": st.ready == 0,
                         **({"status": f"no such group: {rule.spec.service} has no isolation group of code "
                                       f"{st.subset.group}"} if st.group_missing else {})}
                        for d, st in zip(route.to, states)],
                     "fallbackTo": "the service's default pool" if route.fallback == "default" else "503"}
                    for route, states in zip(rule.spec.routes, await _subset_states(conn, rule))]
        out.append(item)
    return out


def governed_by(spec: dict[str, Any]) -> list[str | None]:
    """The apps a rule (its spec as stored) governs, whose operators may change it: a TrafficRule's service; every
    marking app of a ColoringRule (None for the gateway, which only an unscoped binding may change)."""
    if "service" in spec:
        return [spec["service"]]
    return [None if a == GATEWAY_CALLER else a for a in spec["at"]["apps"]]


def governed_apps(manifests: Iterable[Manifest]) -> list[tuple[str, str | None]]:
    """(kind, app) pairs an author must be allowed to change (`governed_by` of each rule among `manifests`)."""
    return [(m.kind, app) for m in manifests if isinstance(m, (TrafficRuleManifest, ColoringRuleManifest))
            for app in governed_by(m.spec.model_dump(mode="json", by_alias=True))]


# --- the rule a release owns (core/release_traffic.py decides it) ------------------------------------------------
def _restored_key(release_id: int) -> str:
    return f"release-routing/{release_id}"


@dataclass(frozen=True)
class StoredRule:
    spec: dict[str, Any]
    owner: str


async def release_rule(conn: AsyncConnection, app: str) -> StoredRule | None:
    """The rule stored under the name a release of `app` routes by (whoever owns it)."""
    row = (await conn.execute(select(traffic_rules.c.spec, traffic_rules.c.owner).where(
        traffic_rules.c.kind == TRAFFIC_RULE, traffic_rules.c.name == release_traffic.rule_name(app)))).first()
    return StoredRule(row.spec, row.owner) if row is not None else None


def release_rule_differs(stored: StoredRule | None, wanted: dict[str, Any] | None) -> bool:
    """Must the release's rule change to be `wanted` (None: no release-owned rule)? Pure."""
    if wanted is None:
        return stored is not None and stored.owner.startswith(RELEASE_OWNER)
    return stored is None or stored.spec != TrafficRuleSpec.model_validate(wanted).model_dump(mode="json",
                                                                                             by_alias=True)


async def sync_release_rule(tx: Tx, release_id: int, app: str, wanted: dict[str, Any] | None, actor: str) -> None:
    """Make the release's rule what it wants now: applied (created or changed), or removed (and the generation
    of the removal recorded: a rollback waits until every component acknowledged it)."""
    name, owner = release_traffic.rule_name(app), release_traffic.owner(release_id)
    row = (await tx.conn.execute(select(traffic_rules.c.owner).where(traffic_rules.c.kind == TRAFFIC_RULE,
                                                                     traffic_rules.c.name == name))).first()
    if wanted is not None:
        if row is not None and row.owner != owner:
            return   # another release's (or a person's) rule of that name stays; the start refused that case
        manifest = TrafficRuleManifest.model_validate({"apiVersion": API_VERSION, "kind": TRAFFIC_RULE,
                                                       "metadata": {"name": name}, "spec": wanted})
        await apply(tx, manifest, actor, owner=owner)
    elif row is not None and row.owner.startswith(RELEASE_OWNER):
        await delete_rule(tx, TRAFFIC_RULE, name, actor, owner=row.owner)
        key = _restored_key(int(row.owner.removeprefix(RELEASE_OWNER)))
        moved = await tx.conn.execute(update(counters).where(counters.c.name == key).values(value=tx.rv))
        if moved.rowcount == 0:
            await tx.conn.execute(insert(counters).values(name=key, value=tx.rv))


async def routing_pending(conn: AsyncConnection, release_id: int) -> list[str]:
    """Components that have not yet acknowledged the removal of the release's rule (none: it is gone everywhere,
    or there never was one)."""
    removed = (await conn.execute(select(counters.c.value).where(
        counters.c.name == _restored_key(release_id)))).scalar()
    if removed is None:
        return []
    rows = (await conn.execute(select(components.c.kind, components.c.name, components.c.acked_generation))).all()
    return sorted(f"{r.kind}/{r.name}" for r in rows if r.acked_generation < removed)


async def refuse_release_routing(conn: AsyncConnection, app: str) -> None:
    """A release that routes its beta traffic needs the app's every-caller scope free."""
    for row in (await conn.execute(select(traffic_rules.c.name, traffic_rules.c.spec, traffic_rules.c.owner).where(
            traffic_rules.c.kind == TRAFFIC_RULE, traffic_rules.c.service == app))).all():
        if TrafficRuleSpec.model_validate(row.spec).callers() is None and not row.owner.startswith(RELEASE_OWNER):
            raise Conflict(f"TrafficRule {row.name!r} governs every caller of {app!r}; a release with "
                           f"strategy.traffic routes the beta traffic itself: delete the rule or scope it with "
                           f"'from', or release without strategy.traffic")
