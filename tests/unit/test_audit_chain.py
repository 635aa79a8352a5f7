"""Spec of the audit hash chain: a built chain verifies; any edit, deletion, reorder or truncation is found."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from ballast.core.audit_chain import GENESIS, AuditRecord, ChainBreak, mismatches, record_hash, verify

Chain = list[AuditRecord]


def build(n: int) -> Chain:
    """A well-formed chain of n records, built the way the store appends them."""
    out: Chain = []
    prev = GENESIS
    for seq in range(1, n + 1):
        fields = {"seq": seq, "ts": f"2024-01-01T00:00:{seq:02d}.000000+00:00", "actor": f"user-{seq % 3}",
                  "action": "apply", "resource": f"AppService/app-{seq}", "before": "", "after": f"sha256:{seq:064x}",
                  "result": "ok", "detail": {"outcome": "created", "n": seq}}
        h = record_hash(prev, **fields)
        out.append(AuditRecord(**fields, prev_hash=prev, hash=h))
        prev = h
    return out


def head(chain: Chain) -> tuple[int, str]:
    return (chain[-1].seq, chain[-1].hash) if chain else (0, GENESIS)


def test_built_chain_verifies() -> None:
    """A chain appended record by record has no breaks."""
    chain = build(6)
    assert verify(chain, *head(chain)) == []


def test_empty_log_with_genesis_head_verifies() -> None:
    """An empty log whose head is the genesis verifies."""
    assert verify([], 0, GENESIS) == []


def _edit(field: str, value: object) -> Callable[[Chain], Chain]:
    def tamper(chain: Chain) -> Chain:
        chain[2] = dataclasses.replace(chain[2], **{field: value})
        return chain
    return tamper


def _delete_middle(chain: Chain) -> Chain:
    del chain[2]
    return chain


def _swap(chain: Chain) -> Chain:
    chain[2], chain[3] = chain[3], chain[2]
    return chain


def _swap_content_keep_seq(chain: Chain) -> Chain:
    """Reorder by exchanging everything but the seq, as an UPDATE of two rows would."""
    a, b = chain[2], chain[3]
    chain[2] = dataclasses.replace(b, seq=a.seq)
    chain[3] = dataclasses.replace(a, seq=b.seq)
    return chain


CONTENT = "content edited"
LINK = "link broken"
GAP = "sequence gap"


@pytest.mark.parametrize(("tamper", "expected"), [
    pytest.param(_edit("actor", "mallory"), [(3, CONTENT)], id="edit-actor"),
    pytest.param(_edit("result", "ok"), [], id="edit-to-same-value-is-no-change"),
    pytest.param(_edit("detail", {"outcome": "unchanged", "n": 3}), [(3, CONTENT)], id="edit-detail"),
    pytest.param(_edit("ts", "2030-01-01T00:00:00+00:00"), [(3, CONTENT)], id="edit-timestamp"),
    pytest.param(_edit("hash", "f" * 64), [(3, CONTENT), (4, LINK)], id="edit-stored-hash"),
    pytest.param(_delete_middle, [(4, GAP), (4, LINK)], id="delete-middle"),
    pytest.param(_swap, [(4, GAP), (4, LINK), (3, GAP), (3, LINK), (5, GAP), (5, LINK)], id="swap-two-records"),
    pytest.param(_swap_content_keep_seq, [(3, LINK), (3, CONTENT), (4, LINK), (4, CONTENT), (5, LINK)],
                 id="swap-content-keep-seq"),
])
def test_tampering_is_found_at_the_right_record(tamper: Callable[[Chain], Chain], expected: list[tuple[int, str]]) -> None:
    """Each kind of tampering yields breaks at the records whose links or content no longer hold."""
    chain = build(6)
    pinned = head(chain)
    breaks = verify(tamper(chain), *pinned)
    assert [(b.seq, b.problem.split(":")[0]) for b in breaks] == expected


def test_truncated_tail_is_found_through_the_head() -> None:
    """Dropping the newest records leaves consistent links, but the pinned head shows the loss."""
    chain = build(6)
    pinned = head(chain)
    assert verify(chain[:4], *pinned) == [ChainBreak(
        4, "chain head is record 6 but the log ends at record 4 (records removed or head altered)")]


def test_truncating_everything_is_found() -> None:
    """An emptied log does not verify against a head that had records."""
    chain = build(3)
    [brk] = verify([], *head(chain))
    assert brk.seq == 0 and "chain head is record 3" in brk.problem


def test_altered_head_is_found() -> None:
    """A head that does not match the last record is reported."""
    chain = build(3)
    [brk] = verify(chain, 3, "0" * 63 + "1")
    assert brk.seq == 3 and "head altered" in brk.problem


def test_recomputed_forgery_of_one_record_still_breaks_the_next_link() -> None:
    """Re-hashing an edited record hides the edit in that record but breaks the link from the next one."""
    chain = build(5)
    pinned = head(chain)
    forged = dataclasses.replace(chain[1], actor="mallory")
    forged = dataclasses.replace(forged, hash=record_hash(forged.prev_hash, forged.seq, forged.ts, forged.actor,
                                                          forged.action, forged.resource, forged.before, forged.after,
                                                          forged.result, forged.detail))
    chain[1] = forged
    assert [(b.seq, b.problem.split(":")[0]) for b in verify(chain, *pinned)] == [(3, LINK)]


STORED = {1: "a" * 64, 2: "b" * 64}


@pytest.mark.parametrize(("quoted", "expected"), [
    ([(1, "a" * 64), (2, "b" * 64)], []),
    ([(3, "c" * 64)], [ChainBreak(3, "no such record")]),
    ([(2, "c" * 64)], [ChainBreak(2, f"hash {'c' * 16}… differs from the chain's {'b' * 16}…")]),
    ([(2, "x"), (1, "a" * 64), (9, "y")], [ChainBreak(2, f"hash x… differs from the chain's {'b' * 16}…"),
                                           ChainBreak(9, "no such record")]),
])
def test_quoted_records_that_the_chain_does_not_hold_are_named(quoted: list[tuple[int, str]],
                                                                 expected: list[ChainBreak]) -> None:
    """A report's records are checked against the chain one by one, in the report's order."""
    assert mismatches(quoted, STORED) == expected
