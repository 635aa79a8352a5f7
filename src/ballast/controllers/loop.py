"""The loop every controller runs: a level-triggered pass after each change, and at least every `idle_seconds`."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from ballast.store.engine import EVERYTHING, Store
from ballast.store.lease import Fenced

IDLE_DUTY = 4.0


async def run_passes(name: str, reconcile: Callable[[Store], Awaitable[int]], store: Store, stop: asyncio.Event, *,
                     idle_seconds: float, min_interval: float = 0.0,
                     topics: frozenset[str] = frozenset({EVERYTHING}),
                     wake_at: Callable[[], float | None] | None = None) -> None:
    """Re-decide from fresh state after every write touching `topics` (at most one pass per `min_interval`), and
    at the latest after `idle_seconds` or at the moment `wake_at()` names (the store's clock), whichever is first;
    a failed pass is logged and retried, never fatal: the next pass decides from the store again."""
    log = logging.getLogger(f"ballast.{name}")
    loop = asyncio.get_running_loop()
    seen = 0
    while not stop.is_set():
        began = loop.time()
        seen = store.topic_version(topics)  # a write during the pass makes the wait below return at once
        try:
            await reconcile(store)
        except Fenced as exc:   # this replica no longer leads: its halt follows (no traceback, nothing to retry)
            log.warning("%s pass refused: %s", name, exc.message)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
            continue
        except Exception:
            log.exception("%s pass failed; retrying", name)
            await asyncio.sleep(1.0)
        # A pass of T seconds is followed by at least IDLE_DUTY x T of quiet when nothing changes: at 10,000
        # instances the registry's idle pass alone kept most of a core busy. Changes still wake it at once.
        idle = max(idle_seconds, IDLE_DUTY * (loop.time() - began))
        at = wake_at() if wake_at is not None else None
        if at is not None:
            idle = max(0.0, min(idle, at - store.clock()))
        seen = await store.wait_for_topics(topics, seen, idle)
        await asyncio.sleep(max(0.0, began + min_interval - loop.time()))
