"""A traffic component's loop, written once: long-poll the registry, apply, acknowledge.

Each node's mesh (its agent, for the node's sidecars) and each gateway is a
traffic component. Both do the same thing with the registry: wait for a new
generation, apply the snapshot to their proxies, and acknowledge the
generation now in effect together with a digest of the configuration that
runs. The control plane lets an instance change only after every component
that routes to it acknowledged, so this loop is where the drain protocol is
kept on the data-plane side. What differs is behind `Applier`: what is
applied, and how much of it is in effect.

`register` retries a component's registration with the control plane with
backoff; a component the control plane no longer knows (404) registers again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Protocol, TypeVar

from ballast.client import ApiError, Client, Unreachable
from ballast.core.backoff import Backoff
from ballast.wire.registry import Snapshot
from ballast.wire.registry_delta import absorb
from ballast.wire.reports import Acknowledgement

log = logging.getLogger("ballast.dataplane")
T = TypeVar("T")
POLL_SECONDS = 25.0          # a long-poll's bound; the control plane answers at once on a new generation
# With several replicas, a paused one accepts the long-poll and says nothing: a short bound lets the client move
# to another within seconds (ANSWER_SECONDS more), instead of missing changes for a whole long-poll.
REPLICATED_POLL_SECONDS = 3.0


def poll_seconds(client: Client) -> float:
    return REPLICATED_POLL_SECONDS if len(client.servers) > 1 else POLL_SECONDS
IDLE_SECONDS = 10.0          # re-apply this often anyway (a proxy may have been restarted meanwhile)
TROUBLED_SECONDS = 3.0       # ... and this often while something was refused (e.g. a deletion HAProxy postponed)
FATAL = (401, 403, 422)      # a registration refused for these will not succeed by trying again
REGISTER_BACKOFF = Backoff(0.2, 5.0)
POLL_BACKOFF = Backoff(1.0, 5.0)


@dataclass(frozen=True)
class Applied:
    """What an apply achieved: the newest generation fully in effect, the running configuration's digest,
    and what was refused (empty when everything was applied)."""

    generation: int
    digest: str
    error: str = ""


class Applier(Protocol):
    async def apply(self, snapshot: Snapshot) -> Applied:
        """Bring the proxies to `snapshot`; never raises (a refusal is reported in `Applied.error`)."""
        ...


def combined_digest(parts: Iterable[tuple[str, str]]) -> str:
    """One digest of several proxies' configurations, keyed by proxy (order does not matter)."""
    lines = "\n".join(f"{key} {value}" for key, value in sorted(parts))
    return hashlib.sha256(lines.encode()).hexdigest()


async def register(stop: asyncio.Event, attempt: Callable[[], Awaitable[T]], what: str) -> T | None:
    """Run `attempt` until it succeeds (or `stop`), backing off; refusals that cannot change are raised."""
    backoff = REGISTER_BACKOFF
    while not stop.is_set():
        try:
            return await attempt()
        except (Unreachable, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status in FATAL:
                raise
            log.warning("%s: registration failed (%s); retrying in %gs", what, exc, backoff.delay)
            await asyncio.sleep(backoff.delay)
            backoff = backoff.failed()
    return None


class TrafficComponent:
    """The registry, applied by `applier` and acknowledged at `ack_path`, for as long as `run` runs."""

    def __init__(self, client: Client, applier: Applier, *, ack_path: str, label: str,
                 reregister: Callable[[asyncio.Event], Awaitable[object]] | None = None) -> None:
        self.client = client
        self.applier = applier
        self.ack_path = ack_path
        self.label = label
        self.reregister = reregister
        self.snapshot = Snapshot.empty()
        self.received = asyncio.Event()      # a first snapshot has arrived
        self.last: Applied | None = None     # what the last apply achieved
        self._dirty = asyncio.Event()
        self._ask_whole = False              # the last answer could not be applied: ask for a whole snapshot
        self._received_at = 0.0

    def poke(self) -> None:
        """Apply (and acknowledge) again soon: a proxy started, stopped or came back."""
        self._dirty.set()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._poll(stop)), asyncio.create_task(self._apply_loop(stop))]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _unknown(self, stop: asyncio.Event, exc: Exception) -> bool:
        """The control plane does not know this component (any more): register it again."""
        if isinstance(exc, ApiError) and exc.status == 404 and self.reregister is not None:
            await self.reregister(stop)
            return True
        return False

    async def _poll(self, stop: asyncio.Event) -> None:
        backoff = POLL_BACKOFF
        while not stop.is_set():
            holding = self.received.is_set() and not self._ask_whole
            known = self.snapshot.generation if holding else None
            try:
                answer = await self.client.get("/v1/registry", known=known, timeout=poll_seconds(self.client))
            except (Unreachable, ApiError) as exc:
                if not await self._unknown(stop, exc):
                    log.warning("%s: registry unavailable (%s); retrying in %gs", self.label, exc, backoff.delay)
                    await asyncio.sleep(backoff.delay)
                    backoff = backoff.failed()
                continue
            backoff = backoff.reset()
            absorbed = absorb(self.snapshot if holding else None, answer)
            self._ask_whole = absorbed is None
            if absorbed is None:   # a delta from a generation not held (another replica's): ask for all of it
                log.info("%s: a registry delta from generation %s does not apply to %s; asking for all of it",
                         self.label, answer.get("base"), self.snapshot.generation)
                continue
            snapshot = absorbed
            if not self.received.is_set() or snapshot.generation != self.snapshot.generation:
                self.snapshot = snapshot
                self._received_at = time.time()   # when this generation arrived, not a later repeat of it
                self.received.set()
                self._dirty.set()

    async def _apply_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            troubled = self.last is not None and bool(self.last.error)
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=TROUBLED_SECONDS if troubled else IDLE_SECONDS)
            except TimeoutError:
                pass
            self._dirty.clear()
            if not self.received.is_set():
                continue
            snapshot, received_at = self.snapshot, self._received_at
            began_at, began = time.time(), time.monotonic()
            self.last = await self.applier.apply(snapshot)
            applied = time.monotonic()
            acked = await self._acknowledge(stop, self.last)
            # Wall-clock times (received, began) and durations, so that a benchmark can line them up with the
            # control plane's `registry-commit` and `registry-answer` lines (benchmarks/propagation.py).
            log.info("registry-apply %s generation=%s acked=%s ok=%s received=%.6f began=%.6f apply=%.6f ack=%.6f",
                     self.label, snapshot.generation, self.last.generation, "yes" if acked else "no", received_at,
                     began_at, applied - began, time.monotonic() - applied)

    async def _acknowledge(self, stop: asyncio.Event, applied: Applied) -> bool:
        """Whether the control plane recorded the acknowledgement (else it is sent again soon)."""
        ack = Acknowledgement(generation=applied.generation, applied_hash=applied.digest, error=applied.error[:4000])
        try:
            await self.client.post(self.ack_path, ack.to_json())
            return True
        except (Unreachable, ApiError) as exc:
            if not await self._unknown(stop, exc):
                log.warning("%s: acknowledging generation %s failed (%s); will retry", self.label,
                            applied.generation, exc)
                await asyncio.sleep(0.5)
            self._dirty.set()
            return False
