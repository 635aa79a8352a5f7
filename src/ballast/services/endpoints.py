"""The service registry as stored: snapshots for traffic components, their acknowledgements, reads.

Traffic components (each node's agent for its sidecars, each gateway)
long-poll `snapshot()`; the registry generation moves only when something a
component must apply changes (an endpoint's state or address, an app's
routes), so acknowledging a generation means "all of that is in effect".
Acknowledgements are telemetry of the protocol, not changes of intent, so
they are not audited; registering and deleting a gateway is.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.digests import digest
from ballast.core.endpoints import GATEWAY, EndpointRecord, EndpointState
from ballast.core.manifests import IsolationGroupSpec, stored_spec
from ballast.core.paging import Page, cut
from ballast.core.traffic import group_routing, routing
from ballast.errors import FieldProblem, InvalidInput, NotFound
from ballast.services import component_credentials, rules_in_effect
from ballast.store.engine import ACKS, EVERYTHING, REGISTRY, Store, Tx
from ballast.store.schema import apps, components, counters, endpoints, isolation_groups, nodes
from ballast.wire.registry import Endpoint as WireEndpoint
from ballast.wire.registry import GroupInEffect, Service, Snapshot
from ballast.wire.registry_delta import answer_for, remember

REGISTRY_COUNTER = "registry"
SNAPSHOT_TOPICS = frozenset({EVERYTHING, REGISTRY})


def endpoint_record(row: Any) -> EndpointRecord:
    return EndpointRecord(id=row.id, service=row.service, node=row.node, cell=row.cell, zone=row.zone, ip=row.ip,
                          port=row.port, revision=row.revision, state=EndpointState(row.state),
                          generation=row.generation, since=row.since, required=tuple(row.required or ()),
                          note=row.note)


async def bump_registry(tx: Tx) -> None:
    """Something components apply changed in this transaction: move the registry generation to it."""
    tx.touch(REGISTRY)
    moved = await tx.conn.execute(update(counters).where(counters.c.name == REGISTRY_COUNTER).values(value=tx.rv))
    if moved.rowcount == 0:
        await tx.conn.execute(insert(counters).values(name=REGISTRY_COUNTER, value=tx.rv))


async def generation(conn: AsyncConnection) -> int:
    value = (await conn.execute(select(counters.c.value).where(counters.c.name == REGISTRY_COUNTER))).scalar()
    return int(value or 0)


async def _snapshot(conn: AsyncConnection) -> Snapshot:
    gen = await generation(conn)
    eps: dict[str, list[WireEndpoint]] = {}
    for e in (await conn.execute(select(endpoints).where(endpoints.c.state != EndpointState.REMOVED.value)
                                 .order_by(endpoints.c.service, endpoints.c.id))).all():
        eps.setdefault(e.service, []).append(WireEndpoint(id=e.id, ip=e.ip, port=e.port, cell=e.cell, zone=e.zone,
                                                          state=e.state, revision=e.revision, group=e.group_code))
    rules, coloring = await rules_in_effect.in_effect(conn)
    groups: dict[str, list[GroupInEffect]] = {}
    for g in (await conn.execute(select(isolation_groups).order_by(isolation_groups.c.app,
                                                                   isolation_groups.c.code))).all():
        groups.setdefault(g.app, []).append(group_routing(IsolationGroupSpec.model_validate(g.spec), g.name))
    services = [Service.of(row.name, routing(stored_spec(row.spec)), tuple(eps.get(row.name, ())),
                           rules.get(row.name, ()), tuple(groups.get(row.name, ())))
                for row in (await conn.execute(select(apps.c.name, apps.c.spec).order_by(apps.c.name))).all()]
    return Snapshot(generation=gen, services=tuple(services), coloring=coloring)


# Snapshots kept by generation, the bases a delta can be made from: a component a few changes behind (it was
# applying while more came) still gets a delta; one further behind, or new, gets the whole snapshot.
DELTA_BASES = 16


async def snapshot(store: Store, known: int | None, timeout: float) -> dict[str, Any]:
    """Long-poll: the whole snapshot, once the registry generation differs from `known`, or at `timeout`."""
    return (await _current(store, known, timeout)).to_json()


async def snapshot_body(store: Store, known: int | None, timeout: float) -> tuple[int, bytes]:
    """The long-poll's answer as its generation and its JSON: a delta from `known` when that snapshot is still
    kept (wire/registry_delta.py), else the whole snapshot; each answer encoded once for every component that
    holds the same generation."""
    current = await _current(store, known, timeout)
    history: dict[int, Snapshot] = store.memo.setdefault("registry-history", {})
    base = known if known is not None and known in history and known != current.generation else None
    answers: dict[tuple[int | None, int], bytes] = store.memo.setdefault("registry-answers", {})
    key = (base, current.generation)
    if key not in answers:
        if len(answers) > 4 * DELTA_BASES:
            answers.clear()
        answers[key] = json.dumps(answer_for(base, current, history), separators=(",", ":")).encode()
    return current.generation, answers[key]


async def _current(store: Store, known: int | None, timeout: float) -> Snapshot:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        seen = store.topic_version(SNAPSHOT_TOPICS)
        async with store.read() as conn:
            current = await generation(conn)
            if current != known or loop.time() >= deadline or store.closing:
                return await _built(store, conn, current)
        await store.wait_for_topics(SNAPSHOT_TOPICS, seen, max(0.0, deadline - loop.time()))


async def _built(store: Store, conn: AsyncConnection, current: int) -> Snapshot:
    """The snapshot of generation `current`, built once however many components ask for it at the same moment
    (they all wake on the same change). The generation moves with every change a snapshot holds, so one of the
    same generation is the same snapshot."""
    history: dict[int, Snapshot] = store.memo.setdefault("registry-history", {})
    if current in history:
        return history[current]
    building = store.memo.get("registry-snapshot-building")
    if building is not None and building[0] == current:
        return await asyncio.shield(building[1])  # type: ignore[no-any-return]
    future: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
    store.memo["registry-snapshot-building"] = (current, future)
    try:
        built = await _snapshot(conn)
    except asyncio.CancelledError:
        future.cancel()
        raise
    except Exception as exc:
        future.set_exception(exc)
        future.exception()   # those waiting get it; nobody else needs to see it
        raise
    finally:
        if store.memo.get("registry-snapshot-building") == (current, future):
            del store.memo["registry-snapshot-building"]
    future.set_result(built)
    remember(history, built, DELTA_BASES)
    return built


async def acknowledge(tx: Tx, kind: str, name: str, acked: int, applied_hash: str, error: str,
                      token_id: str | None = None) -> dict[str, Any]:
    """A component says it applied the registry up to generation `acked`, with credential `token_id`."""
    tx.only(ACKS)
    current = (await tx.conn.execute(select(counters.c.value).where(counters.c.name == REGISTRY_COUNTER))).scalar() or 0
    if acked > current:
        raise InvalidInput("acknowledged a generation the registry has not reached", problems=[
            FieldProblem("generation", acked, f"at most the registry's generation {current}")])
    row = (await tx.conn.execute(select(components).where(components.c.kind == kind, components.c.name == name))).first()
    if row is None:
        if kind == GATEWAY:
            raise NotFound(f"gateway {name!r} is not registered")
        node = (await tx.conn.execute(select(nodes.c.ip).where(nodes.c.name == name))).first()
        if node is None:
            raise NotFound(f"node {name!r} is not registered")
        await tx.conn.execute(insert(components).values(kind=kind, name=name, address=node.ip, acked_generation=acked,
                                                        applied_hash=applied_hash, error=error,
                                                        registered_at=tx.now, last_seen=tx.now, acked_by=token_id))
    else:
        # Acknowledgements only move forward: a late answer for an older snapshot changes nothing.
        await tx.conn.execute(update(components).where(components.c.kind == kind, components.c.name == name).values(
            acked_generation=max(acked, row.acked_generation), applied_hash=applied_hash, error=error,
            last_seen=tx.now, acked_by=token_id))
    return {"kind": kind, "name": name, "acknowledged": acked}


async def register_gateway(tx: Tx, name: str, address: str, actor: str,
                           metrics_address: str | None = None) -> dict[str, Any]:
    row = (await tx.conn.execute(select(components).where(components.c.kind == GATEWAY,
                                                          components.c.name == name))).first()
    if row is None:
        await tx.conn.execute(insert(components).values(kind=GATEWAY, name=name, address=address, acked_generation=0,
                                                        applied_hash="", error="", registered_at=tx.now,
                                                        last_seen=tx.now, metrics_address=metrics_address))
        outcome = "created"
    else:
        await tx.conn.execute(update(components).where(components.c.kind == GATEWAY, components.c.name == name)
                              .values(address=address, last_seen=tx.now, metrics_address=metrics_address))
        outcome = "re-registered"
    await tx.audit(actor=actor, action="gateway.register", resource=f"Gateway/{name}",
                   before=_component_digest(row.address, row.metrics_address) if row is not None else "",
                   after=_component_digest(address, metrics_address),
                   detail={"outcome": outcome, "address": address, "metricsAddress": metrics_address})
    return {"name": name, "outcome": outcome}


def _component_digest(address: str, metrics_address: str | None) -> str:
    """What registering a traffic component records, as its audit digests cover it (not its acknowledgements)."""
    return digest({"address": address, "metricsAddress": metrics_address})


async def delete_component(tx: Tx, kind: str, name: str, actor: str) -> None:
    row = (await tx.conn.execute(select(components).where(components.c.kind == kind,
                                                          components.c.name == name))).first()
    if kind == GATEWAY and row is None:
        raise NotFound(f"gateway {name!r} not found")
    if row is not None:
        await tx.conn.execute(delete(components).where(components.c.kind == kind, components.c.name == name))
        revoked = await component_credentials.revoke(tx, GATEWAY, name, actor) if kind == GATEWAY else []
        await tx.audit(actor=actor, action=f"{kind}.delete", resource=f"{kind.capitalize()}/{name}",
                       before=_component_digest(row.address, row.metrics_address),
                       detail={"credentialsRevoked": revoked} if revoked else None)


@dataclass(frozen=True)
class GatewayRecord:
    name: str
    registered_at: float
    address: str
    metrics_address: str | None
    acked_generation: int
    registry_generation: int   # what it would have to acknowledge to be in sync
    applied_hash: str          # digest of the configuration it runs, as it acknowledged
    error: str
    last_seen: float
    seconds_since_seen: float  # at the moment of the read
    acked_by: str | None = None   # the credential (token id) that sent its last acknowledgement


async def list_gateways(conn: AsyncConnection, now: float, name: str | None = None) -> list[GatewayRecord]:
    """Every gateway (or the one named) as of `now`, with what it acknowledged of the registry, in name order."""
    query = select(components).where(components.c.kind == GATEWAY).order_by(components.c.name)
    if name is not None:
        query = query.where(components.c.name == name)
    current = await generation(conn)
    return [GatewayRecord(name=r.name, registered_at=r.registered_at, address=r.address,
                          metrics_address=r.metrics_address, acked_generation=r.acked_generation,
                          registry_generation=current, applied_hash=r.applied_hash, error=r.error,
                          last_seen=r.last_seen,
                          seconds_since_seen=now - r.last_seen, acked_by=r.acked_by)
            for r in (await conn.execute(query)).all()]


async def acknowledged(conn: AsyncConnection) -> dict[str, int]:
    """Every traffic component's acknowledged generation, by key ("mesh/node-a1", "gateway/edge")."""
    rows = (await conn.execute(select(components.c.kind, components.c.name, components.c.acked_generation))).all()
    return {f"{r.kind}/{r.name}": int(r.acked_generation) for r in rows}


