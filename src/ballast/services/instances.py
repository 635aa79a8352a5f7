"""Instances as people read them: the values `GET /v1/instances` renders, a page at a time or as a watch.

The scheduler and the release engine create instance records, agents report on them, the registry grants
them and deletes those that are gone; this module reads, inside the caller's connection, and returns frozen
values. Every filter, and the reader's authorization (the apps they may read), is part of the SQL query, so a
page is full and holds nothing the reader may not see. Pages are not a snapshot (see core/paging.py).

A watch answers what changed after a resource version: instance rows carry the version of their last change;
a deleted row leaves a tombstone (`record_deletions`, called by the transaction that deletes it), pruned by age.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Sequence

from sqlalchemy import BigInteger, ColumnElement, Float, Select, and_, delete, func, insert, literal, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.nodes import DEFAULT_NODE_GRACE_SECONDS, InstanceReadiness, instance_readiness
from ballast.core.paging import Key, Page, cut
from ballast.errors import Gone
from ballast.store.engine import EVERYTHING, GRANTS, INSTANCE_STATUS, INTENT, Store, Tx
from ballast.store.schema import counters, instance_tombstones, instances, nodes

LIST = "instances"                 # the list's name in its continue tokens
KEY_SHAPE = (str, str, str)        # (app, cell, id): the list order
PRUNED = "instance-tombstones-pruned"   # counters row: the highest version of a tombstone pruned
TOMBSTONE_SECONDS = 3600.0         # how long a deletion is remembered for watches
# The writes that may change instance rows; any other write (a heartbeat, an acknowledgement) wakes no watch.
# A watch re-reads at its timeout anyway, so a write that changed instances under another topic is late, not lost.
WATCH_TOPICS = frozenset({EVERYTHING, INSTANCE_STATUS, GRANTS, INTENT})
# Instances are created with created_seq = (creating transaction's version) * 10,000 + n (controllers/scheduler.py,
# controllers/releases.py): a watch tells ADDED from MODIFIED by it.
_CREATED_SEQ_PER_VERSION = 10_000


@dataclass(frozen=True)
class InstanceRecord:
    id: str
    app: str
    created_at: float
    updated_at: float
    resource_version: int
    # The intent: what the control plane wants the instance to run.
    revision: int
    desired: str
    # Where it is placed.
    node: str
    cell: str
    zone: str
    ip: str
    port: int | None
    # What its agent reports (running_revision is None until it first reports).
    running_revision: int | None
    phase: str
    ready: bool                      # as last reported
    readiness: InstanceReadiness     # what is known now: Unknown once its node stopped heartbeating
    restarts: int
    pid: int | None
    message: str
    mesh_port: int | None
    drain: dict[str, Any] | None
    # What the agent has been told: the intent, once the drain protocol allowed it.
    granted_revision: int
    granted_desired: str
    group: str = ""          # its isolation group's code; "": the app's own instances
    created_version: int = 0  # the version of the transaction that created it


@dataclass(frozen=True)
class InstanceFilter:
    """What a list or watch is narrowed to; None: any. All given are ANDed. Field names are the API's."""
    app: str | None = None
    node: str | None = None
    cell: str | None = None
    revision: int | None = None
    phase: str | None = None
    ready: bool | None = None
    desired: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def where(self, table: Any) -> list[ColumnElement[bool]]:
        """The filter as SQL conditions on `table` (instances, or their tombstones: same column names)."""
        return [table.c[name] == value for name, value in self.as_dict().items() if value is not None]


