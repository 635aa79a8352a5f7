"""Spec of signed audit checkpoints, as pure functions: what a checkpoint signs, which lines are refused, and how a
chain that disagrees with the signed checkpoints is reported, record by record."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ballast.core import audit_anchor
from ballast.core.audit_anchor import (AnchorProblem, Checkpoint, Refusal, file_line, from_server_log, last_trusted,
                                      log_line, next_records, parse_line, sign)
from ballast.core.audit_chain import GENESIS, AuditRecord, record_hash
from ballast.core.audit_signing import BadKey, Ed25519Signer, PublicKey
from tests.unit.test_audit_chain import build

KEY = Ed25519Signer.generate()
OTHER = Ed25519Signer.generate()
T = "2026-12-06T10:00:00.000+00:00"


def checkpoints(chain: list[AuditRecord], cuts: list[int], signer: Ed25519Signer = KEY) -> list[str]:
    """Checkpoint file lines over `chain`, one ending at each seq of `cuts`."""
    lines, start = [], 0
    for end in cuts:
        lines.append(file_line(sign(signer, chain[start:end], T)))
        start = end
    return lines


def rewrite(chain: list[AuditRecord], seq: int, **change: object) -> list[AuditRecord]:
    """The full rewrite: change record `seq`, then recompute its hash and every later one (what an attacker with
    the database does so that the chain alone verifies again)."""
    out: list[AuditRecord] = []
    prev = GENESIS
    for rec in chain:
        rec = dataclasses.replace(rec, **change) if rec.seq == seq else rec
        h = record_hash(prev, rec.seq, rec.ts, rec.actor, rec.action, rec.resource, rec.before, rec.after,
                        rec.result, rec.detail)
        out.append(dataclasses.replace(rec, prev_hash=prev, hash=h))
        prev = h
    return out


def problems(chain: list[AuditRecord], lines: list[str], key: PublicKey = KEY.public_key()) -> list[tuple[int | None, str]]:
    return [(p.seq, p.problem) for p in audit_anchor.check(chain, lines, key).problems]


# --- keys and signatures ---------------------------------------------------------------------------------------------


def test_a_signed_checkpoint_verifies_with_the_public_key_alone() -> None:
    """A checkpoint signed with the private key is trusted by its public key, read back from PEM."""
    chain = build(5)
    public = PublicKey.from_pem(KEY.public_key().pem(), "key.pub")
    verdict = audit_anchor.check(chain, checkpoints(chain, [3, 5]), public)
    assert (verdict.ok, verdict.verified, verdict.unanchored) == (True, 2, 0)
    assert verdict.last is not None and (verdict.last.seq, verdict.last.head) == (5, chain[-1].hash)


def test_key_ids_differ_between_keys_and_a_private_pem_yields_its_public_key() -> None:
    assert KEY.key_id != OTHER.key_id and KEY.key_id.startswith("ed25519:")
    assert PublicKey.from_pem(KEY.private_pem(), "key.pem").key_id == KEY.key_id


@pytest.mark.parametrize(("data", "expected"), [
    (b"not a key", "key.pem: not an unencrypted PEM private key"),
    (b"", "key.pem: not an unencrypted PEM private key"),
    (KEY.public_key().pem(), "key.pem: not an unencrypted PEM private key"),
])
def test_a_private_key_file_that_is_not_one_is_refused_naming_it(data: bytes, expected: str) -> None:
    with pytest.raises(BadKey, match=expected):
        Ed25519Signer.from_pem(data, "key.pem")


@pytest.mark.parametrize(("make", "kind"), [
    (lambda: ec.generate_private_key(ec.SECP256R1()), "an EC"),
    (lambda: rsa.generate_private_key(65537, 1024), "an RSA"),
])
def test_a_key_of_another_type_is_refused_naming_it(make: Callable[[], Any], kind: str) -> None:
    pem = make().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    with pytest.raises(BadKey, match=rf"^key.pem: {kind} key, expected an Ed25519 private key$"):
        Ed25519Signer.from_pem(pem, "key.pem")
    with pytest.raises(BadKey, match=rf"^key.pub: {kind} key, expected an Ed25519 key$"):
        PublicKey.from_pem(pem, "key.pub")


# --- lines that are refused ------------------------------------------------------------------------------------------


def _edit(field: str, value: object) -> Callable[[str], str]:
    def tamper(line: str) -> str:
        doc = json.loads(line)
        doc[field] = value
        return json.dumps(doc)
    return tamper


def _flip_signature(line: str) -> str:
    doc = json.loads(line)
    sig = bytearray(base64.b64decode(doc["sig"]))
    sig[0] ^= 1
    doc["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(doc)


@pytest.mark.parametrize(("tamper", "expected"), [
    pytest.param(lambda line: "{not json", "not a valid checkpoint (Expecting property name", id="not-json"),
    pytest.param(lambda line: line[: len(line) // 2], "not a valid checkpoint", id="torn-line"),
    pytest.param(lambda line: "[1, 2]", "not a valid checkpoint (got list, expected a JSON object)", id="not-an-object"),
    pytest.param(_edit("v", 2), "not a valid checkpoint (v: got 2, expected 1)", id="version"),
    pytest.param(_edit("seq", True), "seq: got True, expected a positive integer", id="bool-seq"),
    pytest.param(_edit("from", 0), "from: got 0, expected a positive integer", id="zero-from"),
    pytest.param(_edit("hashes", ["ab"]), "hashes: expected a list of 64-hex-digit hashes", id="short-hash"),
    pytest.param(_edit("seq", 4), "hashes: 3 hashes for records 1..4", id="count"),
    pytest.param(_edit("hashesDigest", "0" * 64), "hashesDigest does not match the hashes", id="hashes-digest"),
    pytest.param(_edit("sig", "%%%"), "not a valid checkpoint", id="sig-not-base64"),
    pytest.param(_edit("time", "2026-12-06T11:00:00.000+00:00"), "its signature does not verify", id="time-edited"),
    pytest.param(_flip_signature, "its signature does not verify", id="signature-flipped"),
    pytest.param(_edit("keyId", OTHER.key_id), f"signed by key {OTHER.key_id}, not the trusted key", id="other-key-id"),
])
def test_a_line_that_is_not_a_valid_checkpoint_of_the_trusted_key_is_refused(
        tamper: Callable[[str], str], expected: str) -> None:
    """Each refused line is named by its number, says why, and is never trusted (the chain is then unanchored)."""
    chain = build(3)
    [line] = checkpoints(chain, [3])
    verdict = audit_anchor.check(chain, [tamper(line)], KEY.public_key())
    [problem] = verdict.problems
    assert problem.line == 1 and expected in problem.problem and problem.problem.endswith(": refused")
    assert (verdict.verified, verdict.unanchored) == (0, 3)


def test_checkpoints_signed_by_another_key_are_refused() -> None:
    """A whole file signed by another key (someone re-signed a rewritten chain) anchors nothing."""
    chain = build(4)
    verdict = audit_anchor.check(chain, checkpoints(chain, [2, 4], signer=OTHER), KEY.public_key())
    assert [(p.line, p.problem) for p in verdict.problems] == [
        (n, f"checkpoint line {n}: signed by key {OTHER.key_id}, not the trusted key {KEY.key_id}: refused")
        for n in (1, 2)]
    assert verdict.verified == 0


def test_a_forged_signature_claiming_the_trusted_key_id_is_refused() -> None:
    """Another key's signature under our key id does not verify."""
    chain = build(2)
    forged = dataclasses.replace(sign(OTHER, chain, T), key_id=KEY.key_id)
    [problem] = audit_anchor.check(chain, [file_line(forged)], KEY.public_key()).problems
    assert problem.problem == f"checkpoint line 1: its signature does not verify with key {KEY.key_id}: refused"


