"""Spec of the store's writer turns: the data plane's facts (heartbeats, reports, acknowledgements) go before
every other writer waiting; within a class, first come first served; a cancelled waiter never keeps the turn."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ballast.store.engine import WriterTurns


async def test_urgent_writers_go_before_everyone_already_waiting() -> None:
    turns = WriterTurns()
    order: list[str] = []
    holder_may_go = asyncio.Event()

    async def writer(name: str, urgent: bool, hold: asyncio.Event | None = None) -> None:
        async with turns.turn(urgent):
            order.append(name)
            if hold is not None:
                await hold.wait()

    first = asyncio.create_task(writer("holder", False, holder_may_go))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(writer(f"user-{k}", False)) for k in range(3)]
    await asyncio.sleep(0)
    heartbeats = [asyncio.create_task(writer(f"heartbeat-{k}", True)) for k in range(2)]
    await asyncio.sleep(0)
    holder_may_go.set()
    await asyncio.gather(first, *waiting, *heartbeats)
    assert order == ["holder", "heartbeat-0", "heartbeat-1", "user-0", "user-1", "user-2"]


@pytest.mark.parametrize("cancel_after_handed", [False, True])
async def test_a_cancelled_waiter_never_keeps_the_turn(cancel_after_handed: bool) -> None:
    turns = WriterTurns()
    await turns.acquire(False)
    victim = asyncio.create_task(turns.acquire(True))
    later = asyncio.create_task(turns.acquire(False))
    await asyncio.sleep(0)
    if cancel_after_handed:
        turns.release()          # handed to the victim, which is cancelled before it runs
        victim.cancel()
    else:
        victim.cancel()
        await asyncio.sleep(0)
        turns.release()
    with pytest.raises(asyncio.CancelledError):
        await victim
    await asyncio.wait_for(later, 1)   # the turn went on to the next writer
    turns.release()
    await asyncio.wait_for(turns.acquire(True), 1)   # and is free again after it


async def test_a_replica_busy_with_its_own_writes_still_wakes_for_another_replicas_change(tmp_path: Any) -> None:
    """Two stores on one database (two replicas): while A waits for registry changes, B changes the registry and
    then A commits a write of its own (a heartbeat). A's waiter wakes: the gap in the resource version below A's
    own write is B's, whatever it touched. (Before, A's own write hid B's change until the wait timed out.)"""
    from ballast.store.engine import HEARTBEAT, REGISTRY, Store

    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    a, b = await Store.open(url), await Store.open(url, migrate_schema=False)
    try:
        async with a.write() as tx:
            tx.only(HEARTBEAT)
        seen = a.topic_version(frozenset({REGISTRY}))
        waiter = asyncio.create_task(a.wait_for_topics(frozenset({REGISTRY}), seen, timeout=30.0))
        await asyncio.sleep(0)
        async with b.write() as tx:
            tx.only(REGISTRY)
        async with a.write() as tx:   # A's own write, after B's: its rv jumps over B's
            tx.only(HEARTBEAT)
        # The once-a-second poll cannot help here: A's own write already moved A past B's version.
        woke = await asyncio.wait_for(waiter, timeout=10.0)
        assert woke > seen
    finally:
        await a.close()
        await b.close()
