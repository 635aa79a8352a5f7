"""When this control plane last began to hear its nodes, and which quiet nodes are alive all the same.

A node's silence is judged from heartbeats this process recorded. If the process itself stalled (its event
loop blocked, the machine paused it) or has just started (a new leader), the heartbeats it did not process
say nothing about the nodes: silence counts only from the moment it hears again (`Store.hearing_since`).

Silence alone does not tell a dead or hung host from a busy agent or an overloaded control plane. Once a node
has been quiet for half its grace, the leader asks its agent directly, twice a second (agent/liveness.py: a
thread of the agent answers `ok` while its event loop still turns). A node that answers is alive, only unheard,
and is not judged NotReady (`agent_answering`); a dead, frozen or hung one refuses, times out or says nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import select

from ballast.store.engine import Store
from ballast.store.schema import nodes

log = logging.getLogger("ballast.hearing")

TICK_SECONDS = 0.25
STALL_SECONDS = 1.0   # a tick this much later than due: the process did not run, so it heard nothing
PROBE_EVERY_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 1.0
ANSWER_FRESH_SECONDS = 1.5   # an answer older than this says nothing about the node now


def agent_answering(store: Store, now: float) -> frozenset[str]:
    """Nodes whose agent answered a probe within the last ANSWER_FRESH_SECONDS."""
    return frozenset(n for n, at in store.agent_answered.items() if now - at <= ANSWER_FRESH_SECONDS)


async def _answers(host: str, port: int) -> bool:
    writer = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(host, port)
            return (await reader.read(64)).startswith(b"ok")
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()


def _liveness_port(conditions: Any) -> int | None:
    port = conditions.get("livenessPort") if isinstance(conditions, dict) else None
    return port if isinstance(port, int) and 0 < port < 65536 else None


async def probe_quiet_agents(store: Store, stop: asyncio.Event) -> None:
    """Leader only: probe the agent of every node quiet for half its grace, twice a second."""
    store.agent_answered.clear()   # another leader's answers are not this one's
    while not stop.is_set():
        await probe_once(store)
        try:
            await asyncio.wait_for(stop.wait(), PROBE_EVERY_SECONDS)
        except TimeoutError:
            pass


async def probe_once(store: Store) -> None:
    """One round: every quiet node's agent asked at once; returns when each has answered or timed out."""
    now = store.clock()
    quiet_after = store.node_grace_seconds / 2
    async with store.read() as conn:
        rows = (await conn.execute(select(nodes.c.name, nodes.c.ip, nodes.c.last_heartbeat,
                                          nodes.c.conditions))).all()
    # The node's own registered IP, only the port from its report: a probe goes nowhere a node could choose.
    quiet = [(r, port) for r in rows if (port := _liveness_port(r.conditions)) is not None
             and now - max(r.last_heartbeat, store.hearing_since) >= quiet_after]
    results = await asyncio.gather(*(_answers(r.ip, port) for r, port in quiet))
    answered_at = store.clock()
    for (r, port), answered in zip(quiet, results):
        if answered:
            if r.name not in agent_answering(store, answered_at):
                log.warning("node %s is quiet (%.1fs without a heartbeat) but its agent answers at %s:%d: alive, "
                            "not judged", r.name, now - r.last_heartbeat, r.ip, port)
            store.agent_answered[r.name] = answered_at
        else:
            store.agent_answered.pop(r.name, None)


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