# --- the chain against the checkpoints -------------------------------------------------------------------------------


def test_an_untouched_chain_with_newer_records_is_ok_and_says_what_is_not_signed_yet() -> None:
    chain = build(7)
    verdict = audit_anchor.check(chain, checkpoints(chain, [2, 5]), KEY.public_key())
    assert (verdict.ok, verdict.verified, verdict.unanchored, verdict.lines) == (True, 2, 2, 2)


def test_a_full_rewrite_names_the_changed_record_and_the_rehashed_ones() -> None:
    """Record 3 edited and every later hash recomputed: the chain alone verifies, the checkpoints do not."""
    chain = build(8)
    lines = checkpoints(chain, [2, 5, 8])
    forged = rewrite(chain, 3, actor="mallory")
    assert problems(forged, lines) == [
        (3, f"record 3 is not the record checkpoint line 2 signed: its content was changed (the store's hash "
            f"{forged[2].hash[:16]}…, signed {chain[2].hash[:16]}…)"),
        (4, "records 4..8: content as signed, but re-hashed (the chain was recomputed after an earlier change)"),
        (5, f"checkpoint at record 5 (line 2, {T}) signed head {chain[4].hash[:16]}…, the store has "
            f"{forged[4].hash[:16]}… (and 1 later checkpoint(s) likewise)"),
    ]


