"""The audit trail as people read and check it: recent records, and whether the chain (and the records a
report quotes) still hold.

The chain itself is appended by `store.audit_log` inside every write; the pure checks are in
`core.audit_chain`. This module reads inside the caller's connection and returns frozen values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core import audit_anchor
from ballast.core.audit_anchor import AnchorCheck
from ballast.core.audit_chain import AuditRecord, ChainBreak, mismatches
from ballast.core.audit_signing import PublicKey
from ballast.store import audit_log


@dataclass(frozen=True)
class ChainCheck:
    records: int
    head_hash: str
    breaks: tuple[ChainBreak, ...]
    checked: int | None = None              # how many quoted records were checked; None: none were given
    mismatches: tuple[ChainBreak, ...] = ()
    anchor: AnchorCheck | None = None       # None: the server signs no checkpoints (the chain is not anchored)

    @property
    def ok(self) -> bool:
        return not self.breaks and not self.mismatches and (self.anchor is None or self.anchor.ok)


@dataclass(frozen=True)
class Anchor:
    """Signed checkpoints to check the chain against: the checkpoint file's lines and the key trusted to sign."""
    lines: Sequence[str]
    key: PublicKey


async def recent(conn: AsyncConnection, *, after: int, limit: int, oldest: bool = False,
                 resource: str | None = None) -> list[AuditRecord]:
    """Up to `limit` records after seq `after` (of one `resource`, when given), oldest first; `after=0`: the newest
    `limit` (the first with `oldest`, where a reader of the whole chain starts)."""
    recs = await audit_log.records(conn, after_seq=after, limit=limit, newest_first=after == 0 and not oldest,
                                   resource=resource)
    return sorted(recs, key=lambda r: r.seq)


async def head(conn: AsyncConnection) -> tuple[int, str]:
    """The chain head row's (seq, hash)."""
    return await audit_log.head(conn)


async def records_after(conn: AsyncConnection, after: int, limit: int) -> list[AuditRecord]:
    """Up to `limit` records after seq `after`, oldest first."""
    return await audit_log.records(conn, after_seq=after, limit=limit)


async def check(conn: AsyncConnection, quoted: Sequence[tuple[int, str]] = (), anchor: Anchor | None = None
                ) -> ChainCheck:
    """Verify the whole chain, against the signed checkpoints when given, and, if given, that each quoted
    (seq, hash) is in it with exactly this hash."""
    count, breaks, head_hash, recs = await audit_log.verify_all_records(conn)
    anchored = audit_anchor.check(recs, anchor.lines, anchor.key) if anchor is not None else None
    if not quoted:
        return ChainCheck(count, head_hash, tuple(breaks), anchor=anchored)
    stored = {r.seq: r.hash for r in recs}
    return ChainCheck(count, head_hash, tuple(breaks), len(quoted), tuple(mismatches(quoted, stored)), anchored)
