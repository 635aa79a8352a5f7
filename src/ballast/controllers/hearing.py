"""When this control plane last began to hear its nodes.

A node's silence is judged from heartbeats this process recorded. If the process itself stalled (its event
loop blocked, the machine paused it) or has just started (a new leader), the heartbeats it did not process
say nothing about the nodes: silence counts only from the moment it hears again (`Store.hearing_since`).
"""

from __future__ import annotations

import asyncio
import logging

from ballast.store.engine import Store

log = logging.getLogger("ballast.hearing")

TICK_SECONDS = 0.25
STALL_SECONDS = 1.0   # a tick this much later than due: the process did not run, so it heard nothing


async def run(store: Store, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    store.hearing_since = store.clock()
    last = loop.time()
    while not stop.is_set():
        await asyncio.sleep(TICK_SECONDS)
        now = loop.time()
        if now - last > TICK_SECONDS + STALL_SECONDS:
            store.hearing_since = store.clock()
            log.warning("the control plane did not run for %.1fs; node silence counts again from now", now - last)
        last = now