def test_a_deleted_tail_is_named() -> None:
    """Records 6..8 deleted and the head rolled back: the store ends before what was signed."""
    chain = build(8)
    assert problems(chain[:5], checkpoints(chain, [4, 8])) == [
        (6, "the store ends at record 5 but checkpoint line 2 signs up to record 8: records 6..8 deleted")]


def test_a_deleted_middle_record_is_named() -> None:
    chain = build(6)
    lines = checkpoints(chain, [6])
    assert problems(chain[:2] + chain[3:], lines) == [
        (3, "record 3 signed by checkpoint line 1 missing from the store (deleted)")]


def test_reordered_records_are_named() -> None:
    """Two records swapped (each keeping its seq) differ from what was signed."""
    chain = build(5)
    swapped = chain[:1] + [dataclasses.replace(chain[2], seq=2), dataclasses.replace(chain[1], seq=3)] + chain[3:]
    assert [seq for seq, _ in problems(swapped, checkpoints(chain, [5]))] == [2, 3]


def test_a_removed_checkpoint_line_leaves_a_gap_that_is_reported() -> None:
    chain = build(6)
    first, _, third = checkpoints(chain, [2, 4, 6])
    assert problems(chain, [first, third]) == [(3, "no valid checkpoint covers records 3..4 (line 2 starts at record 5)")]


def test_parse_keeps_every_signed_field() -> None:
    chain = build(3)
    cp = sign(KEY, chain[1:], T)
    assert parse_line(file_line(cp), 1) == cp
    assert isinstance(parse_line("", 1), AnchorProblem)
    assert isinstance(cp, Checkpoint) and cp.hashes == (chain[1].hash, chain[2].hash)


# --- the server log as the anchor (heads only) ----------------------------------------------------------------------


def server_log(chain: list[AuditRecord], cuts: list[int], signer: Ed25519Signer = KEY) -> list[str]:
    """The server log around the checkpoints it logged at each of `cuts`."""
    out, start = ["2026-12-06 10:00:00,000 ballast.server WARNING empty store: created user 'admin'"], 0
    for end in cuts:
        out.append(f"2026-12-06 10:00:0{len(out)},000 ballast.audit.checkpoints INFO "
                   + log_line(sign(signer, chain[start:end], T)))
        start = end
    return out


