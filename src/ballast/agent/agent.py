"""`ballast agent`: one per host — registers the node, runs its instances and their sidecars, reports.

The agent is level-triggered: each assignments answer from the control plane
is the whole desired set for this node, and the agent converges to it
(start what is missing, stop what is retired or unknown). What it is told is
what the drain protocol has granted: by the time an instance must stop or
change, every caller has stopped sending to it. The agent also is the node's
mesh component (`mesh.py`): it applies the registry to its sidecars and
acknowledges it. It keeps a small state file so that after a restart it
adopts running instances and sidecars instead of restarting them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ballast import __version__
from ballast.agent.artifacts import ArtifactCache
from ballast.agent import fence
from ballast.agent.fence import FenceMode
from ballast.agent.instance_user import InstanceUser, open_the_way
from ballast.agent.liveness import Liveness
from ballast.agent.artifacts import NODE_LIMITS, working_dir
from ballast.agent.mesh import NodeMesh
from ballast.agent.plan import Begin, Replace, ReportStopped, Retire, plan
from ballast.agent.sidecar import Sidecar, SidecarPorts
from ballast.agent.state import LocalInstance, StateFile
from ballast.agent.supervisor import NodeIdentity, Supervisor
from ballast.client import ANSWER_SECONDS, ApiError, Client, Unreachable
from ballast.core.loopback import private_address
from ballast.core.archive import ArchiveLimits
from ballast.core.request_metrics import Series
from ballast.dataplane.collector import RequestStats
from ballast.dataplane.component import POLL_BACKOFF, TrafficComponent, poll_seconds, register
from ballast.dataplane.haproxy import install_stats_script
from ballast.dataplane.telemetry import TelemetryServer, build_app, request_families
from ballast.owner_only import make_private
from ballast.processes import adopt
from ballast.wire.assignments import Assignment, Assignments, Template
from ballast.wire.reports import FailingSidecar, InstanceReport, NodeConditions, NodeRegistration, StatusReport

log = logging.getLogger("ballast.agent")
FIRST_SNAPSHOT_SECONDS = 10.0
REPORT_SECONDS = 2.0   # a status report (the heartbeat) that takes longer is given up; the next goes elsewhere


@dataclass(frozen=True)
class AgentSettings:
    server: str
    token: str
    name: str
    ip: str
    cell: str
    data_dir: Path
    cpu_millis: int
    memory_bytes: int
    haproxy: str                     # the HAProxy binary sidecars run
    instance_user: InstanceUser      # who apps run as (instance_user.py)
    port_range: tuple[int, int] = (20000, 29999)
    heartbeat_seconds: float = 1.0     # the control plane judges a node NotReady after nodeGraceSeconds (4 s) of silence
    stop_instances_on_exit: bool = False
    instance_nice: int = 0            # > 0: apps yield the CPU to the agent and the sidecars under load
    metrics_port: int = 9464          # /metrics and /v1/request-metrics on the node's IP; 0: not served
    metrics_interval: float = 1.0     # how often the sidecars' request statistics are read
    artifact_limits: ArchiveLimits = NODE_LIMITS     # what an artifact may unpack to on this node
    private_fence: FenceMode = FenceMode.AUTO        # nodes sharing a machine: fence each one's private address


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.private_ip = private_address(settings.ip)
        # What apps must reach (their artifacts and data dirs) lies below these: enterable, never listable.
        for directory in (settings.data_dir, settings.data_dir / "instances", settings.data_dir / "artifacts"):
            open_the_way(directory, settings.instance_user)
        # The rest is the agent's alone (an earlier version left it to the umask): apps' logs, sidecars, state.
        make_private(settings.data_dir / "logs", settings.data_dir / "sidecars", settings.data_dir / "state.json")
        self.client = Client(settings.server, settings.token, timeout=40.0, answer_seconds=ANSWER_SECONDS)
        self.http = httpx.AsyncClient()
        self.state = StateFile(settings.data_dir / "state.json")
        self.local: dict[str, LocalInstance] = self.state.load()
        self.supervisors: dict[str, Supervisor] = {}
        self.stopping: dict[str, Supervisor] = {}  # still reported (Stopping, not ready) until their process is gone
        self.sidecars: dict[str, Sidecar] = {}
        self.stopped_ids: set[str] = set()
        self.artifacts = ArtifactCache(self.client, settings.data_dir / "artifacts", settings.artifact_limits)
        self.mesh = TrafficComponent(self.client, NodeMesh(lambda: list(self.sidecars.values())),
                                     ack_path=f"/v1/nodes/{settings.name}/ack", label=f"node {settings.name}",
                                     reregister=self._register)
        self.stats_hooks = install_stats_script(settings.data_dir, table_size=1000)
        self.request_stats = RequestStats(settings.name, interval=settings.metrics_interval)
        self.telemetry: TelemetryServer | None = None
        if settings.metrics_port:
            app = build_app(self.request_stats, lambda: request_families("ballast", "node", settings.name,
                                                                                self.request_stats))
            self.telemetry = TelemetryServer(app, settings.ip, settings.metrics_port)
        self.liveness = Liveness(settings.ip)
        self._clock_estimate: tuple[float, float] | None = None   # (offset, uncertainty) from the last report
        self._report_sequence = 0   # of the last status report sent
        self.node: NodeIdentity | None = None
        self._changed = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle -------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        user = self.settings.instance_user
        if user.switch:
            log.info("apps run as %s (uid %d)", user.name, user.uid)
        else:
            log.warning("NOT FOR PRODUCTION: the agent is not root and runs apps as its own user %s; they can read "
                        "everything the agent can, its token included", user.name)
        # Before any instance starts: its app port must never be reachable around its sidecar.
        await fence.install(self.private_ip, self.settings.private_fence)
        if self.telemetry is not None:
            await self.telemetry.start()
        self.liveness.start()
        ticking = asyncio.create_task(self.liveness.tick(stop))
        await self._register(stop)
        if stop.is_set():
            return await self._shutdown()
        tasks = [ticking, asyncio.create_task(self.mesh.run(stop)), asyncio.create_task(self.request_stats.run(stop))]
        # Sidecars start from the registry: wait (bounded) for a first snapshot before starting instances.
        try:
            await asyncio.wait_for(self.mesh.received.wait(), FIRST_SNAPSHOT_SECONDS)
        except TimeoutError:
            log.warning("no registry snapshot within %gs; sidecars start empty and fill in later",
                        FIRST_SNAPSHOT_SECONDS)
        tasks += [asyncio.create_task(self._assignment_loop(stop)), asyncio.create_task(self._report_loop(stop))]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._shutdown()

    async def _register(self, stop: asyncio.Event) -> None:
        s = self.settings
        body = NodeRegistration(cell=s.cell, ip=s.ip, cpu_millis=s.cpu_millis, memory_bytes=s.memory_bytes,
                                agent_version=__version__,
                                metrics_address=self.telemetry.address if self.telemetry is not None else None).to_json()

        async def attempt() -> None:
            # The answer names the cell's zone: a node's credential reads nothing but what it needs.
            registered = await self.client.put(f"/v1/nodes/{s.name}", body)
            self.node = NodeIdentity(s.name, s.ip, s.cell, registered["zone"], s.data_dir, s.instance_user,
                                     self.private_ip, s.instance_nice)
            log.info("node %s registered in cell %s", s.name, s.cell)

        await register(stop, attempt, f"node {s.name}")

    async def _shutdown(self) -> None:
        sups = list(self.supervisors.values())
        if self.settings.stop_instances_on_exit:
            await asyncio.gather(*(s.stop(drain=False) for s in sups), return_exceptions=True)
            await asyncio.gather(*(c.stop() for c in self.sidecars.values()), return_exceptions=True)
            for s in sups:
                self.local.pop(s.id, None)
            try:
                await asyncio.wait_for(self._report(), 3)
            except Exception:
                pass
        else:
            await asyncio.gather(*(s.detach() for s in sups), return_exceptions=True)
            await asyncio.gather(*(c.detach() for c in self.sidecars.values()), return_exceptions=True)
        self.state.save(self.local)
        self.liveness.close()
        if self.telemetry is not None:
            await self.telemetry.stop()
        await self.client.close()
        await self.http.aclose()

    # --- desired state ---------------------------------------------------
    async def _assignment_loop(self, stop: asyncio.Event) -> None:
        known: str | None = None
        backoff = POLL_BACKOFF
        while not stop.is_set():
            try:
                answer = await self.client.get(f"/v1/nodes/{self.settings.name}/assignments", known=known,
                                               timeout=poll_seconds(self.client))
            except (Unreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status == 404:
                    await self._register(stop)
                else:
                    log.warning("assignments unavailable (%s); retrying in %gs", exc, backoff.delay)
                    await asyncio.sleep(backoff.delay)
                    backoff = backoff.failed()
                continue
            backoff = backoff.reset()
            assigned = Assignments.from_json(answer)
            known = assigned.fingerprint
            self.converge(assigned.instances)

    def converge(self, assignments: tuple[Assignment, ...]) -> None:
        supervised = {i: sup.assignment.revision for i, sup in self.supervisors.items()}
        for action in plan(assignments, supervised, set(self.stopping), set(self.local)):
            if isinstance(action, Begin):
                self._begin(action.assignment)
            elif isinstance(action, Replace):
                self._spawn(self._replace_revision(self.supervisors[action.assignment.id], action.assignment))
            elif isinstance(action, Retire):
                self._spawn(self._retire(self.supervisors[action.instance]))
            elif isinstance(action, ReportStopped):
                self.stopped_ids.add(action.instance)
                self._changed.set()
            else:
                self._stop_orphan(self.local[action.instance])

    def _begin(self, a: Assignment) -> None:
        assert self.node is not None
        local = self.local.get(a.id)
        adopted = outdated = None
        if local is not None and local.pid is not None and local.started is not None:
            adopted = adopt(local.pid, local.started)
            if adopted is None:
                local.restarts += 1  # it died while no agent watched it
            elif local.revision != a.revision:
                # The revision changed while no agent watched: this process runs the old one.
                outdated, adopted = adopted, None
        if local is None:
            local = LocalInstance(id=a.id, port=a.port or self._free_port(self.settings.ip))
            self.local[a.id] = local
        if not local.app_port:
            local.app_port = self._free_port(self.private_ip)
        if not local.mesh_port:
            local.mesh_port = self._free_port(self.private_ip)
        sidecar = self._sidecar_for(local, a.app, a.group)
        sup = Supervisor(a, local, self.node, self._cwd_for, self._poke, self.http, sidecar, adopted=adopted,
                         outdated=outdated)
        self.supervisors[a.id] = sup
        sup.start()
        self.state.save(self.local)

    def _sidecar_for(self, local: LocalInstance, app: str, group: str = "") -> Sidecar:
        """The instance's sidecar: the running one, the one a previous agent left (adopted), or a new one."""
        sidecar = self.sidecars.get(local.id)
        if sidecar is not None:
            return sidecar
        assert self.node is not None
        sidecar = Sidecar(local.id, self.node.ip, self.private_ip, self.node.cell,
                          SidecarPorts(endpoint=local.port, app=local.app_port, mesh=local.mesh_port),
                          self.settings.haproxy, self.settings.data_dir / "sidecars" / local.id, self._sidecar_changed,
                          stats=self.stats_hooks, app=app, group=group)
        if local.sidecar_pid is not None and local.sidecar_started is not None:
            if sidecar.adopt(local.sidecar_pid, local.sidecar_started):
                self.mesh.poke()  # it may have missed registry changes while no agent watched
        self.sidecars[local.id] = sidecar
        sidecar.supervise(lambda: self.mesh.snapshot)
        self.request_stats.add(local.id, sidecar.request_counts, functools.partial(self._series_of, local.id))
        return sidecar

    def _series_of(self, instance_id: str, _key: str = "") -> Series | None:
        """The series an instance's requests count for now: the revision its app process runs (or ran, while
        it stops)."""
        sup = self.supervisors.get(instance_id) or self.stopping.get(instance_id)
        if sup is None or self.node is None:
            return None
        return Series(app=sup.assignment.app, instance=instance_id, revision=sup.assignment.revision,
                      cell=self.node.cell, source=self.node.name)

    def _sidecar_changed(self) -> None:
        for sidecar in self.sidecars.values():
            local = self.local.get(sidecar.id)
            if local is not None:
                handle = sidecar.proxy.handle
                local.sidecar_pid = handle.pid if handle is not None and sidecar.up else None
                local.sidecar_started = handle.started if handle is not None and sidecar.up else None
        self.state.save(self.local)
        self.mesh.poke()
        self._changed.set()

    async def _retire(self, sup: Supervisor) -> None:
        self.supervisors.pop(sup.id, None)
        self.stopping[sup.id] = sup
        try:
            await sup.stop()
            await self.request_stats.poll(sup.id)  # its last requests count for the revision it ran
            self.request_stats.remove(sup.id)
            sidecar = self.sidecars.pop(sup.id, None)
            if sidecar is not None:
                await sidecar.stop()
        finally:
            self.stopping.pop(sup.id, None)
        self.local.pop(sup.id, None)
        self.stopped_ids.add(sup.id)
        self.state.save(self.local)
        self._changed.set()

    async def _replace_revision(self, sup: Supervisor, a: Assignment) -> None:
        """Same instance, new revision: stop the app, then start the new template (same node, port, sidecar)."""
        self.supervisors.pop(sup.id, None)
        self.stopping[sup.id] = sup
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            await sup.stop()
            # Drained and stopped: what the sidecar counted so far was the old revision's; later requests are
            # the new one's.
            await self.request_stats.poll(sup.id)
        finally:
            self.stopping.pop(sup.id, None)
        self._begin(a)
        self.supervisors[a.id].previous_stop = (began, loop.time())

    def _stop_orphan(self, local: LocalInstance) -> None:
        for pid, started in ((local.pid, local.started), (local.sidecar_pid, local.sidecar_started)):
            if pid is not None and started is not None:
                handle = adopt(pid, started)
                if handle is not None:
                    self._spawn(handle.stop(10.0))
        self.local.pop(local.id, None)
        self.state.save(self.local)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cwd_for(self, template: Template) -> Path | None:
        """Where the app starts: its unpacked artifact, its workingDir, or (None) its own data dir."""
        if template.artifact:
            return working_dir(await self.artifacts.path_for(template.artifact), template.working_dir)
        if template.working_dir:   # a template stored before workingDir needed an artifact
            return Path(template.working_dir)
        return None

    def _free_port(self, address: str) -> int:
        """A port of the range that no instance of this node uses and that is free on `address` now."""
        used = {p for i in self.local.values() for p in (i.port, i.app_port, i.mesh_port)}
        low, high = self.settings.port_range
        for port in range(low, high + 1):
            if port in used:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind((address, port))
                except OSError:
                    continue
            return port
        raise RuntimeError(f"no free port in {low}-{high} on {address}")

    # --- reporting -------------------------------------------------------
    def _poke(self) -> None:
        self._changed.set()
        for sup in self.supervisors.values():  # keep pid/port on disk current for adoption
            if sup.local.pid is not None:
                self.local[sup.id] = sup.local
        self.state.save(self.local)

    async def _report(self) -> None:
        reports = [s.report() for s in self.supervisors.values()]
        reports += [s.report() for i, s in self.stopping.items() if i not in self.supervisors]
        reports += [InstanceReport(id=i, phase="Stopped", ready=False, restarts=0, message="stopped")
                    for i in self.stopped_ids if i not in self.supervisors]
        # Bounded: a replica that hangs (paused, partitioned) must not hold heartbeats back past nodeGraceSeconds;
        # the next report, a second later, goes to the next replica.
        sent = time.time()
        # Newer than any report before it, this agent's or a previous one's: a stale one is refused (registry.py).
        self._report_sequence = max(self._report_sequence + 1, time.time_ns() // 1000)
        report = StatusReport(instances=reports, conditions=self._conditions(), sequence=self._report_sequence)
        answer = await self.client.request("POST", f"/v1/nodes/{self.settings.name}/status", json=report.to_json(),
                                           timeout=REPORT_SECONDS)
        received = time.time()
        server_time = answer.get("serverTime") if isinstance(answer, dict) else None
        if isinstance(server_time, (int, float)):   # told in the next report
            self._clock_estimate = ((sent + received) / 2 - server_time, (received - sent) / 2)
        self.stopped_ids -= {r.id for r in reports if r.phase == "Stopped"}

    def _conditions(self) -> NodeConditions:
        """The node's own health, for the control plane's judgement (core/node_lifecycle.py)."""
        disk = os.statvfs(self.settings.data_dir)
        failing = [FailingSidecar(instance=i, restarts=n) for i, c in sorted(self.sidecars.items())
                   if (n := c.recent_restarts()) > 0]
        return NodeConditions(clock=time.time(), data_dir_free_bytes=disk.f_bavail * disk.f_frsize,
                              data_dir_total_bytes=disk.f_blocks * disk.f_frsize, failing_sidecars=failing,
                              clock_offset_seconds=self._clock_estimate[0] if self._clock_estimate else None,
                              clock_uncertainty_seconds=self._clock_estimate[1] if self._clock_estimate else None,
                              liveness_port=self.liveness.port)

    async def _report_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._changed.clear()
            try:
                await self._report()
            except (Unreachable, ApiError) as exc:
                log.warning("status report failed (%s)", exc)
                if isinstance(exc, ApiError) and exc.status == 404:
                    await self._register(stop)
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=self.settings.heartbeat_seconds)
                await asyncio.sleep(0.05)  # coalesce a burst of changes into one report
            except TimeoutError:
                pass
