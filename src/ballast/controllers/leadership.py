"""Which replica runs the controllers: contend for the `controllers` lease, run them while it holds it.

Every `ballast server` runs `lead()`. A standby tries to take the lease every `retry_seconds`; the holder starts
the controllers (with `lease.LEADERSHIP` set in their context, so each of their writes is fenced by the epoch)
and renews every `renew_seconds`. It halts them BEFORE its lease could have ended: at a local deadline on the
monotonic clock, the start of the last successful renewal plus the lease minus a safety margin, whether or not
a renewal has answered since (a store that hangs or is cut off cannot keep a leader acting). Then it contends
again like any standby. A clean shutdown lets the lease expire at once, so a standby takes over without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from ballast.errors import BallastError
from ballast.store import lease
from ballast.store.engine import Store

log = logging.getLogger("ballast.leadership")

STOP_GRACE_SECONDS = 2.0   # a halted controller's pass under way may end by itself; then it is cancelled
StartControllers = Callable[[asyncio.Event], list["asyncio.Task[None]"]]


class BadLeaseSettings(BallastError):
    status = 2


@dataclass(frozen=True)
class LeaseSettings:
    seconds: float = 3.0         # how long a renewal holds the lease
    renew_seconds: float = 1.0   # how often the leader renews
    retry_seconds: float = 0.5   # how often a standby tries to take it

    @property
    def margin(self) -> float:
        """How long before its lease could end (by the store's clock) the leader stops acting: covers a renewal
        whose answer came late and clocks of the replicas that disagree a little."""
        return max(0.1, min(1.0, 0.2 * self.seconds))

    def check(self) -> "LeaseSettings":
        """Refuse settings with which a leader could not renew before its own deadline passes."""
        if self.renew_seconds <= 0 or self.retry_seconds <= 0:
            raise BadLeaseSettings("--renew-seconds must be more than 0")
        if self.seconds - self.margin < 2 * self.renew_seconds:
            raise BadLeaseSettings(
                f"--lease-seconds {self.seconds:g} is not clearly longer than --renew-seconds {self.renew_seconds:g}:"
                f" the leader stops acting {self.margin:g}s before its lease ends, and must have had the time for at "
                f"least two renewals by then (lease >= 2 x renew + {self.margin:g}s)")
        return self


async def lead(store: Store, stop: asyncio.Event, holder: str, start: StartControllers,
               settings: LeaseSettings = LeaseSettings(), *, name: str = lease.CONTROLLERS,
               monotonic: Callable[[], float] = time.monotonic) -> None:
    """Contend for the lease until `stop`; while holding it, run what `start` starts (given an event set when
    they must stop), each in a context carrying the leadership."""
    while not stop.is_set():
        leadership = await _acquire(store, holder, name, settings, monotonic)
        if leadership is None:
            await _sleep_unless(stop, settings.retry_seconds)
            continue
        await _hold(store, stop, leadership, start, settings)


async def _acquire(store: Store, holder: str, name: str, settings: LeaseSettings,
                   monotonic: Callable[[], float]) -> lease.Leadership | None:
    began = monotonic()
    try:
        async with asyncio.timeout(settings.seconds - settings.margin):
            async with store.engine.begin() as conn:
                record = await lease.try_acquire(conn, name, holder, store.clock(), settings.seconds,
                                                 lease.local_holder_gone if store.dialect == "sqlite" else None,
                                                 new_term=True)
    except Exception as exc:   # the store is down or slow: stay a standby and try again
        log.warning("could not contend for the %s lease: %r", name, exc)
        return None
    if record is None:
        return None
    leadership = lease.Leadership(name, holder, record.epoch, began + settings.seconds - settings.margin, monotonic)
    token = lease.LEADERSHIP.set(leadership)
    try:   # fenced like every write of the leader: the record exists only if the lease was ours when it committed
        async with store.write() as tx:
            await tx.audit(actor=f"replica/{holder}"[:63], action="leader.acquired", resource=f"lease/{name}",
                           detail={"holder": holder, "epoch": record.epoch, "acquiredAt": record.acquired_at,
                                   "expiresAt": record.expires_at, "leaseSeconds": settings.seconds})
    except Exception as exc:
        log.warning("took the %s lease at epoch %d but could not record it: %r", name, record.epoch, exc)
        return None
    finally:
        lease.LEADERSHIP.reset(token)
    log.warning("this replica (%s) leads: lease %s epoch %d", holder, name, record.epoch)
    return leadership


async def _hold(store: Store, stop: asyncio.Event, leadership: lease.Leadership, start: StartControllers,
                settings: LeaseSettings) -> None:
    token = lease.LEADERSHIP.set(leadership)   # the controllers' tasks copy this context
    try:
        halt = asyncio.Event()
        tasks = start(halt)
    finally:
        lease.LEADERSHIP.reset(token)
    why = "stopping"
    try:
        while not stop.is_set():
            now = leadership.monotonic()
            if now >= leadership.deadline:
                why = "its local deadline passed without a renewal"
                break
            next_renewal = min(leadership.deadline, now + settings.renew_seconds)
            await _sleep_unless(stop, next_renewal - now)
            if stop.is_set():
                break
            began = leadership.monotonic()
            if began >= leadership.deadline:
                why = "its local deadline passed without a renewal"
                break
            try:
                async with asyncio.timeout(leadership.deadline - began):
                    async with store.engine.begin() as conn:
                        renewed = await lease.renew(conn, leadership, store.clock(), settings.seconds)
            except TimeoutError:
                why = "the store did not answer a renewal before its local deadline"
                break
            except Exception as exc:
                log.warning("could not renew the %s lease (epoch %d): %r", leadership.name, leadership.epoch, exc)
                continue   # retried until the deadline
            if not renewed:
                why = "the lease is no longer its own"
                break
            leadership.deadline = began + settings.seconds - settings.margin
    finally:
        # Halted, not cut off: a pass under way ends by itself, and any write it still tries is refused by the
        # fence and counted (Store.write), which is what a paused former leader's stale work must meet.
        halt.set()
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
            for task in unfinished:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if stop.is_set():
            await _release(store, leadership)
        else:
            log.warning("this replica (%s) stopped leading at epoch %d: %s", leadership.holder, leadership.epoch, why)


async def _release(store: Store, leadership: lease.Leadership) -> None:
    try:
        async with asyncio.timeout(2.0):
            async with store.engine.begin() as conn:
                await lease.release(conn, leadership, store.clock())
    except Exception as exc:
        log.warning("could not release the %s lease: %r (a standby takes it when it expires)", leadership.name, exc)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        pass
