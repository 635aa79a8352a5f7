"""The audit trail as people read and check it: recent records, and whether the chain (and the records a
report quotes) still hold.

The chain itself is appended by `store.audit_log` inside every write; the pure checks are in
`core.audit_chain`. This module reads inside the caller's connection and returns frozen values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.audit_chain import AuditRecord, ChainBreak, mismatches
from ballast.store import audit_log


@dataclass(frozen=True)
class ChainCheck:
    records: int
    head_hash: str
    breaks: tuple[ChainBreak, ...]
    checked: int | None = None              # how many quoted records were checked; None: none were given
    mismatches: tuple[ChainBreak, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.breaks and not self.mismatches


async def recent(conn: AsyncConnection, *, after: int, limit: int) -> list[AuditRecord]:
    """Up to `limit` records after seq `after`, oldest first; `after=0`: the newest `limit`."""
    recs = await audit_log.records(conn, after_seq=after, limit=limit, newest_first=after == 0)
    return sorted(recs, key=lambda r: r.seq)


async def check(conn: AsyncConnection, quoted: Sequence[tuple[int, str]] = ()) -> ChainCheck:
    """Verify the whole chain and, if given, that each quoted (seq, hash) is in it with exactly this hash."""
    count, breaks, head = await audit_log.verify_all(conn)
    if not quoted:
        return ChainCheck(count, head, tuple(breaks))
    first, last = min(seq for seq, _ in quoted), max(seq for seq, _ in quoted)
    stored = {r.seq: r.hash for r in await audit_log.records(conn, after_seq=first - 1, limit=last - first + 1)}
    return ChainCheck(count, head, tuple(breaks), len(quoted), tuple(mismatches(quoted, stored)))
