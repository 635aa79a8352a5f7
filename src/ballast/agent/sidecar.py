"""The sidecar of one instance: an HAProxy beside the app, supervised by the agent.

Inbound, it is the instance's registered endpoint (node IP:port) and passes
requests to the app on its private port (loopback), counting what is in flight.
Outbound, it is the app's way to other services (`BALLAST_MESH_URL`, on
loopback, service named by the Host header), balancing over their ready
endpoints and preferring the own cell. Only the endpoint faces the network. It lives as long as the instance: an in-place
upgrade restarts the app behind it, never the sidecar.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ballast.core.backoff import Backoff
from ballast.core.request_metrics import Counts
from ballast.dataplane.collector import read_sidecar
from ballast.dataplane.haproxy import ConfigRejected, HAProxy, ProxyFailed, ProxyFiles
from ballast.dataplane.haproxy_config import Address, Backend, ProxyTuning, SidecarConfig, render_sidecar
from ballast.wire.registry import Snapshot
from ballast.dataplane.request_stats import StatsHooks
from ballast.dataplane.runtime import RuntimeApiError
from ballast.dataplane.rule_config import render_weights_map, weight_entries
from ballast.dataplane.tables import Inflight, inbound_inflight, sidecar_tables
from ballast.wire.reports import DrainReport

log = logging.getLogger("ballast.agent")
RESTART_BACKOFF = Backoff(1.0, 30.0, stable_seconds=60.0)
IDLE_POLL_SECONDS = 0.05
LIVENESS_SECONDS = 2.0


@dataclass(frozen=True)
class SidecarPorts:
    endpoint: int     # what callers reach: the registered endpoint
    app: int          # where the app listens (PORT)
    mesh: int         # the outbound listener (BALLAST_MESH_URL)


class Sidecar:
    def __init__(self, instance_id: str, ip: str, private_ip: str, cell: str, ports: SidecarPorts, binary: str,
                 state_dir: Path, on_change: Callable[[], None], stats: StatsHooks | None = None,
                 app: str | None = None, group: str = "", tuning: ProxyTuning = ProxyTuning()) -> None:
        self.id = instance_id
        self.app = app           # whose calls its outbound side makes: the caller TrafficRules scope
        self.group = group       # the isolation group it belongs to: its calls stay in that unit
        self.stats = stats
        self.tuning = tuning     # process knobs; the default is what the agent runs (benchmarks vary it)
        self.ip = ip
        self.private_ip = private_ip
        self.cell = cell
        self.ports = ports
        self.proxy = HAProxy(binary, ProxyFiles(state_dir), label=f"sidecar of {instance_id}")
        self.on_change = on_change
        self.applied_generation = 0
        self.applied_digest = ""        # sha256 of the configuration the proxy runs, once fully applied
        self.weights: dict[str, int] = {}   # the weights map the rendered configuration reads
        self.error = ""
        self.restarts = 0
        self.restarted_at: list[float] = []   # monotonic times of the last minute's restarts
        self.up = False
        self._lock = asyncio.Lock()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def recent_restarts(self) -> int:
        return sum(1 for t in self.restarted_at if time.monotonic() - t < 60.0)

    @property
    def mesh_url(self) -> str:
        return f"http://{self.private_ip}:{self.ports.mesh}"

    def render(self, snapshot: Snapshot) -> tuple[str, tuple[Backend, ...]]:
        tables = sidecar_tables(snapshot, self.cell, self.app, self.group)
        cfg = SidecarConfig(instance=self.id, admin_socket=str(self.proxy.files.admin_socket),
                            inbound=Address(self.ip, self.ports.endpoint), app=Address(self.private_ip, self.ports.app),
                            outbound=Address(self.private_ip, self.ports.mesh), backends=tables.backends,
                            stats=self.stats, rules=tables.rules, marking=tables.marking,
                            weights_map=str(self.weights_map), units=tables.units, tuning=self.tuning)
        self.weights = weight_entries(tables.rules)
        return render_sidecar(cfg), tables.backends

    @property
    def weights_map(self) -> Path:
        return self.proxy.files.state_dir / "weights.map"

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self.on_change()

    async def apply(self, snapshot: Snapshot) -> None:
        """Bring the proxy to `snapshot` (starting it if it is not running); never raises."""
        async with self._lock:
            if self._closing:
                return
            text, backends = self.render(snapshot)
            try:
                refused = await self.proxy.converge(text, backends, {str(self.weights_map): self.weights})
            except (ConfigRejected, ProxyFailed, RuntimeApiError) as exc:
                self.error = exc.message
                log.warning("%s", exc.message)
            else:
                # A deletion HAProxy postpones (connections still open) leaves a server in maintenance:
                # it carries no traffic, so the snapshot is in effect. Anything else refused is not.
                blocking = [r for r in refused if not r.startswith("del server")]
                self.error = "; ".join(refused)
                if not blocking:
                    self.applied_generation = max(self.applied_generation, snapshot.generation)
                    self.applied_digest = hashlib.sha256((text + render_weights_map(self.weights)).encode()).hexdigest()
            self._set_up(self.proxy.alive())

    def adopt(self, pid: int, started: int) -> bool:
        adopted = self.proxy.adopt(pid, started)
        self._set_up(adopted)
        return adopted

    def supervise(self, latest: Callable[[], Snapshot]) -> None:
        """Keep the proxy running for the instance's life: restart it, with backoff, when it dies."""
        self._task = asyncio.create_task(self._supervise(latest), name=f"sidecar {self.id}")

    async def _supervise(self, latest: Callable[[], Snapshot]) -> None:
        backoff = RESTART_BACKOFF
        while not self._closing:
            if not self.proxy.alive():
                await self.apply(latest())
                if not self.proxy.alive():
                    await asyncio.sleep(backoff.delay)
                    backoff = backoff.failed()
                    continue
            handle = self.proxy.handle
            assert handle is not None
            began = time.monotonic()
            await self._until_unserving(handle)
            if self._closing:
                return
            self.restarts += 1
            self.restarted_at = [t for t in self.restarted_at if time.monotonic() - t < 60.0] + [time.monotonic()]
            self._set_up(False)  # the instance is not ready until its sidecar is back
            backoff = backoff.after_run(time.monotonic() - began)
            log.warning("sidecar of %s exited; restarting in %gs", self.id, backoff.delay)
            await asyncio.sleep(backoff.delay)
            backoff = backoff.failed()

    async def _until_unserving(self, handle: Any) -> None:
        """Return when the proxy exited, or its master lives on without a worker that answers (then end it)."""
        silent = 0
        while not self._closing:
            try:
                await asyncio.wait_for(handle.wait(), timeout=LIVENESS_SECONDS)
                return
            except TimeoutError:
                pass
            silent = 0 if await self.proxy.answers() else silent + 1
            if silent >= 3:
                log.warning("sidecar of %s: no worker answers on its runtime API; restarting it", self.id)
                await handle.stop(1.0)
                return

    async def inflight(self) -> Inflight | None:
        if not self.proxy.alive():
            return None
        try:
            return inbound_inflight(await self.proxy.stat_rows())
        except RuntimeApiError:
            return None

    async def request_counts(self) -> tuple[str, dict[str, Counts]]:
        """What the instance's endpoint has served, as its proxy's running worker counted it (with its epoch)."""
        if not self.proxy.alive():
            raise RuntimeApiError(f"sidecar of {self.id} is not running")
        return await read_sidecar(self.proxy.files.admin_socket)

    async def wait_idle(self, revision: int, timeout: float) -> DrainReport:
        """Wait until no request is in flight and none arrived between two looks (bounded by `timeout`).

        Callers have already removed the endpoint (the control plane granted the change only after every
        component acknowledged that); this lets what they sent before finish.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        last_total: int | None = None
        busy = 0
        while True:
            now = loop.time()
            seen = await self.inflight()
            if seen is None:  # no proxy: nothing can be in flight through it
                return _drained(revision, now - began, 0, timed_out=False)
            busy = seen.busy
            if busy == 0 and seen.total == last_total:
                return _drained(revision, now - began, 0, timed_out=False)
            if now - began >= timeout:
                log.warning("instance %s: drain timeout of %gs reached with %d request(s) in flight",
                            self.id, timeout, busy)
                return _drained(revision, now - began, busy, timed_out=True)
            last_total = seen.total
            await asyncio.sleep(IDLE_POLL_SECONDS)

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        async with self._lock:
            await self.proxy.stop(grace=5.0)
        self._set_up(False)

    async def detach(self) -> None:
        """Stop supervising; leave the proxy running for the next agent to adopt."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _drained(revision: int, waited: float, inflight: int, *, timed_out: bool) -> DrainReport:
    return DrainReport(revision=revision, waited_seconds=round(waited, 3), inflight_at_stop=inflight,
                       timed_out=timed_out, at=time.time())
