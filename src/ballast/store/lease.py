"""Leadership of the control plane: a lease row in the store and the epoch that fences its holder's writes.

Every replica serves the API; only the holder of the `controllers` lease runs the controllers. Taking the lease
over (after it expired) increments its epoch. The controllers run with `LEADERSHIP` set to (name, holder,
epoch) and a local deadline; `Store.write` then checks, inside the write's own transaction and holding a share
lock on the lease row, that the lease is still theirs at that epoch and unexpired (`check_fence`), and refuses
the write (`Fenced`) otherwise. A takeover updates the same row, so it waits for a fenced write in flight to end,
and every write begun after it sees the new epoch: a paused or partitioned former leader cannot change anything.

Times are the store clock's (wall clock, seconds); replicas' clocks are assumed to agree to well under the
lease. The epoch, not the clock, is what makes a stale write fail: clock skew only moves when a takeover
happens. The local deadline is on the monotonic clock of the process that renewed.
"""

from __future__ import annotations

import contextvars
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.errors import BallastError
from ballast.store.schema import leases

CONTROLLERS = "controllers"   # the lease the controllers run under


class Fenced(BallastError):
    """A write of a former leader, refused: its lease is gone or at a newer epoch."""

    status = 503

    def __init__(self, message: str, *, current: "LeaseRecord | None" = None, reason: str = "epoch") -> None:
        super().__init__(message)
        self.current = current
        self.reason = reason     # "epoch": the store refused it; "deadline": the holder's own deadline had passed


@dataclass(frozen=True)
class LeaseRecord:
    name: str
    holder: str
    epoch: int
    acquired_at: float
    renewed_at: float
    expires_at: float

    def to_json(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "holder": self.holder, "epoch": self.epoch, "acquiredAt": self.acquired_at,
                "renewedAt": self.renewed_at, "expiresAt": self.expires_at, "expired": self.expires_at <= now}


@dataclass
class Leadership:
    """What a leader's controllers carry: the lease they act under, and the moment (monotonic) after which the
    holder must assume it lost the lease even if nobody said so (the last renewal plus the lease, minus a safety
    margin). Mutable only by the holder's supervisor, which moves `deadline` at each renewal."""

    name: str
    holder: str
    epoch: int
    deadline: float
    monotonic: Callable[[], float] = time.monotonic

    def expired_locally(self) -> bool:
        return self.monotonic() >= self.deadline


LEADERSHIP: contextvars.ContextVar[Leadership | None] = contextvars.ContextVar("ballast_leadership", default=None)


def _record(row: Any) -> LeaseRecord:
    return LeaseRecord(row.name, row.holder, int(row.epoch), float(row.acquired_at), float(row.renewed_at),
                       float(row.expires_at))


async def read(conn: AsyncConnection, name: str) -> LeaseRecord | None:
    row = (await conn.execute(select(leases).where(leases.c.name == name))).first()
    return _record(row) if row is not None else None


def local_holder_gone(holder: str) -> bool:
    """Whether the process named in a holder (`where:port/pid`) is known to have ended on this machine. Only for a
    store that lives on this machine (SQLite), where every replica does too; an unreadable name counts as alive."""
    pid_text = holder.rpartition("/")[2]
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        stat = Path(f"/proc/{pid_text}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] in "ZX"


async def try_acquire(conn: AsyncConnection, name: str, holder: str, now: float, seconds: float,
                      holder_gone: Callable[[str], bool] | None = None, *, new_term: bool = False) -> LeaseRecord | None:
    """Take the lease if nobody holds it or its holder let it expire: a new epoch. None when another holds it.
    A holder that finds its own unexpired lease keeps its epoch (a renewal), unless `new_term`: a leader that
    halted its controllers begins again at a new epoch, so each epoch is one unbroken term. `holder_gone`: a
    holder it says has ended is not waited for (a replica killed and restarted on a SQLite store takes over at
    once)."""
    current = await read(conn, name)
    if current is None:
        try:
            async with conn.begin_nested():
                await conn.execute(insert(leases).values(name=name, holder=holder, epoch=1, acquired_at=now,
                                                         renewed_at=now, expires_at=now + seconds))
        except IntegrityError:
            return None    # another replica inserted it first
        return LeaseRecord(name, holder, 1, now, now, now + seconds)
    if current.holder == holder and current.expires_at > now and not new_term:
        return current if await renew(conn, current, now, seconds) else None
    own = current.holder == holder
    if current.expires_at > now and not own and not (holder_gone is not None and holder_gone(current.holder)):
        return None
    # Conditioned on the epoch we read: of two replicas taking over at once, one wins.
    taken = await conn.execute(update(leases).where(leases.c.name == name, leases.c.epoch == current.epoch)
                               .values(holder=holder, epoch=current.epoch + 1, acquired_at=now, renewed_at=now,
                                       expires_at=now + seconds))
    if taken.rowcount != 1:
        return None
    return LeaseRecord(name, holder, current.epoch + 1, now, now, now + seconds)


async def renew(conn: AsyncConnection, lease: LeaseRecord | Leadership, now: float, seconds: float) -> bool:
    """Extend our own unexpired lease at our epoch; False when it is no longer ours (expired, or taken over)."""
    done = await conn.execute(update(leases).where(leases.c.name == lease.name, leases.c.holder == lease.holder,
                                                   leases.c.epoch == lease.epoch, leases.c.expires_at > now)
                              .values(renewed_at=now, expires_at=now + seconds))
    return done.rowcount == 1


async def release(conn: AsyncConnection, lease: Leadership, now: float) -> bool:
    """Let the lease expire now (a clean shutdown): a standby takes over at its next attempt."""
    done = await conn.execute(update(leases).where(leases.c.name == lease.name, leases.c.holder == lease.holder,
                                                   leases.c.epoch == lease.epoch)
                              .values(expires_at=now))
    return done.rowcount == 1


async def check_fence(conn: AsyncConnection, lead: Leadership, now: float) -> None:
    """Inside a write transaction: hold the lease row (share lock, until the transaction ends) and make sure it
    is still `lead`'s at its epoch and unexpired; else raise Fenced (the caller rolls back)."""
    if lead.expired_locally():
        raise Fenced(f"lease {lead.name!r} epoch {lead.epoch} of {lead.holder} passed its local deadline "
                     "(not renewed in time)", reason="deadline")
    row = (await conn.execute(select(leases).where(leases.c.name == lead.name).with_for_update(read=True))).first()
    current = _record(row) if row is not None else None
    if current is None or current.holder != lead.holder or current.epoch != lead.epoch or current.expires_at <= now:
        held = (f"epoch {current.epoch} held by {current.holder}" + (" (expired)" if current.expires_at <= now else "")
                if current is not None else "no lease")
        raise Fenced(f"lease {lead.name!r} epoch {lead.epoch} of {lead.holder} is no longer current: {held}",
                     current=current)
