"""The audit checkpoint writer: anchors the audit chain outside the database.

Every `interval` seconds when the chain grew, and once more at shutdown, it signs the records appended since
its last checkpoint (`core.audit_anchor`), appends the checkpoint to the checkpoint file (fsynced) and logs it.
It continues from the newest checkpoint its key signed in the file, and it refuses — loudly, on every change of
reason, and without signing — a chain that no longer continues the one it signed: a signature must never
vouch for a rewritten log.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from ballast.core.audit_anchor import MAX_RECORDS_PER_CHECKPOINT, Refusal, file_line, last_trusted, log_line, next_records, sign
from ballast.core.audit_chain import GENESIS
from ballast.core.audit_signing import Signer
from ballast.services import audit_trail
from ballast.store.checkpoint_file import CheckpointFile
from ballast.store.engine import Store

log = logging.getLogger("ballast.audit.checkpoints")


@dataclass(frozen=True)
class AuditAnchor:
    """What the server anchors the chain with: its signer and the checkpoint file it alone appends to."""
    signer: Signer
    file: CheckpointFile
    interval: float = 10.0


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class CheckpointWriter:
    def __init__(self, store: Store, anchor: AuditAnchor, clock: Callable[[], str] = _utc_now) -> None:
        self.store, self.anchor, self.clock = store, anchor, clock
        last = last_trusted(anchor.file.lines(), anchor.signer.public_key())
        self.last_seq, self.last_hash = (last.seq, last.head) if last is not None else (0, GENESIS)
        self.refusal: str | None = None

    async def write_due(self) -> int:
        """Sign whatever the chain gained since the last checkpoint; how many checkpoints were written."""
        written = 0
        while True:
            async with self.store.read() as conn:
                head_seq, head_hash = await audit_trail.head(conn)
                # The head row first: every record up to it is committed, later ones wait for the next pass.
                batch = [r for r in await audit_trail.records_after(conn, self.last_seq, MAX_RECORDS_PER_CHECKPOINT)
                         if r.seq <= head_seq]
            decision = next_records(self.last_seq, self.last_hash, head_seq, head_hash, batch)
            if isinstance(decision, Refusal):
                if decision.reason != self.refusal:
                    log.error("NOT signing an audit checkpoint: %s; the audit log was changed in the database "
                              "(`ballast audit verify` names the records)", decision.reason)
                self.refusal = decision.reason
                return written
            self.refusal = None
            if not decision:
                return written
            cp = sign(self.anchor.signer, decision, self.clock())
            await asyncio.to_thread(self.anchor.file.append, file_line(cp))
            log.info("audit checkpoint %s", log_line(cp))
            self.last_seq, self.last_hash = cp.seq, cp.head
            written += 1
            if cp.seq >= head_seq:
                return written


async def run(store: Store, stop: asyncio.Event, anchor: AuditAnchor) -> None:
    """Write checkpoints until `stop`, then a last one for whatever came in meanwhile."""
    writer = CheckpointWriter(store, anchor)
    log.info("anchoring the audit chain: key %s, checkpoints in %s, every %.0f s; continuing after record %d",
             anchor.signer.key_id, anchor.file.path, anchor.interval, writer.last_seq)
    while not stop.is_set():
        try:
            await writer.write_due()
        except Exception:
            log.exception("audit checkpoint failed; retrying")
        try:
            await asyncio.wait_for(stop.wait(), anchor.interval)
        except TimeoutError:
            pass
    await writer.write_due()
    log.info("stopping: the audit chain is signed up to record %d", writer.last_seq)
