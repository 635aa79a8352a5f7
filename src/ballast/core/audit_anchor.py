"""Signed checkpoints of the audit chain, kept outside the database, and the check of a chain against them.

The hash chain alone cannot survive someone who rewrites the database: edit a record, recompute every later
hash and the head row, and the chain is consistent again. So the server periodically signs a checkpoint —
the records it covers since the previous one (their chain hashes), the head, the time and its key id — with a
key that is not in the store, and appends it to a file outside the database (and its log). A chain is then
checked against every checkpoint whose signature verifies with the trusted public key: a record whose hash
differs from the signed one, a record the store no longer holds, a checkpoint that does not verify (refused,
never trusted) are each named. Because each checkpoint lists every hash it covers, the check tells the record
whose content changed apart from the later records that were merely re-hashed to hide it.

Pure: the server's writer and `ballast audit verify` read the files and the records and call these.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from ballast.core.audit_chain import GENESIS, AuditRecord, record_hash, verify
from ballast.core.audit_signing import PublicKey, Signer
from ballast.core.digests import canonical_json

VERSION = 1
MAX_RECORDS_PER_CHECKPOINT = 10_000     # one line stays a few hundred kB however far the writer is behind
_DOMAIN = b"ballast-audit-checkpoint\n"  # a checkpoint signature can never pass for a signature of anything else
_HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Checkpoint:
    first_seq: int              # the first record it covers (the previous checkpoint's seq + 1)
    seq: int                    # the chain head it signs: the last record it covers
    head: str
    time: str
    key_id: str
    hashes: tuple[str, ...]     # the chain hash of every record first_seq..seq; () when read from a log line
    hashes_digest: str          # what the signature covers of them
    signature: str              # base64 of the Ed25519 signature over `payload(...)`

    def signed_fields(self) -> dict[str, Any]:
        return {"v": VERSION, "from": self.first_seq, "seq": self.seq, "head": self.head, "time": self.time,
                "keyId": self.key_id, "hashesDigest": self.hashes_digest}


def hashes_digest(hashes: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def payload(fields: dict[str, Any]) -> bytes:
    """The canonical bytes a checkpoint's signature covers."""
    return _DOMAIN + canonical_json(fields).encode()


def sign(signer: Signer, records: Sequence[AuditRecord], time: str) -> Checkpoint:
    """A checkpoint over consecutive `records` (non-empty), signed now."""
    hashes = tuple(r.hash for r in records)
    unsigned = Checkpoint(records[0].seq, records[-1].seq, records[-1].hash, time, signer.key_id, hashes,
                          hashes_digest(hashes), "")
    signature = base64.b64encode(signer.sign(payload(unsigned.signed_fields()))).decode()
    return replace(unsigned, signature=signature)


LOG_MARKER = "audit checkpoint "


def log_line(cp: Checkpoint) -> str:
    """What the server logs: the signed fields and the signature (enough to check the head on its own)."""
    return LOG_MARKER + json.dumps({**cp.signed_fields(), "sig": cp.signature}, separators=(",", ":"))


def from_server_log(lines: Iterable[str]) -> list[str]:
    """The checkpoints a server log carries, each as its JSON, in order (every other log line is left out)."""
    marker = LOG_MARKER + "{"
    return [line[line.index(marker) + len(LOG_MARKER):] for line in lines if marker in line]


def file_line(cp: Checkpoint) -> str:
    """One line of the checkpoint file: the logged fields plus every hash covered."""
    return json.dumps({**cp.signed_fields(), "sig": cp.signature, "hashes": list(cp.hashes)}, separators=(",", ":"))


@dataclass(frozen=True)
class AnchorProblem:
    seq: int | None             # the record concerned, when there is one
    line: int | None            # the checkpoint file's line, when there is one
    problem: str


def _refused(line: int, why: str) -> AnchorProblem:
    return AnchorProblem(None, line, f"checkpoint line {line}: {why}: refused")


