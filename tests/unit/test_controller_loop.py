"""Spec of the controller loop (controllers/loop.py): a slow pass is followed by proportionally more quiet when
nothing changes, so idle passes over a large store cannot keep the control plane busy; a named wake-up time
still cuts the quiet short."""

from __future__ import annotations

import asyncio
from typing import Any

from ballast.controllers.loop import IDLE_DUTY, run_passes

PASS_SECONDS = 0.05


class QuietStore:
    """Nothing ever changes: every wait runs to its timeout, which is recorded instead of waited."""

    def __init__(self, stop: asyncio.Event, passes: int) -> None:
        self.timeouts: list[float] = []
        self.stop, self.passes = stop, passes

    def topic_version(self, topics: Any) -> int:
        return 0

    def clock(self) -> float:
        return 1000.0

    async def wait_for_topics(self, topics: Any, after: int, timeout: float) -> int:
        self.timeouts.append(timeout)
        if len(self.timeouts) >= self.passes:
            self.stop.set()
        return 0


async def slow_pass(store: Any) -> int:
    await asyncio.sleep(PASS_SECONDS)
    return 0


async def test_a_slow_pass_is_followed_by_proportionally_more_quiet() -> None:
    stop = asyncio.Event()
    store = QuietStore(stop, 3)
    await run_passes("t", slow_pass, store, stop, idle_seconds=0.01)  # type: ignore[arg-type]
    assert len(store.timeouts) == 3
    assert all(t >= IDLE_DUTY * PASS_SECONDS for t in store.timeouts), store.timeouts


async def test_a_named_wake_up_still_cuts_the_quiet_short() -> None:
    stop = asyncio.Event()
    store = QuietStore(stop, 2)
    await run_passes("t", slow_pass, store, stop, idle_seconds=0.01,  # type: ignore[arg-type]
                     wake_at=lambda: 1000.0 + 0.03)
    assert all(t <= 0.03 for t in store.timeouts), store.timeouts