async def acknowledging_credentials(conn: AsyncConnection) -> dict[str, str | None]:
    """Which credential (token id) sent each traffic component's last acknowledgement, by key ("mesh/node-a1")."""
    rows = (await conn.execute(select(components.c.kind, components.c.name, components.c.acked_by))).all()
    return {f"{r.kind}/{r.name}": r.acked_by for r in rows}


ENDPOINTS_LIST = "endpoints"     # the list's name in its continue tokens
ENDPOINT_KEY_SHAPE = (str, str)  # (cell, id): the list order


async def list_endpoints(conn: AsyncConnection, service: str, *, after: tuple[Any, ...] | None = None,
                         limit: int | None = None) -> Page[EndpointRecord]:
    """The service's endpoints by cell and id, after key `after`, at most `limit` (None: all); NotFound if there
    is no such app and none are left of it."""
    query = select(endpoints).where(endpoints.c.service == service)
    if after is not None:
        query = query.where(tuple_(endpoints.c.cell, endpoints.c.id) > tuple_(*after))
    query = query.order_by(endpoints.c.cell, endpoints.c.id)
    rows = (await conn.execute(query.limit(limit + 1) if limit is not None else query)).all()
    if not rows and after is None and (await conn.execute(select(apps.c.name).where(apps.c.name == service))).first() is None:
        raise NotFound(f"app {service!r} not found")
    page = cut(rows, limit, lambda r: (r.cell, r.id))
    return Page(tuple(endpoint_record(r) for r in page.items), page.next_after)
