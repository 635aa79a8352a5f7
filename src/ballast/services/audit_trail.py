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
from ballast.core.paging import Page, cut
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


LIST = "audit"            # the list's name in its continue tokens
KEY_SHAPE = (int,)        # (seq,)


async def page(conn: AsyncConnection, *, after: int, before: int | None, newest: bool, limit: int,
               resource: str | None = None) -> Page[AuditRecord]:
    """One page of records (of one `resource`, when given), oldest first within the page. `newest`: the newest
    `limit` records before seq `before` (None: the newest of all), the next page holding older ones; else the
    first `limit` after seq `after`, the next page newer ones."""
    recs = await audit_log.records(conn, after_seq=after, before_seq=before, limit=limit + 1, newest_first=newest,
                                   resource=resource)
    found = cut(recs, limit, lambda r: (r.seq,))
    return Page(tuple(sorted(found.items, key=lambda r: r.seq)), found.next_after)


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
