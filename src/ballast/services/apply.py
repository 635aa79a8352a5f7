"""Declarative apply of manifests: all documents or none, each change audited.

Validation that needs the store (cells and artifacts referenced by apps must
exist, a cell's zone cannot move under its nodes) runs inside the same write transaction that
stores the result, so what was checked is what gets written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.authz import Action
from ballast.core.change_control import spec_changes
from ballast.core.digests import digest
from ballast.core.outbound import OutboundPolicy
from ballast.core.manifests import (AppServiceManifest, AppServiceSpec, CellManifest, ChangeWindowManifest,
                                    ColoringRuleManifest, IsolationGroupManifest, Manifest, ReleaseOrderManifest,
                                    ScheduledTaskManifest, TrafficRuleManifest, spec_json, stored_spec)
from ballast.core.traffic import routing
from ballast.errors import Conflict, FieldProblem, InvalidInput
from ballast.services import artifacts, change_control, isolation_groups, outbound, scheduled_tasks, traffic_rules
from ballast.services import orders as order_records
from ballast.services.endpoints import bump_registry
from ballast.store.engine import Store, Tx
from ballast.store.schema import apps, cells, nodes, revisions

Authorize = Callable[[Action, str | None], None]


@dataclass(frozen=True)
class ApplyResult:
    kind: str
    name: str
    outcome: str            # created | configured | unchanged
    revision: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "outcome": self.outcome}
        if self.revision is not None:
            out["revision"] = self.revision
        return out


class _DryRun(Exception):
    def __init__(self, results: list[ApplyResult]) -> None:
        self.results = results


async def apply(store: Store, manifests: list[Manifest], *, actor: str, authorize: Authorize,
                dry_run: bool = False, outbound_policy: OutboundPolicy = OutboundPolicy()) -> list[ApplyResult]:
    for m in manifests:  # authorize everything before touching anything
        if isinstance(m, CellManifest):
            authorize(Action.MANAGE_CELLS, None)
        elif isinstance(m, ChangeWindowManifest):
            authorize(Action.MANAGE_WINDOWS, None)
        elif isinstance(m, ReleaseOrderManifest):
            for r in m.spec.releases:  # the author must be allowed to change every app of the order
                authorize(Action.APPLY_APP, r.app)
        elif isinstance(m, (TrafficRuleManifest, ColoringRuleManifest)):
            for _, app in traffic_rules.governed_apps([m]):
                authorize(Action.APPLY_APP, app)
        elif isinstance(m, IsolationGroupManifest):
            authorize(Action.APPLY_APP, m.spec.app)
        elif isinstance(m, ScheduledTaskManifest):
            for app in scheduled_tasks.governed_apps([m]):   # the target app's operators manage its tasks
                authorize(Action.APPLY_APP, app)
        else:
            authorize(Action.APPLY_APP, m.metadata.name)
    try:
        async with store.write() as tx:
            await _check_references(tx.conn, manifests, outbound_policy)
            await _refuse_guarded_changes(tx, manifests)
            results = []
            for index, m in enumerate(manifests):
                if isinstance(m, CellManifest):
                    results.append(await _apply_cell(tx, m, actor))
                elif isinstance(m, AppServiceManifest):
                    results.append(await _apply_app(tx, m, actor))
            # Groups after apps, rules and tasks after groups: each names what the ones before define.
            for m in manifests:
                if isinstance(m, IsolationGroupManifest):
                    results.append(ApplyResult(m.kind, m.metadata.name, await isolation_groups.apply(tx, m, actor)))
            for m in manifests:
                if isinstance(m, (TrafficRuleManifest, ColoringRuleManifest)):
                    results.append(ApplyResult(m.kind, m.metadata.name, await traffic_rules.apply(tx, m, actor)))
                elif isinstance(m, ScheduledTaskManifest):
                    results.append(ApplyResult(m.kind, m.metadata.name,
                                               await scheduled_tasks.apply(tx, m, actor, authorize)))
            # Orders last: they resolve target revisions of apps applied in the same request.
            for index, m in enumerate(manifests):
                if isinstance(m, ChangeWindowManifest):
                    results.append(ApplyResult("ChangeWindow", m.metadata.name,
                                               await order_records.apply_window(tx, m, actor)))
                elif isinstance(m, ReleaseOrderManifest):
                    results.append(ApplyResult("ReleaseOrder", m.metadata.name,
                                               await order_records.apply_order(tx, m, actor, f"items[{index}]")))
            if dry_run:
                raise _DryRun(results)
    except _DryRun as dry:
        return dry.results
    return results


async def _check_references(conn: AsyncConnection, manifests: list[Manifest], policy: OutboundPolicy) -> None:
    known_cells = {r.name: r.zone for r in (await conn.execute(select(cells.c.name, cells.c.zone))).all()}
    problems: list[FieldProblem] = []
    for index, m in enumerate(manifests):
        if isinstance(m, CellManifest):
            old_zone = known_cells.get(m.metadata.name)
            if old_zone is not None and old_zone != m.spec.zone:
                used = (await conn.execute(select(nodes.c.name).where(nodes.c.cell == m.metadata.name).limit(1))).first()
                if used is not None:
                    problems.append(FieldProblem(f"items[{index}].spec.zone", m.spec.zone,
                                                 f"{old_zone!r}: cell {m.metadata.name!r} has nodes, its zone cannot change"))
            known_cells[m.metadata.name] = m.spec.zone
    for index, m in enumerate(manifests):
        if isinstance(m, AppServiceManifest) and m.spec.cells is not None:
            for cell in m.spec.cells:
                if cell not in known_cells:
                    problems.append(FieldProblem(f"items[{index}].spec.cells.{cell}", cell,
                                                 "an existing cell (one of: " + (", ".join(sorted(known_cells)) or "none defined") + ")"))
        if isinstance(m, AppServiceManifest) and m.spec.failover is not None:
            for k, cell in enumerate(m.spec.failover.cells):
                if cell not in known_cells:
                    problems.append(FieldProblem(f"items[{index}].spec.failover.cells[{k}]", cell,
                                                 "an existing cell (one of: " + (", ".join(sorted(known_cells)) or "none defined") + ")"))
    problems.extend(await _route_conflicts(conn, manifests))
    problems.extend(await _unknown_artifacts(conn, manifests))
    problems.extend(_outbound_problems(manifests, policy))
    problems.extend(await traffic_rules.problems(conn, manifests))
    problems.extend(await isolation_groups.problems(conn, manifests))
    problems.extend(await scheduled_tasks.problems(conn, manifests))
    if problems:
        raise InvalidInput(f"{len(problems)} problem(s) in manifests; nothing was applied", problems=problems)


async def _unknown_artifacts(conn: AsyncConnection, manifests: list[Manifest]) -> list[FieldProblem]:
    """A template must run a package the store holds: an agent could never fetch any other."""
    wanted = {index: m.spec.template.artifact for index, m in enumerate(manifests)
              if isinstance(m, AppServiceManifest) and m.spec.template.artifact is not None}
    have = await artifacts.held(conn, wanted.values())
    return [FieldProblem(f"items[{index}].spec.template.artifact", digest,
                         "an artifact the store holds (push it with 'ballast artifact push DIR')")
            for index, digest in wanted.items() if digest not in have]


def _outbound_problems(manifests: list[Manifest], policy: OutboundPolicy) -> list[FieldProblem]:
    """Verification URLs (an app's strategy, an order's overrides) the platform may not call."""
    problems = []
    for index, m in enumerate(manifests):
        if isinstance(m, AppServiceManifest):
            problems += outbound.verify_problems(policy, m.spec.strategy.verify, f"items[{index}].spec.strategy.verify")
        elif isinstance(m, ReleaseOrderManifest):
            for k, r in enumerate(m.spec.releases):
                problems += outbound.verify_problems(policy, getattr(r.strategy, "verify", None),
                                                     f"items[{index}].spec.releases[{k}].strategy.verify")
    return problems


async def _refuse_guarded_changes(tx: Tx, manifests: list[Manifest]) -> None:
    """An app under an active release order, or covered by a closed change window, refuses the changes they guard:
    the whole apply is refused (409) before anything is written."""
    refusals = []
    for m in manifests:
        if not isinstance(m, AppServiceManifest):
            continue
        row = (await tx.conn.execute(select(apps.c.spec).where(apps.c.name == m.metadata.name))).first()
        # The stored spec re-read with today's defaults, so a field added since it was stored is no change.
        before = stored_spec(row.spec).model_dump(mode="json", by_alias=True) if row is not None else None
        why = await change_control.refusal(tx.conn, m.metadata.name, spec_changes(before, spec_json(m)), tx.now)
        if why is not None:
            refusals.append(why)
    if refusals:
        raise Conflict("; ".join(refusals) + "; nothing was applied")


async def _route_conflicts(conn: AsyncConnection, manifests: list[Manifest]) -> list[FieldProblem]:
    """A gateway route (host + path prefix) belongs to one app."""
    declared = {m.metadata.name for m in manifests if isinstance(m, AppServiceManifest)}
    owner: dict[tuple[str, str], str] = {}
    for row in (await conn.execute(select(apps.c.name, apps.c.spec))).all():
        if row.name not in declared:
            for route in AppServiceSpec.model_validate(row.spec).expose or []:
                owner[(route.host, route.path.rstrip("/") or "/")] = row.name
    problems = []
    for index, m in enumerate(manifests):
        if not isinstance(m, AppServiceManifest):
            continue
        for k, route in enumerate(m.spec.expose or []):
            key = (route.host, route.path.rstrip("/") or "/")
            other = owner.setdefault(key, m.metadata.name)
            if other != m.metadata.name:
                problems.append(FieldProblem(f"items[{index}].spec.expose[{k}]", {"host": route.host, "path": route.path},
                                             f"a host and path not already routed to app {other!r}"))
    return problems


async def _apply_cell(tx: Tx, m: CellManifest, actor: str) -> ApplyResult:
    name, spec = m.metadata.name, spec_json(m)
    row = (await tx.conn.execute(select(cells).where(cells.c.name == name))).first()
    resource = f"Cell/{name}"
    if row is None:
        await tx.conn.execute(insert(cells).values(name=name, zone=m.spec.zone, labels=m.metadata.labels, spec=spec,
                                                   created_at=tx.now, resource_version=tx.rv))
        await tx.audit(actor=actor, action="apply", resource=resource, after=digest(spec), detail={"outcome": "created"})
        return ApplyResult("Cell", name, "created")
    if row.spec == spec and row.labels == m.metadata.labels:
        await tx.audit(actor=actor, action="apply", resource=resource, before=digest(row.spec), after=digest(spec),
                       detail={"outcome": "unchanged"})
        return ApplyResult("Cell", name, "unchanged")
    await tx.conn.execute(update(cells).where(cells.c.name == name).values(
        zone=m.spec.zone, labels=m.metadata.labels, spec=spec, resource_version=tx.rv))
    await tx.audit(actor=actor, action="apply", resource=resource, before=digest(row.spec), after=digest(spec),
                   detail={"outcome": "configured"})
    return ApplyResult("Cell", name, "configured")


async def _revision_for(tx: Tx, app: str, template: dict[str, Any]) -> int:
    """Identical templates share a revision; a new template gets the next number."""
    template_hash = digest(template)
    existing = (await tx.conn.execute(select(revisions.c.number).where(
        revisions.c.app == app, revisions.c.hash == template_hash))).first()
    if existing is not None:
        return int(existing.number)
    numbers = (await tx.conn.execute(select(revisions.c.number).where(revisions.c.app == app))).scalars().all()
    number = max(numbers, default=0) + 1
    await tx.conn.execute(insert(revisions).values(app=app, number=number, hash=template_hash, template=template,
                                                   created_at=tx.now))
    return number


async def _apply_app(tx: Tx, m: AppServiceManifest, actor: str) -> ApplyResult:
    name, spec = m.metadata.name, spec_json(m)
    resource = f"AppService/{name}"
    row = (await tx.conn.execute(select(apps).where(apps.c.name == name))).first()
    if row is None:
        number = await _revision_for(tx, name, spec["template"])
        await tx.conn.execute(insert(apps).values(
            name=name, spec=spec, labels=m.metadata.labels, generation=1, latest_revision=number,
            deployed_revision=number, status={}, created_at=tx.now, updated_at=tx.now, resource_version=tx.rv))
        await tx.audit(actor=actor, action="apply", resource=resource, after=digest(spec),
                       detail={"outcome": "created", "generation": 1, "revision": number})
        await bump_registry(tx)  # a new service for every traffic component
        return ApplyResult("AppService", name, "created", number)
    if row.spec == spec and row.labels == m.metadata.labels:
        await tx.audit(actor=actor, action="apply", resource=resource, before=digest(row.spec), after=digest(spec),
                       detail={"outcome": "unchanged", "generation": row.generation})
        return ApplyResult("AppService", name, "unchanged", row.latest_revision)
    number = await _revision_for(tx, name, spec["template"])
    generation = row.generation + 1
    if number != row.latest_revision:
        await traffic_rules.revisions_moved(tx, name)   # `latest` now means another revision
    if routing(AppServiceSpec.model_validate(row.spec)) != routing(m.spec):
        await bump_registry(tx)
    await tx.conn.execute(update(apps).where(apps.c.name == name).values(
        spec=spec, labels=m.metadata.labels, generation=generation, latest_revision=number,
        updated_at=tx.now, resource_version=tx.rv))
    await tx.audit(actor=actor, action="apply", resource=resource, before=digest(row.spec), after=digest(spec),
                   detail={"outcome": "configured", "generation": generation, "revision": number})
    return ApplyResult("AppService", name, "configured", number)
