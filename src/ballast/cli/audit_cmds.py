"""`ballast audit`: list the log, verify the chain (through the server, or independently against signed
checkpoints), and make the key the server signs checkpoints with.

`verify --checkpoints FILE --public-key FILE` is the auditor's check: it fetches the records through the API,
recomputes the chain here and checks it against a copy of the checkpoint file with only the public key, so it
trusts neither the server's verdict nor its database.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from ballast.cli import output
from ballast.cli.common import _fail, command, console, err_console
from ballast.client import Client
from ballast.core import audit_anchor
from ballast.core.audit_chain import GENESIS, AuditRecord, verify
from ballast.core.audit_signing import BadKey, Ed25519Signer, PublicKey

PAGE = 10_000   # the API's largest page of audit records


def read_key_file(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadKey(f"{flag} {path}: cannot read it ({exc.strerror})") from None


def load_signer(path: Path) -> Ed25519Signer:
    """The server's checkpoint signer from its key file; an unreadable or non-Ed25519 file is refused, named."""
    return Ed25519Signer.from_pem(read_key_file(path, "--audit-key"), f"--audit-key {path}")


def write_key_pair(private_file: Path, signer: Ed25519Signer) -> Path:
    """The private key (mode 0600, never over an existing file) and its public key beside it (FILE.pub)."""
    public_file = private_file.with_name(private_file.name + ".pub")
    private_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(signer.private_pem())
        fh.flush()
        os.fsync(fh.fileno())
    public_file.write_bytes(signer.public_key().pem())
    return public_file


@click.group()
def audit() -> None:
    """The append-only, hash-chained audit log and its signed checkpoints."""


@audit.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "yaml", "json"]), default="table")
@command
async def audit_list(client: Client, limit: int, fmt: str) -> None:
    output.render("audit", (await client.get("/v1/audit", limit=limit))["items"], fmt, console)


@audit.command("keygen")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="the private key file to create (mode 0600); the public key goes to OUT.pub")
def audit_keygen(out: Path) -> None:
    """Make an Ed25519 key for `ballast server --audit-key` (keep it off the database host)."""
    signer = Ed25519Signer.generate()
    try:
        public_file = write_key_pair(out, signer)
    except FileExistsError:
        _fail(f"error: --out {out}: the file exists; a signing key is never overwritten", 2)
    except OSError as exc:
        _fail(f"error: --out {out}: {exc.strerror}", 2)
    console.print(f"private key: {out} (mode 0600)   public key: {public_file}   key id: {signer.key_id}")


@audit.command("verify")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a JSON report (`ballast order report --format json`): check its audit records are in the chain")
@click.option("--checkpoints", "checkpoints_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a copy of the checkpoint file (or of the server log): check the chain here, independently of "
                   "the server")
@click.option("--public-key", "public_key_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="the public key (PEM) trusted to sign the checkpoints (with --checkpoints)")
@command
async def audit_verify(client: Client, report_file: Path | None, checkpoints_file: Path | None,
                       public_key_file: Path | None) -> None:
    """Check the whole hash chain and the server's signed checkpoints (and, with --report, that a report's
    records are exactly in it); with --checkpoints and --public-key, check it here against those instead."""
    if (checkpoints_file is None) != (public_key_file is None):
        _fail("error: --checkpoints and --public-key go together: the checkpoints are trusted only with the key", 2)
    if checkpoints_file is not None and public_key_file is not None:
        if report_file is not None:
            _fail("error: --report is checked by the server; run it without --checkpoints", 2)
        await _verify_independently(client, checkpoints_file, public_key_file)
        return
    if report_file is None:
        answer = await client.get("/v1/audit/verify")
    else:
        try:
            records = json.loads(report_file.read_text())["audit"]["records"]
        except (ValueError, KeyError, TypeError):
            _fail(f"error: {report_file}: expected a JSON order report with audit.records", 2)
        answer = await client.post("/v1/audit/verify", {"records": [{"seq": r["seq"], "hash": r["hash"]} for r in records]})
    anchor = answer.get("checkpoints")
    if answer["ok"]:
        checked = f"; all {answer['checked']} records of the report match" if report_file is not None else ""
        console.print(f"audit chain intact: {answer['records']} records, head {answer['headHash'][:16]}…{checked}")
        _print_anchor_summary(anchor)
        return
    for b in answer["breaks"]:
        err_console.print(f"record {b['seq']}: {b['problem']}", markup=False)
    for p in (anchor or {}).get("problems", []):
        err_console.print(p["problem"], markup=False)
    for m in answer.get("mismatches", []):
        err_console.print(f"report record {m['seq']}: {m['problem']}", markup=False)
    _fail(f"audit chain BROKEN or report not covered: {len(answer['breaks'])} break(s), "
          f"{len((anchor or {}).get('problems', []))} checkpoint problem(s), "
          f"{len(answer.get('mismatches', []))} mismatch(es) in {answer['records']} records")


def _print_anchor_summary(anchor: dict[str, Any] | None) -> None:
    if anchor is None:
        err_console.print("warning: the chain is NOT anchored: the server signs no checkpoints (start it with "
                          "--audit-key), so a rewrite of the whole database would go unnoticed", markup=False)
        return
    last = anchor["last"]
    where = f"up to record {last['seq']} (signed {last['time']} by {last['keyId']})" if last else "none yet"
    console.print(f"signed checkpoints: {anchor['verified']} verified, {where}; "
                  f"{anchor['unanchored']} newer record(s) not signed yet")


async def _all_records(client: Client) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    while True:
        page = (await client.get("/v1/audit", after=records[-1].seq if records else 0, limit=PAGE,
                                 oldest="true"))["items"]
        records += [AuditRecord(**item) for item in page]
        if len(page) < PAGE:
            return records


async def _verify_independently(client: Client, checkpoints_file: Path, public_key_file: Path) -> None:
    key = PublicKey.from_pem(read_key_file(public_key_file, "--public-key"), f"--public-key {public_key_file}")
    try:
        lines = checkpoints_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"error: --checkpoints {checkpoints_file}: cannot read it ({exc})", 2)
    if not next((line for line in lines if line.strip()), "{").startswith("{"):
        lines = audit_anchor.from_server_log(lines)     # a server log: its checkpoint lines (heads only)
    records = await _all_records(client)
    last_seq, last_hash = (records[-1].seq, records[-1].hash) if records else (0, GENESIS)
    breaks = verify(records, last_seq, last_hash)   # the links, recomputed here; the head row is the server's
    anchored = audit_anchor.check(records, lines, key)
    if not breaks and anchored.ok and anchored.verified:
        last = anchored.last
        assert last is not None
        console.print(f"audit chain intact: {len(records)} records recomputed here, head {last_hash[:16]}…; "
                      f"{anchored.verified} checkpoint(s) verified with key {key.key_id} up to record {last.seq} "
                      f"(signed {last.time}); {anchored.unanchored} newer record(s) not signed yet")
        return
    for b in breaks:
        err_console.print(f"record {b.seq}: {b.problem}", markup=False)
    for p in anchored.problems:
        err_console.print(p.problem, markup=False)
    if not anchored.verified:
        err_console.print(f"no checkpoint in {checkpoints_file} verifies with key {key.key_id}", markup=False)
    _fail(f"audit chain does NOT match the signed checkpoints: {len(breaks)} break(s), "
          f"{len(anchored.problems)} checkpoint problem(s) in {len(records)} records, "
          f"{anchored.verified} of {anchored.lines} checkpoint(s) verified")
