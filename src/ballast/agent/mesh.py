"""The node's mesh component: the registry, applied to every sidecar on this node, acknowledged.

The agent long-polls the registry; each new snapshot is applied to all
running sidecars (runtime API for endpoint changes, a seamless reload when a
service appears or goes) and then acknowledged with the lowest generation
every running sidecar has in effect. The control plane lets a drained
instance stop only after that acknowledgement, so a sidecar on this node can
never still be sending to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Iterable

from ballast.agent.sidecar import Sidecar
from ballast.client import ApiError, Client, Unreachable
from ballast.wire.registry import Snapshot
from ballast.wire.reports import Acknowledgement

log = logging.getLogger("ballast.agent")
POLL_SECONDS = 25.0
RETRY_SECONDS = 3.0    # re-apply while some sidecar reports a problem (e.g. a deletion HAProxy postponed)


class Mesh:
    def __init__(self, client: Client, node: str, sidecars: Callable[[], Iterable[Sidecar]]) -> None:
        self.client = client
        self.node = node
        self.sidecars = sidecars
        self.snapshot = Snapshot.empty()
        self.received = asyncio.Event()      # a first snapshot has arrived
        self._dirty = asyncio.Event()
        self._acked = -1
        self._received_at = 0.0

    def poke(self) -> None:
        """Apply (and acknowledge) again soon: a sidecar started, stopped or came back."""
        self._dirty.set()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._poll(stop)), asyncio.create_task(self._apply_loop(stop))]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            known = self.snapshot.generation if self.received.is_set() else None
            try:
                answer = await self.client.get("/v1/registry", known=known, timeout=POLL_SECONDS)
            except (Unreachable, ApiError) as exc:
                log.warning("registry unavailable (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            snapshot = Snapshot.from_json(answer)
            self._received_at = time.time()
            if not self.received.is_set() or snapshot.generation != self.snapshot.generation:
                self.snapshot = snapshot
                self.received.set()
                self._dirty.set()

    async def _apply_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            troubled = any(s.error for s in self.sidecars())
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=RETRY_SECONDS if troubled else 10.0)
            except TimeoutError:
                pass
            self._dirty.clear()
            if not self.received.is_set():
                continue
            snapshot = self.snapshot
            running = [s for s in self.sidecars() if s.proxy.alive()]
            began = time.monotonic()
            await asyncio.gather(*(s.apply(snapshot) for s in running))
            applied = time.monotonic()
            await self._acknowledge(snapshot)
            log.info("registry-apply generation=%s sidecars=%d received=%.3f apply=%.3f ack=%.3f",
                     snapshot.generation, len(running), self._received_at, applied - began,
                     time.monotonic() - applied)

    def in_effect(self, snapshot: Snapshot) -> int:
        """The generation every running sidecar on this node has applied (vacuously the newest if none runs)."""
        running = [s for s in self.sidecars() if s.proxy.alive()]
        return min((s.applied_generation for s in running), default=snapshot.generation)

    async def _acknowledge(self, snapshot: Snapshot) -> None:
        generation = self.in_effect(snapshot)
        errors = "; ".join(f"{s.id}: {s.error}" for s in self.sidecars() if s.error)[:4000]
        try:
            await self.client.post(f"/v1/nodes/{self.node}/ack",
                                   Acknowledgement(generation=generation, error=errors).to_json())
            self._acked = generation
        except (Unreachable, ApiError) as exc:
            log.warning("acknowledging registry generation %s failed (%s); will retry", generation, exc)
            self._dirty.set()
            await asyncio.sleep(0.5)