class ChangeType(str, Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Tombstone:
    """A deleted instance, as it last was."""
    id: str
    app: str
    cell: str
    node: str
    revision: int
    phase: str
    ready: bool
    desired: str
    resource_version: int    # the deleting transaction's
    deleted_at: float


@dataclass(frozen=True)
class Change:
    type: ChangeType
    resource_version: int
    instance: InstanceRecord | None = None    # ADDED, MODIFIED
    tombstone: Tombstone | None = None        # DELETED


@dataclass(frozen=True)
class Changes:
    """What changed after the version a watch gave, up to `resource_version` (the next watch goes on from it)."""
    changes: tuple[Change, ...]
    resource_version: int


def _scoped(query: Select[Any], table: Any, filters: InstanceFilter, readable: frozenset[str] | None) -> Select[Any]:
    conditions = filters.where(table)
    if readable is not None:
        conditions.append(table.c.app.in_(sorted(readable)))
    return query.where(and_(*conditions)) if conditions else query


async def current_version(conn: AsyncConnection) -> int:
    """The store's resource version now. Read before the rows: every write up to it is in what is read after
    (writers commit in version order: they serialize on the counter), later ones may be too."""
    return int((await conn.execute(select(counters.c.value).where(counters.c.name == "rv"))).scalar_one())


async def list_page(conn: AsyncConnection, now: float, filters: InstanceFilter = InstanceFilter(), *,
                    readable: frozenset[str] | None = None, after: Key | None = None, limit: int | None = None,
                    grace: float = DEFAULT_NODE_GRACE_SECONDS) -> Page[InstanceRecord]:
    """One page of the instances matching `filters` in apps `readable` (None: every app), by app, cell and id,
    starting after key `after`, at most `limit` (None: all), with their readiness as known at `now`."""
    query = _scoped(select(instances), instances, filters, readable)
    if after is not None:
        # A row-value comparison: the (app, cell, id) index serves it and the order alike.
        query = query.where(tuple_(instances.c.app, instances.c.cell, instances.c.id) > tuple_(*after))
    query = query.order_by(instances.c.app, instances.c.cell, instances.c.id)
    if limit is not None:
        query = query.limit(limit + 1)
    page = cut((await conn.execute(query)).all(), limit, lambda r: (r.app, r.cell, r.id))
    return Page(tuple(await _records(conn, page.items, now, grace)), page.next_after)


async def list_instances(conn: AsyncConnection, now: float, *, app: str | None = None, node: str | None = None,
                         instance_id: str | None = None,
                         grace: float = DEFAULT_NODE_GRACE_SECONDS) -> list[InstanceRecord]:
    """Instances matching every filter given, by app, cell and id, with their readiness as known at `now`."""
    if instance_id is None:
        return list((await list_page(conn, now, InstanceFilter(app=app, node=node), grace=grace)).items)
    query = select(instances).where(instances.c.id == instance_id)
    return await _records(conn, (await conn.execute(query)).all(), now, grace)


async def _records(conn: AsyncConnection, rows: Sequence[Any], now: float, grace: float) -> list[InstanceRecord]:
    """Rows as records; the heartbeats of their nodes in one query, whatever the number of rows."""
    names = sorted({r.node for r in rows})
    heartbeats = {n.name: n.last_heartbeat for n in (await conn.execute(
        select(nodes.c.name, nodes.c.last_heartbeat).where(nodes.c.name.in_(names))))} if names else {}
    return [InstanceRecord(id=r.id, app=r.app, created_at=r.created_at, updated_at=r.updated_at,
                           resource_version=r.resource_version, revision=r.revision, desired=r.desired,
                           node=r.node, cell=r.cell, zone=r.zone, ip=r.ip, port=r.port,
                           running_revision=r.running_revision, phase=r.phase, ready=r.ready,
                           readiness=instance_readiness(r.ready, heartbeats.get(r.node), now, grace), restarts=r.restarts,
                           pid=r.pid, message=r.message, mesh_port=r.mesh_port, drain=r.drain,
                           granted_revision=r.granted_revision, granted_desired=r.granted_desired,
                           group=r.group_code, created_version=int(r.created_seq) // _CREATED_SEQ_PER_VERSION)
            for r in rows]


# --- deletions ----------------------------------------------------------------------------------------------------

async def record_deletions(tx: Tx, *where: ColumnElement[bool]) -> None:
    """Before `tx` deletes the instance rows matching `where`: their tombstones, at `tx`'s version; and, while
    at it, forget deletions older than TOMBSTONE_SECONDS (a watch from before them is then 410 Gone)."""
    cols = ("id", "app", "cell", "node", "revision", "phase", "ready", "desired")
    await tx.conn.execute(insert(instance_tombstones).from_select(
        [*cols, "resource_version", "deleted_at"],
        select(*(instances.c[c] for c in cols), literal(tx.rv, BigInteger).label("resource_version"),
               literal(tx.now, Float).label("deleted_at")).where(*where)))
    horizon = tx.now - TOMBSTONE_SECONDS
    pruned = (await tx.conn.execute(select(func.max(instance_tombstones.c.resource_version))
                                    .where(instance_tombstones.c.deleted_at < horizon))).scalar()
    if pruned is None:
        return
    await tx.conn.execute(delete(instance_tombstones).where(instance_tombstones.c.resource_version <= pruned))
    moved = await tx.conn.execute(update(counters).where(counters.c.name == PRUNED).values(value=pruned))
    if moved.rowcount == 0:
        await tx.conn.execute(insert(counters).values(name=PRUNED, value=pruned))


# --- watch --------------------------------------------------------------------------------------------------------

async def changes_since(conn: AsyncConnection, now: float, since: int, filters: InstanceFilter = InstanceFilter(),
                        *, readable: frozenset[str] | None = None,
                        grace: float = DEFAULT_NODE_GRACE_SECONDS) -> Changes:
    """What changed after version `since` up to the store's version now, in version order: instances created
    or changed (as they are now) and deleted (as they last were), of those matching `filters` in `readable`.

    Only changes up to the version read first are answered: one committed while this reads is left to the next
    watch (from that version), so none is answered twice and none is lost. An instance changed so that it no
    longer matches the filters is not reported (it is no longer in the filtered list); a change of only its
    readiness as known now (its node fell silent) is no change of the row, and not reported either.
    """
    upto = await current_version(conn)
    pruned = (await conn.execute(select(counters.c.value).where(counters.c.name == PRUNED))).scalar()
    if pruned is not None and since < int(pruned):
        raise Gone(f"resourceVersion {since} is too old: deletions up to version {pruned} are no longer kept; "
                   "list again and watch from the list's metadata.resourceVersion")
    window = (instances.c.resource_version > since, instances.c.resource_version <= upto)
    rows = (await conn.execute(_scoped(select(instances).where(*window), instances, filters, readable)
                               .order_by(instances.c.resource_version, instances.c.id))).all()
    gone_window = (instance_tombstones.c.resource_version > since, instance_tombstones.c.resource_version <= upto)
    gone = (await conn.execute(_scoped(select(instance_tombstones).where(*gone_window), instance_tombstones,
                                       filters, readable)
                               .order_by(instance_tombstones.c.resource_version, instance_tombstones.c.id))).all()
    out = [Change(ChangeType.ADDED if r.created_version > since else ChangeType.MODIFIED, r.resource_version, r)
           for r in await _records(conn, rows, now, grace)]
    out += [Change(ChangeType.DELETED, t.resource_version, tombstone=Tombstone(**t._mapping)) for t in gone]
    # An id deleted and made again (ordered instances keep theirs) is first DELETED, then ADDED: version order.
    out.sort(key=lambda c: (c.resource_version, c.type is not ChangeType.DELETED))
    return Changes(tuple(out), upto)


async def watch(store: Store, since: int, filters: InstanceFilter, *, readable: frozenset[str] | None,
                timeout: float) -> Changes:
    """Long-poll: answer as soon as something matching changed after `since`, or at `timeout` (no changes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        seen = store.topic_version(WATCH_TOPICS)
        async with store.read() as conn:
            found = await changes_since(conn, store.clock(), since, filters, readable=readable,
                                        grace=store.node_grace_seconds)
        if found.changes or loop.time() >= deadline or store.closing:
            return found
        await store.wait_for_topics(WATCH_TOPICS, seen, max(0.0, deadline - loop.time()))
