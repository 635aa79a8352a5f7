"""Spec of the anchored audit log over real stores (SQLite and PostgreSQL): the server's checkpoint writer signs
the chain into a file outside the database, and `GET /v1/audit/verify` checks the chain against it — so a rewrite
done directly in SQL (records and head row) is found, naming the records, and forged checkpoints are refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, update

from ballast.api.app import create_app
from ballast.controllers import checkpoints
from ballast.controllers.checkpoints import AuditAnchor, CheckpointWriter
from ballast.core.audit_anchor import file_line, sign
from ballast.core.audit_chain import record_hash
from ballast.core.audit_signing import Ed25519Signer
from ballast.core.manifests import API_VERSION
from ballast.services.access import bootstrap_admin
from ballast.store.audit_log import records
from ballast.store.checkpoint_file import CheckpointFile, CheckpointFileError
from ballast.store.engine import Store
from ballast.store.schema import audit, audit_head

CELL = {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": "cell-a"}, "spec": {"zone": "zone-a"}}


@dataclass
class Anchored:
    store: Store
    http: httpx.AsyncClient
    anchor: AuditAnchor
    writer: CheckpointWriter
    users: int = 0

    async def change(self, n: int) -> None:
        """`n` audited changes through the API."""
        for _ in range(n):
            self.users += 1
            r = await self.http.post("/v1/users", json={"name": f"user-{self.users}", "role": "viewer"})
            assert r.status_code == 201, r.text

    async def verify(self) -> dict[str, Any]:
        r = await self.http.get("/v1/audit/verify")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
async def anchored(store: Store, tmp_path: Path) -> AsyncIterator[Anchored]:
    """The API of a server that anchors its chain: a signer and a checkpoint file outside the store."""
    token = await bootstrap_admin(store)
    anchor = AuditAnchor(Ed25519Signer.generate(), CheckpointFile(tmp_path / "checkpoints"), interval=3600)
    anchor.file.open_for_append()
    app = create_app(store, audit_anchor=anchor)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ballast",
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        yield Anchored(store, http, anchor, CheckpointWriter(store, anchor))
    anchor.file.close()


async def _rewrite(store: Store, seq: int, actor: str) -> None:
    """The full rewrite, in SQL: change record `seq`, recompute its hash, every later one and the head row."""
    async with store.engine.begin() as conn:
        chain = await records(conn)
        prev = chain[seq - 2].hash if seq > 1 else "0" * 64
        for rec in chain[seq - 1:]:
            who = actor if rec.seq == seq else rec.actor
            digest = record_hash(prev, rec.seq, rec.ts, who, rec.action, rec.resource, rec.before, rec.after,
                                 rec.result, rec.detail)
            await conn.execute(update(audit).where(audit.c.seq == rec.seq).values(actor=who, prev_hash=prev,
                                                                                     hash=digest))
            prev = digest
        await conn.execute(update(audit_head).where(audit_head.c.id == 1).values(hash=prev))


async def _truncate(store: Store, keep: int) -> None:
    """A deleted tail: records after `keep` removed and the head row rolled back to it."""
    async with store.engine.begin() as conn:
        kept = (await conn.execute(select(audit.c.hash).where(audit.c.seq == keep))).scalar_one()
        await conn.execute(delete(audit).where(audit.c.seq > keep))
        await conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=keep, hash=kept))


async def test_an_untouched_anchored_chain_verifies(anchored: Anchored) -> None:
    """Checkpoints signed as the chain grows verify; records after the last one are counted as not signed yet."""
    await anchored.change(3)
    assert await anchored.writer.write_due() == 1
    await anchored.change(2)
    assert await anchored.writer.write_due() == 1
    assert await anchored.writer.write_due() == 0          # nothing new: nothing signed
    await anchored.change(1)
    verdict = await anchored.verify()
    assert verdict["ok"] is True and verdict["breaks"] == []
    cps = verdict["checkpoints"]
    assert (cps["lines"], cps["verified"], cps["unanchored"], cps["problems"]) == (2, 2, 1, [])
    assert cps["last"]["seq"] == verdict["records"] - 1 and cps["last"]["keyId"] == anchored.anchor.signer.key_id


async def test_a_full_rewrite_in_sql_is_found_naming_the_first_record_that_disagrees(anchored: Anchored) -> None:
    """Record 2 edited, every later hash and the head row recomputed: the chain alone says ok, the checkpoints
    name record 2 as changed and the later ones as re-hashed; the writer refuses to sign the forged chain."""
    await anchored.change(2)
    await anchored.writer.write_due()
    await anchored.change(2)
    await anchored.writer.write_due()
    await _rewrite(anchored.store, 2, "mallory")
    verdict = await anchored.verify()
    assert verdict["breaks"] == []                          # the rewrite fooled the chain alone
    assert verdict["ok"] is False
    problems = verdict["checkpoints"]["problems"]
    assert problems[0]["seq"] == 2
    assert problems[0]["problem"].startswith("record 2 is not the record checkpoint line 1 signed: its content "
                                             "was changed")
    assert problems[1]["problem"].startswith(f"records 3..{verdict['records']}: content as signed, but re-hashed")
    assert any(p["problem"].startswith("checkpoint at record") for p in problems)
    await anchored.change(1)
    assert await anchored.writer.write_due() == 0
    assert anchored.writer.refusal is not None and "link broken" in anchored.writer.refusal


async def test_a_deleted_tail_is_found(anchored: Anchored) -> None:
    """The newest records deleted and the head row rolled back: the chain alone says ok, the checkpoint does not."""
    await anchored.change(4)
    await anchored.writer.write_due()
    count = (await anchored.verify())["records"]
    await _truncate(anchored.store, count - 2)
    verdict = await anchored.verify()
    assert verdict["breaks"] == [] and verdict["ok"] is False
    assert [p["problem"] for p in verdict["checkpoints"]["problems"]] == [
        f"the store ends at record {count - 2} but checkpoint line 1 signs up to record {count}: "
        f"records {count - 1}..{count} deleted"]
    assert await anchored.writer.write_due() == 0
    assert anchored.writer.refusal is not None and "behind the last checkpoint" in anchored.writer.refusal


async def test_checkpoints_with_a_wrong_signature_or_another_key_are_refused(anchored: Anchored) -> None:
    """A line whose signature was altered, and lines signed by another key, are refused and anchor nothing."""
    await anchored.change(2)
    await anchored.writer.write_due()
    path = anchored.anchor.file.path
    [line] = path.read_text().splitlines()
    doc = json.loads(line)
    doc["time"] = "2020-01-01T00:00:00.000+00:00"           # any signed field changed: the signature no longer holds
    async with anchored.store.read() as conn:
        chain = await records(conn)
    impostor = Ed25519Signer.generate()
    path.write_text(json.dumps(doc) + "\n" + file_line(sign(impostor, chain, "2026-12-06T10:00:00.000+00:00")) + "\n")
    verdict = await anchored.verify()
    assert verdict["ok"] is False
    assert [p["problem"] for p in verdict["checkpoints"]["problems"]] == [
        f"checkpoint line 1: its signature does not verify with key {anchored.anchor.signer.key_id}: refused",
        f"checkpoint line 2: signed by key {impostor.key_id}, not the trusted key {anchored.anchor.signer.key_id}: "
        "refused"]
    assert verdict["checkpoints"]["verified"] == 0


async def test_the_writer_signs_at_shutdown_and_one_server_owns_the_file(anchored: Anchored) -> None:
    """The writer's loop signs once more when stopped (however long its interval), and a second writer of the
    same checkpoint file is refused."""
    stop = asyncio.Event()
    task = asyncio.create_task(checkpoints.run(anchored.store, stop, anchored.anchor))
    await anchored.change(3)
    stop.set()
    await asyncio.wait_for(task, 30)
    verdict = await anchored.verify()
    assert verdict["ok"] is True and verdict["checkpoints"]["unanchored"] == 0
    assert verdict["checkpoints"]["last"]["seq"] == verdict["records"]
    with pytest.raises(CheckpointFileError, match="another server writes checkpoints there"):
        CheckpointFile(anchored.anchor.file.path.parent).open_for_append()


async def test_a_server_without_a_key_says_its_chain_is_not_anchored(api: Any) -> None:
    verdict = (await api.http.get("/v1/audit/verify")).json()
    assert verdict["ok"] is True and verdict["checkpoints"] is None


def test_a_line_being_appended_is_not_read_and_a_torn_one_is_completed_by_the_next_writer(tmp_path: Path) -> None:
    """Readers see complete lines only (no false alarm while the writer appends); a line a crash tore stays, ended
    by the next writer, so the check reports it instead of it swallowing the next checkpoint."""
    first = CheckpointFile(tmp_path)
    first.open_for_append()
    first.append("one")
    first.close()
    with open(first.path, "a") as fh:
        fh.write('{"v":1,"fro')
    assert first.lines() == ["one"]
    second = CheckpointFile(tmp_path)
    second.open_for_append()
    second.append("two")
    second.close()
    assert second.lines() == ["one", '{"v":1,"fro', "two"]
