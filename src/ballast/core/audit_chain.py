"""The audit log's hash chain, as pure functions.

Each record carries the hash of the one before it, so editing, deleting or
reordering any stored record breaks a link that `verify` finds. The store
appends under a compare-and-set on the chain head; this module only decides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable

from ballast.core.digests import canonical_json

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: str
    actor: str
    action: str
    resource: str
    before: str
    after: str
    result: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


def record_hash(prev_hash: str, seq: int, ts: str, actor: str, action: str, resource: str,
                before: str, after: str, result: str, detail: dict[str, Any]) -> str:
    body = canonical_json([prev_hash, seq, ts, actor, action, resource, before, after, result, detail])
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    problem: str


def verify(records: Iterable[AuditRecord], head_seq: int, head_hash: str, *,
           after_seq: int = 0, after_hash: str = GENESIS) -> list[ChainBreak]:
    """Check links in stored order (by seq); the head pins the last record so truncation shows too.

    `after_seq`/`after_hash` start the check inside the chain: the records then continue from a record known to
    have that hash (the last signed checkpoint), and must link to it."""
    breaks: list[ChainBreak] = []
    expected_prev, expected_seq = after_hash, after_seq + 1
    last_seq, last_hash = after_seq, after_hash
    for rec in records:
        if rec.seq != expected_seq:
            breaks.append(ChainBreak(rec.seq, f"sequence gap: expected record {expected_seq}, found {rec.seq} (deleted or reordered)"))
        if rec.prev_hash != expected_prev:
            breaks.append(ChainBreak(rec.seq, "link broken: prev_hash does not match the previous record's hash"))
        recomputed = record_hash(rec.prev_hash, rec.seq, rec.ts, rec.actor, rec.action, rec.resource,
                                 rec.before, rec.after, rec.result, rec.detail)
        if recomputed != rec.hash:
            breaks.append(ChainBreak(rec.seq, "content edited: stored hash does not match the record's content"))
        expected_prev, expected_seq = rec.hash, rec.seq + 1
        last_seq, last_hash = rec.seq, rec.hash
    if (last_seq, last_hash) != (head_seq, head_hash):
        breaks.append(ChainBreak(last_seq, f"chain head is record {head_seq} but the log ends at record {last_seq} (records removed or head altered)"))
    return breaks


def mismatches(quoted: Iterable[tuple[int, str]], stored: dict[int, str]) -> list[ChainBreak]:
    """Records a report quotes (seq, hash) that the chain does not hold with exactly that hash."""
    return [ChainBreak(seq, "no such record" if seq not in stored else
                       f"hash {digest[:16]}… differs from the chain's {stored[seq][:16]}…")
            for seq, digest in quoted if stored.get(seq) != digest]
