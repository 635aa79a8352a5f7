"""The audit chain anchored outside the database, end to end: `ballast up` signs checkpoints with a key in its data
dir; someone who rewrites the stopped platform's SQLite audit table and head (a consistent chain again) is caught
by `ballast audit verify` after the restart, naming the record — through the server, and independently by an
auditor holding a copy of the checkpoints (or of the server log) and the public key."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ballast.core.audit_chain import record_hash
from tests.e2e.conftest import Platform, eventually, start_platform

pytestmark = pytest.mark.e2e

FIRST_IP = "127.0.131.2"


@pytest.fixture
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory.mktemp("audit-anchor"), FIRST_IP)


def _rewrite(db: Path, seq: int, actor: str) -> int:
    """Change record `seq`'s actor, then recompute its hash, every later one and the head row, as an attacker
    with the database file would; returns the chain's length."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, ts, actor, action, resource, before, after, result, detail, prev_hash "
                            "FROM audit ORDER BY seq").fetchall()
        prev = None
        for n, ts, who, action, resource, before, after, result, detail, stored_prev in rows:
            who = actor if n == seq else who
            link = stored_prev if prev is None else prev
            prev = record_hash(link, n, ts, who, action, resource, before, after, result, json.loads(detail))
            conn.execute("UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?", (who, link, prev, n))
        conn.execute("UPDATE audit_head SET hash = ? WHERE id = 1", (prev,))
    return len(rows)


def test_a_rewritten_audit_table_is_caught_by_the_signed_checkpoints(platform: Platform, tmp_path: Path) -> None:
    data = platform.data_dir
    key, public = data / "audit-key.pem", data / "audit-key.pem.pub"
    assert key.stat().st_mode & 0o777 == 0o600
    platform.cli("user", "create", "alice", "--role", "viewer")
    platform.cli("user", "create", "bob", "--role", "operator")
    intact = platform.cli("audit", "verify")
    assert "audit chain intact" in intact.stdout and "signed checkpoints:" in intact.stdout, intact.stdout

    assert platform.stop() == 0, platform.log_tail()
    checkpoints = data / "audit-checkpoints" / "checkpoints.jsonl"
    with sqlite3.connect(data / "ballast.db") as conn:
        length = conn.execute("SELECT max(seq) FROM audit").fetchone()[0]
    last = json.loads(checkpoints.read_text().splitlines()[-1])
    assert last["seq"] == length, "the server signs the whole chain when it stops"
    _assert_in(data / "logs" / "server.log", f"stopping: the audit chain is signed up to record {length}")
    auditor = tmp_path / "auditor-checkpoints.jsonl"     # the auditor's copies, taken before the tampering
    shutil.copy(checkpoints, auditor)
    log_copy = tmp_path / "auditor-server.log"
    shutil.copy(data / "logs" / "server.log", log_copy)

    victim = 3
    assert _rewrite(data / "ballast.db", victim, "mallory") == length
    platform.start()

    found = platform.cli("audit", "verify", check=False)
    assert found.returncode != 0, found.stdout
    assert f"record {victim} is not the record checkpoint line" in found.stderr, found.stderr
    assert "content was changed" in found.stderr and "re-hashed" in found.stderr, found.stderr

    independent = platform.cli("audit", "verify", "--checkpoints", str(auditor), "--public-key", str(public),
                               check=False)
    assert independent.returncode != 0, independent.stdout
    assert f"record {victim} is not the record checkpoint line" in independent.stderr, independent.stderr
    assert "audit chain does NOT match the signed checkpoints" in independent.stderr, independent.stderr

    from_log = platform.cli("audit", "verify", "--checkpoints", str(log_copy), "--public-key", str(public),
                            check=False)
    assert from_log.returncode != 0, from_log.stdout
    narrowed = re.search(r"a record of records? (\d+)(?:\.\.(\d+))? was changed", from_log.stderr)
    assert narrowed is not None, from_log.stderr
    assert int(narrowed[1]) <= victim <= int(narrowed[2] or narrowed[1]), from_log.stderr

    server_log = data / "logs" / "server.log"
    eventually(lambda: _assert_in(server_log, "NOT signing an audit checkpoint"),
               "the server refuses to sign the rewritten chain, in its log")


def _assert_in(path: Path, text: str) -> None:
    assert text in path.read_text(errors="replace"), f"{text!r} not in {path}"
