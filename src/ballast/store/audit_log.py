"""Append-only, hash-chained audit log in the store.

Appending advances the single chain-head row by compare-and-set on its
sequence number inside the caller's transaction; losing that race aborts the
whole transaction (the change and its record go together or not at all).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.audit_chain import GENESIS, AuditRecord, ChainBreak, record_hash, verify
from ballast.errors import RetryableConflict
from ballast.store.schema import audit, audit_head


async def ensure_head(conn: AsyncConnection) -> None:
    if (await conn.execute(select(audit_head.c.id))).first() is None:
        await conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))


async def append(conn: AsyncConnection, *, actor: str, action: str, resource: str, result: str,
                 before: str, after: str, detail: dict[str, Any]) -> int:
    head = (await conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1))).one()
    seq = int(head.seq) + 1
    ts = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    # Column widths hold on every store (PostgreSQL enforces them; SQLite would not).
    actor, action, resource, result = actor[:63], action[:64], resource[:255], result[:255]
    digest = record_hash(head.hash, seq, ts, actor, action, resource, before, after, result, detail)
    moved = await conn.execute(
        update(audit_head).where(audit_head.c.id == 1, audit_head.c.seq == head.seq).values(seq=seq, hash=digest))
    if moved.rowcount != 1:
        raise RetryableConflict("the audit chain")
    await conn.execute(insert(audit).values(seq=seq, ts=ts, actor=actor, action=action, resource=resource,
                                            before=before, after=after, result=result, detail=detail,
                                            prev_hash=head.hash, hash=digest))
    return seq


def _record(row: Any) -> AuditRecord:
    return AuditRecord(seq=int(row.seq), ts=row.ts, actor=row.actor, action=row.action, resource=row.resource,
                       before=row.before, after=row.after, result=row.result, detail=row.detail,
                       prev_hash=row.prev_hash, hash=row.hash)


async def records(conn: AsyncConnection, *, after_seq: int = 0, limit: int | None = None,
                  newest_first: bool = False, resource: str | None = None,
                  before_seq: int | None = None) -> list[AuditRecord]:
    query = select(audit).where(audit.c.seq > after_seq)
    if before_seq is not None:
        query = query.where(audit.c.seq < before_seq)
    if resource is not None:
        query = query.where(audit.c.resource == resource)
    query = query.order_by(audit.c.seq.desc() if newest_first else audit.c.seq)
    if limit is not None:
        query = query.limit(limit)
    return [_record(r) for r in (await conn.execute(query)).all()]


async def head(conn: AsyncConnection) -> tuple[int, str]:
    """The chain head row: the last record's seq and hash as the store claims them."""
    row = (await conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1))).one()
    return int(row.seq), str(row.hash)


async def verify_all(conn: AsyncConnection) -> tuple[int, list[ChainBreak], str]:
    count, breaks, head_hash, _ = await verify_all_records(conn)
    return count, breaks, head_hash


async def verify_all_records(conn: AsyncConnection) -> tuple[int, list[ChainBreak], str, list[AuditRecord]]:
    """The chain checked against its head row, with the records it read (for a check against checkpoints)."""
    head_seq, head_hash = await head(conn)
    # Stored order is by the primary key, so a swapped seq shows as a broken link.
    recs = await records(conn)
    return len(recs), verify(recs, head_seq, head_hash), head_hash, recs
