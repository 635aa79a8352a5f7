"""Spec of control-plane leadership (store/lease.py, controllers/leadership.py), on SQLite and PostgreSQL: one
holder of the lease at a time; a takeover only after expiry, with a greater epoch; a former leader's writes are
refused (counted, audited) and change nothing; a leader that cannot renew stops acting before its lease ends."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from ballast.controllers import leadership
from ballast.controllers.leadership import BadLeaseSettings, LeaseSettings
from ballast.store import lease
from ballast.store.engine import Store
from ballast.store.schema import apps, audit


async def _acquire(store: Store, holder: str, now: float, seconds: float = 3.0) -> lease.LeaseRecord | None:
    async with store.engine.begin() as conn:
        return await lease.try_acquire(conn, lease.CONTROLLERS, holder, now, seconds)


async def _renew(store: Store, record: lease.LeaseRecord, now: float, seconds: float = 3.0) -> bool:
    async with store.engine.begin() as conn:
        return await lease.renew(conn, record, now, seconds)


async def test_one_holder_at_a_time_and_each_takeover_raises_the_epoch(store: Store) -> None:
    t = 1000.0
    a = await _acquire(store, "a", t)
    assert a is not None and a.epoch == 1
    assert await _acquire(store, "b", t + 1) is None, "held and unexpired: nobody else takes it"
    assert await _renew(store, a, t + 2)          # now lasts until t + 5
    assert await _acquire(store, "b", t + 4.9) is None
    b = await _acquire(store, "b", t + 5.0)
    assert b is not None and b.holder == "b" and b.epoch == 2
    assert not await _renew(store, a, t + 5.1), "a former holder cannot renew"
    again = await _acquire(store, "b", t + 6)
    assert again is not None and again.epoch == 2, "its own unexpired lease: renewed, same epoch"
    c = await _acquire(store, "a", t + 20)
    assert c is not None and c.epoch == 3


async def test_a_leader_that_halted_begins_a_new_term_even_on_its_own_unexpired_lease(store: Store) -> None:
    """A leader that missed its local deadline halted its controllers; when it contends again and finds its own
    lease still unexpired, it takes a new epoch: each epoch is one unbroken term, acquired (and audited) once."""
    a = await _acquire(store, "a", 1000.0)
    assert a is not None and a.epoch == 1
    async with store.engine.begin() as conn:
        again = await lease.try_acquire(conn, lease.CONTROLLERS, "a", 1001.0, 3.0, new_term=True)
    assert again is not None and again.epoch == 2 and again.holder == "a"
    assert not await _renew(store, a, 1001.5), "the halted term cannot renew"
    async with store.engine.begin() as conn:
        assert await lease.try_acquire(conn, lease.CONTROLLERS, "b", 1002.0, 3.0, new_term=True) is None, \
            "another replica still waits for the lease to expire"


async def _app_names(store: Store) -> list[str]:
    async with store.read() as conn:
        return list((await conn.execute(select(apps.c.name))).scalars())


async def _audit_actions(store: Store) -> list[tuple[str, str, dict]]:  # type: ignore[type-arg]
    async with store.read() as conn:
        rows = (await conn.execute(select(audit.c.action, audit.c.result, audit.c.detail).order_by(audit.c.seq))).all()
    return [(r.action, r.result, r.detail) for r in rows]


async def test_a_former_leaders_write_is_refused_counted_and_audited(store: Store) -> None:
    now = store.clock()
    a = await _acquire(store, "a", now - 10, seconds=3.0)   # expired long ago: as if `a` paused past its lease
    assert a is not None
    b = await _acquire(store, "b", now)
    assert b is not None and b.epoch == 2
    stale = lease.Leadership(a.name, "a", a.epoch, deadline=time.monotonic() + 60)   # `a` does not know yet
    rv = await store.resource_version()

    async def controller_pass() -> None:
        async with store.write() as tx:
            await tx.conn.execute(apps.insert().values(name="stale", spec={}, labels={}, generation=1, latest_revision=0, status={},
                                                       deployed_revision=0, created_at=0, updated_at=0,
                                                       resource_version=tx.rv))

    token = lease.LEADERSHIP.set(stale)
    try:
        with pytest.raises(lease.Fenced) as refused:
            await asyncio.create_task(controller_pass(), name="releases")
    finally:
        lease.LEADERSHIP.reset(token)
    assert refused.value.current is not None and refused.value.current.epoch == 2
    assert await _app_names(store) == [], "nothing of the refused write is in the store"
    assert store.fenced_writes == {"epoch": 1}
    await asyncio.wait_for(asyncio.gather(*store._background), 5)
    fenced = [d for action, result, d in await _audit_actions(store) if action == "leader.fenced"]
    assert len(fenced) == 1 and fenced[0]["controller"] == "releases" and fenced[0]["epoch"] == 1
    assert fenced[0]["currentEpoch"] == 2 and fenced[0]["currentHolder"] == "b"
    assert await store.resource_version() == rv + 1, "only the audit record's write committed"

    current = lease.Leadership(b.name, "b", b.epoch, deadline=time.monotonic() + 60)
    token = lease.LEADERSHIP.set(current)
    try:
        await controller_pass()
    finally:
        lease.LEADERSHIP.reset(token)
    assert await _app_names(store) == ["stale"], "the current leader's write goes through"


async def test_a_leader_past_its_local_deadline_writes_nothing(store: Store) -> None:
    record = await _acquire(store, "a", store.clock())
    assert record is not None
    late = lease.Leadership(record.name, "a", record.epoch, deadline=time.monotonic() - 0.01)
    token = lease.LEADERSHIP.set(late)
    try:
        with pytest.raises(lease.Fenced):
            async with store.write():
                raise AssertionError("not reached")
    finally:
        lease.LEADERSHIP.reset(token)
    assert store.fenced_writes == {"deadline": 1}


FAST = LeaseSettings(seconds=0.8, renew_seconds=0.2, retry_seconds=0.05)


def _recording(runs: list[str], name: str):  # type: ignore[no-untyped-def]
    """A stand-in for the controllers: it writes (fenced) every few milliseconds until cancelled."""
    def start(halt: asyncio.Event) -> list[asyncio.Task[None]]:
        async def work() -> None:
            while not halt.is_set():
                async with store_of[name].write() as tx:
                    await tx.audit(actor=name, action="controller.pass", resource="test")
                runs.append(name)
                await asyncio.sleep(0.02)
        return [asyncio.create_task(work(), name=f"work-{name}")]
    return start


store_of: dict[str, Store] = {}


async def _lease_row(store: Store) -> lease.LeaseRecord:
    async with store.read() as conn:
        record = await lease.read(conn, lease.CONTROLLERS)
    assert record is not None
    return record


async def _until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.02)


async def test_a_standby_takes_over_when_the_leader_dies_and_only_one_acts(store: Store, store_url: str) -> None:
    other = await Store.open(store_url)
    store_of.update(a=store, b=other)
    runs: list[str] = []
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(leadership.lead(store, stop_a, "a", _recording(runs, "a"), FAST))
    await _until(lambda: _truthy(runs))
    b = asyncio.create_task(leadership.lead(other, stop_b, "b", _recording(runs, "b"), FAST))
    await asyncio.sleep(3 * FAST.seconds)
    assert set(runs) == {"a"}, "the standby never acts while the leader renews"
    a.cancel()   # dies: no release, its lease runs out
    await asyncio.gather(a, return_exceptions=True)
    died = time.monotonic()
    await _until(lambda: _truthy(r for r in runs if r == "b"))
    assert time.monotonic() - died <= FAST.seconds + 1.0
    assert (await _lease_row(store)).holder == "b" and (await _lease_row(store)).epoch == 2
    stop_b.set()
    await asyncio.wait_for(b, 5)
    assert (await _lease_row(store)).expires_at <= other.clock(), "a clean stop lets the lease go at once"
    acquired = [d for action, _, d in await _audit_actions(store) if action == "leader.acquired"]
    assert [(d["holder"], d["epoch"]) for d in acquired] == [("a", 1), ("b", 2)]
    await other.close()


async def _truthy(items) -> bool:  # type: ignore[no-untyped-def]
    return any(True for _ in items)


async def test_a_leader_that_cannot_renew_stops_acting_before_its_lease_ends(store: Store,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store_of["a"] = store
    runs: list[str] = []
    stopped_at: list[float] = []
    start = _recording(runs, "a")

    def start_and_watch(halt: asyncio.Event) -> list[asyncio.Task[None]]:
        tasks = start(halt)
        tasks[0].add_done_callback(lambda _: stopped_at.append(store.clock()))
        return tasks

    stop = asyncio.Event()
    task = asyncio.create_task(leadership.lead(store, stop, "a", start_and_watch, FAST))
    await _until(lambda: _truthy(runs))
    held = await _lease_row(store)

    async def store_hangs(*args: object, **kwargs: object) -> bool:
        await asyncio.Event().wait()   # the store never answers (cut off, not refusing)
        return False

    monkeypatch.setattr(lease, "renew", store_hangs)
    await _until(lambda: _truthy(stopped_at), timeout=5)
    expires = (await _lease_row(store)).expires_at
    assert expires >= held.expires_at
    assert stopped_at[0] < expires, f"stopped {expires - stopped_at[0]:.3f}s before the lease ended"
    assert expires - stopped_at[0] >= FAST.margin / 2
    stop.set()
    await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("seconds, renew, ok", [(3.0, 1.0, True), (1.5, 1.0, False), (1.0, 1.0, False),
                                                (0.5, 1.0, False), (10.0, 4.0, True), (2.0, 0.5, True)])
def test_a_lease_not_clearly_longer_than_the_renewal_interval_is_refused(seconds: float, renew: float,
                                                                        ok: bool) -> None:
    settings = LeaseSettings(seconds=seconds, renew_seconds=renew)
    if ok:
        assert settings.check() is settings
    else:
        with pytest.raises(BadLeaseSettings, match="not clearly longer"):
            settings.check()


async def test_a_holder_that_ended_on_this_machine_is_not_waited_for_on_sqlite(store: Store) -> None:
    """A SQLite store lives on one machine with its one replica: a replica killed and restarted there takes the
    lease at once instead of waiting out its long lease. A holder whose process lives is waited for as ever."""
    import os
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        async def acquire(name: str, now: float) -> lease.LeaseRecord | None:
            async with store.engine.begin() as conn:
                return await lease.try_acquire(conn, lease.CONTROLLERS, name, now, 15.0, lease.local_holder_gone)

        first = await acquire(f"127.0.0.1:7700/{holder.pid}", 1000.0)
        assert first is not None and first.epoch == 1
        assert await acquire(f"127.0.0.1:7700/{os.getpid()}", 1001.0) is None, "its process lives: waited for"
        holder.kill()
        holder.wait()
        second = await acquire(f"127.0.0.1:7700/{os.getpid()}", 1002.0)
        assert second is not None and second.epoch == 2, "its holder ended: taken over before expiry, a new epoch"
    finally:
        holder.kill()
        holder.wait()
    assert not lease.local_holder_gone("a"), "a name without a process is never judged gone"