def test_the_logged_checkpoints_verify_on_their_own() -> None:
    """A log line carries the signed fields and the signature, not the hashes: it anchors its head."""
    chain = build(6)
    lines = from_server_log(server_log(chain, [2, 6]))
    assert len(lines) == 2 and all(line.startswith("{") for line in lines)
    verdict = audit_anchor.check(chain + build(7)[6:], lines, KEY.public_key())
    assert (verdict.ok, verdict.verified, verdict.unanchored) == (True, 2, 1)


def test_a_rewrite_against_the_logged_heads_is_narrowed_to_the_records_between_two_checkpoints() -> None:
    chain = build(9)
    forged = rewrite(chain, 5, actor="mallory")
    assert problems(forged, from_server_log(server_log(chain, [3, 6, 9]))) == [
        (6, f"checkpoint at record 6 (line 2, {T}) signed head {chain[5].hash[:16]}…, the store has "
            f"{forged[5].hash[:16]}… (and 1 later checkpoint(s) likewise): a record of records 4..6 was changed")]


def test_a_deleted_tail_against_the_logged_heads_is_named() -> None:
    chain = build(9)
    assert problems(chain[:4], from_server_log(server_log(chain, [3, 6, 9]))) == [
        (5, "the store ends at record 4 but checkpoint line 3 signs up to record 9: records 5..9 deleted")]


def test_a_logged_checkpoint_with_an_altered_head_is_refused() -> None:
    chain = build(3)
    [line] = from_server_log(server_log(chain, [3]))
    [problem] = problems(chain, [_edit("head", "f" * 64)(line)])
    assert problem == (None, f"checkpoint line 1: its signature does not verify with key {KEY.key_id}: refused")


# --- what the writer signs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("last", "head", "batch", "expected"), [
    pytest.param(0, 0, slice(0, 0), (), id="empty-chain"),
    pytest.param(3, 3, slice(3, 3), (), id="nothing-new"),
    pytest.param(3, 6, slice(3, 6), (4, 5, 6), id="new-records"),
    pytest.param(0, 6, slice(0, 4), (1, 2, 3, 4), id="a-batch-short-of-the-head"),
    pytest.param(5, 3, slice(3, 3), "the store's chain head is record 3, behind the last checkpoint's record 5 "
                                     "(records 4..5 removed)", id="head-behind"),
    pytest.param(3, 6, slice(4, 6), "record 5: sequence gap: expected record 4", id="first-new-record-deleted"),
])
def test_the_writer_signs_only_records_that_continue_its_last_checkpoint(
        last: int, head: int, batch: slice, expected: tuple[int, ...] | str) -> None:
    chain = build(6)
    last_hash = chain[last - 1].hash if last else GENESIS
    head_hash = chain[head - 1].hash if head else GENESIS
    decision = next_records(last, last_hash, head, head_hash, chain[batch])
    if isinstance(expected, str):
        assert isinstance(decision, Refusal) and decision.reason.startswith(expected), decision
    else:
        assert not isinstance(decision, Refusal) and tuple(r.seq for r in decision) == expected


def test_the_writer_refuses_a_chain_rewritten_before_its_new_records() -> None:
    """After a rewrite of record 2, the records after the last checkpoint (3) no longer link to what it signed."""
    chain = build(6)
    forged = rewrite(chain, 2, actor="mallory")
    decision = next_records(3, chain[2].hash, 6, forged[5].hash, forged[3:])
    assert isinstance(decision, Refusal) and decision.reason.startswith("record 4: link broken")
    same_length = next_records(6, chain[5].hash, 6, forged[5].hash, [])
    assert isinstance(same_length, Refusal) and "has hash" in same_length.reason


def test_a_restarted_writer_continues_after_the_newest_line_its_key_signed() -> None:
    chain = build(6)
    lines = checkpoints(chain, [2, 4]) + checkpoints(chain, [6], signer=OTHER) + ['{"torn']
    last = last_trusted(lines, KEY.public_key())
    assert last is not None and last.seq == 4
    assert last_trusted([], KEY.public_key()) is None