def _int(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: got {value!r}, expected a positive integer")
    return value


def _str(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: got {value!r}, expected a string")
    return value


def parse_line(text: str, line: int) -> Checkpoint | AnchorProblem:
    """A checkpoint file line as a checkpoint (not yet trusted: its signature is checked by `check`)."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError(f"got {type(doc).__name__}, expected a JSON object")
        if doc.get("v") != VERSION:
            raise ValueError(f"v: got {doc.get('v')!r}, expected {VERSION}")
        first, seq, head = _int(doc, "from"), _int(doc, "seq"), _str(doc, "head")
        if seq < first:
            raise ValueError(f"seq: got {seq}, expected at least from ({first})")
        digest = _str(doc, "hashesDigest")
        hashes = doc.get("hashes", [])     # a log line carries the head only
        if not isinstance(hashes, list) or not all(isinstance(h, str) and _HASH.match(h) for h in hashes):
            raise ValueError("hashes: expected a list of 64-hex-digit hashes")
        if hashes and (len(hashes) != seq - first + 1 or hashes[-1] != head):
            raise ValueError(f"hashes: {len(hashes)} hashes for records {first}..{seq} ending in head {head[:16]}…")
        if hashes and digest != hashes_digest(hashes):
            raise ValueError("hashesDigest does not match the hashes")
        signature = _str(doc, "sig")
        base64.b64decode(signature, validate=True)
        return Checkpoint(first, seq, head, _str(doc, "time"), _str(doc, "keyId"), tuple(hashes), digest, signature)
    except (ValueError, binascii.Error) as exc:     # json.JSONDecodeError is a ValueError
        return _refused(line, f"not a valid checkpoint ({exc})")


# --- the writer's decision -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    reason: str


def next_records(last_seq: int, last_hash: str, head_seq: int, head_hash: str,
                 batch: Sequence[AuditRecord]) -> tuple[AuditRecord, ...] | Refusal:
    """Which records the next checkpoint signs, given the last one (0, GENESIS: none yet), the store's chain head
    and the records after the last checkpoint up to the head (oldest first, at most a checkpoint's worth).

    The writer never signs a chain that disagrees with what it signed before: a head behind the last checkpoint
    or records that do not link to it mean the store was changed, and a signature would launder that."""
    if head_seq < last_seq:
        return Refusal(f"the store's chain head is record {head_seq}, behind the last checkpoint's record {last_seq} "
                       f"(records {head_seq + 1}..{last_seq} removed)")
    if head_seq == last_seq and head_hash != last_hash:
        return Refusal(f"the store's chain head, record {head_seq}, has hash {head_hash[:16]}…, the last checkpoint "
                       f"signed {last_hash[:16]}…")
    reaches_head = bool(batch) and batch[-1].seq == head_seq
    end_seq, end_hash = (head_seq, head_hash) if reaches_head or not batch else (batch[-1].seq, batch[-1].hash)
    breaks = verify(batch, end_seq, end_hash, after_seq=last_seq, after_hash=last_hash)
    if breaks:
        return Refusal(f"record {breaks[0].seq}: {breaks[0].problem} (after the last checkpoint, record {last_seq})")
    return tuple(batch)


def last_trusted(lines: Sequence[str], key: PublicKey) -> Checkpoint | None:
    """The newest checkpoint of a file that this key signed (where a restarted writer continues)."""
    for n in range(len(lines), 0, -1):
        cp = parse_line(lines[n - 1], n) if lines[n - 1].strip() else None
        if isinstance(cp, Checkpoint) and _trusted(cp, key):
            return cp
    return None


def _trusted(cp: Checkpoint, key: PublicKey) -> bool:
    return cp.key_id == key.key_id and key.verifies(payload(cp.signed_fields()), base64.b64decode(cp.signature))


# --- the check -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnchorCheck:
    lines: int                  # checkpoint lines read
    verified: int               # of them, signed by the trusted key
    last: Checkpoint | None     # the newest verified checkpoint
    unanchored: int             # records after the newest verified checkpoint (not signed yet)
    problems: tuple[AnchorProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _ranges(seqs: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _span(a: int, b: int) -> str:
    return f"record {a}" if a == b else f"records {a}..{b}"


def check(records: Sequence[AuditRecord], lines: Sequence[str], key: PublicKey) -> AnchorCheck:
    """Check stored `records` (the whole chain, oldest first) against the checkpoint file's `lines`.

    Only checkpoints signed by `key` are trusted; every other line is reported and ignored. Each problem names
    the record(s) and the checkpoint line: records whose content differs from what was signed, records only
    re-hashed after such a change, records deleted, a signed head the store no longer has."""
    problems: list[AnchorProblem] = []
    signed: dict[int, str] = {}
    line_of: dict[int, int] = {}
    trusted: list[tuple[int, Checkpoint]] = []
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        cp = parse_line(text, n)
        if isinstance(cp, AnchorProblem):
            problems.append(cp)
            continue
        if cp.key_id != key.key_id:
            problems.append(_refused(n, f"signed by key {cp.key_id}, not the trusted key {key.key_id}"))
            continue
        if not _trusted(cp, key):
            problems.append(_refused(n, f"its signature does not verify with key {key.key_id}"))
            continue
        expected_first = trusted[-1][1].seq + 1 if trusted else 1
        if cp.first_seq > expected_first:
            problems.append(AnchorProblem(expected_first, n, f"no valid checkpoint covers "
                                          f"{_span(expected_first, cp.first_seq - 1)} (line {n} starts at record "
                                          f"{cp.first_seq})"))
        for seq, digest in zip(range(cp.first_seq, cp.seq + 1), cp.hashes) if cp.hashes else [(cp.seq, cp.head)]:
            if signed.get(seq, digest) != digest:
                problems.append(AnchorProblem(seq, n, f"checkpoint line {n} signs record {seq} as {digest[:16]}…, "
                                              f"line {line_of[seq]} as {signed[seq][:16]}…"))
                continue
            signed[seq], line_of[seq] = digest, line_of.get(seq, n)
        trusted.append((n, cp))

    stored = {r.seq: r for r in records}
    store_end = max(stored, default=0)
    deleted: list[int] = []
    changed: list[int] = []
    rehashed: list[int] = []
    for seq in sorted(signed):
        rec = stored.get(seq)
        if rec is None:
            deleted.append(seq)
        elif rec.hash != signed[seq]:
            prev = GENESIS if seq == 1 else signed.get(seq - 1)
            if prev is None:
                continue    # a head-only checkpoint (from a log): reported below with the span it narrows to
            same_content = record_hash(
                prev, rec.seq, rec.ts, rec.actor, rec.action, rec.resource, rec.before, rec.after, rec.result,
                rec.detail) == signed[seq]
            (rehashed if same_content else changed).append(seq)
    for seq in changed:
        problems.append(AnchorProblem(seq, line_of[seq], f"record {seq} is not the record checkpoint line "
                                      f"{line_of[seq]} signed: its content was changed (the store's hash "
                                      f"{stored[seq].hash[:16]}…, signed {signed[seq][:16]}…)"))
    for a, b in _ranges(rehashed):
        problems.append(AnchorProblem(a, line_of[a], f"{_span(a, b)}: content as signed, but re-hashed (the chain "
                                      "was recomputed after an earlier change)"))
    for a, b in _ranges([seq for seq in deleted if seq <= store_end]):
        problems.append(AnchorProblem(a, line_of[a], f"{_span(a, b)} signed by checkpoint line {line_of[a]} "
                                      "missing from the store (deleted)"))
    if deleted and deleted[-1] > store_end:     # the tail: everything after the store's end is gone
        end = deleted[-1]
        problems.append(AnchorProblem(store_end + 1, line_of[end], f"the store ends at record {store_end} but "
                                      f"checkpoint line {line_of[end]} signs up to record {end}: "
                                      f"{_span(store_end + 1, end)} deleted"))
    heads = [i for i, (_, cp) in enumerate(trusted) if cp.seq in stored and stored[cp.seq].hash != cp.head]
    if heads:
        n, cp = trusted[heads[0]]
        later = f" (and {len(heads) - 1} later checkpoint(s) likewise)" if len(heads) > 1 else ""
        since = trusted[heads[0] - 1][1].seq if heads[0] else 0
        where = "" if cp.hashes else f": a record of {_span(since + 1, cp.seq)} was changed"
        problems.append(AnchorProblem(cp.seq, n, f"checkpoint at record {cp.seq} (line {n}, {cp.time}) signed head "
                                      f"{cp.head[:16]}…, the store has {stored[cp.seq].hash[:16]}…{later}{where}"))
    last = trusted[-1][1] if trusted else None
    problems.sort(key=lambda p: (p.seq is not None, p.seq or 0, p.line or 0))
    return AnchorCheck(lines=sum(1 for t in lines if t.strip()), verified=len(trusted), last=last,
                       unanchored=max(0, store_end - (max(signed) if signed else 0)), problems=tuple(problems))
