"""One instance's app process on this node: start it, health-check it, restart it with backoff, stop it.

A supervisor owns one asyncio task for one revision of the instance; the
instance's sidecar outlives it (an in-place upgrade replaces the supervisor,
not the sidecar). Its observable state (phase, readiness, restarts) is what
the agent reports; every change pokes the agent so the control plane hears
about it at once instead of at the next heartbeat. Before the app is stopped
for good or for a new revision, the sidecar's in-flight requests are waited
for (the control plane has already drained the endpoint).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import httpx

from ballast.agent.instance_user import InstanceUser, give_directory
from ballast.agent.plan import Health, HealthCount
from ballast.agent.sidecar import Sidecar
from ballast.agent.state import LocalInstance
from ballast.client import Unreachable
from ballast.core.backoff import Backoff
from ballast.processes import ProcessHandle, launch, renice
from ballast.wire.assignments import DEFAULT_FAILURE_THRESHOLD, Assignment, DrainSettings, HealthCheck, Template
from ballast.wire.reports import InstancePhase, InstanceReport

log = logging.getLogger("ballast.agent")
RESTART_BACKOFF = Backoff(1.0, 30.0, stable_seconds=60.0)


@dataclass(frozen=True)
class NodeIdentity:
    name: str
    ip: str
    cell: str
    zone: str
    data_dir: Path
    instance_user: InstanceUser   # who apps run as
    private_ip: str               # the loopback address apps and mesh listeners bind (core/loopback.py)
    instance_nice: int = 0   # CPU priority of app processes below the agent's and the sidecars'


class Supervisor:
    def __init__(self, assignment: Assignment, local: LocalInstance, node: NodeIdentity,
                 resolve_cwd: Callable[[Template], Awaitable[Path | None]], on_change: Callable[[], None],
                 http: httpx.AsyncClient, sidecar: Sidecar, adopted: ProcessHandle | None = None,
                 outdated: ProcessHandle | None = None) -> None:
        self.assignment = assignment
        self.local = local
        self.sidecar = sidecar
        self.node = node
        self.resolve_cwd = resolve_cwd
        self.on_change = on_change
        self.http = http
        self.proc = adopted
        self.phase: InstancePhase = "Running" if adopted else "Pending"
        self.ready = False
        self.message = "adopted after agent restart" if adopted else ""
        self.outdated = outdated  # a process of an older revision to stop before starting this one
        self.previous_stop: tuple[float, float] | None = None  # (began, ended) of the stop this start follows
        self._stopping = asyncio.Event()
        self._quiescing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.assignment.id

    @property
    def template(self) -> Template:
        assert self.assignment.template is not None, "a supervisor runs an instance whose revision is known"
        return self.assignment.template

    def report(self) -> InstanceReport:
        ready, message = self.ready, self.message
        if self.phase == "Running" and not self.sidecar.up:
            why = f": {self.sidecar.error}" if self.sidecar.error else ""
            ready, message = False, f"sidecar is down (restarts: {self.sidecar.restarts}); restarting it{why}"
        elif self.sidecar.error and self.phase == "Running":
            message = f"sidecar: {self.sidecar.error}"
        return InstanceReport(id=self.id, phase=self.phase, ready=ready,
                              pid=self.proc.pid if self.proc and self.proc.alive() else None,
                              port=self.local.port, mesh_port=self.local.mesh_port or None,
                              restarts=self.local.restarts, message=message[:2000],
                              revision=self.assignment.revision, drain=self.local.drain)

    @property
    def traffic(self) -> DrainSettings:
        return self.assignment.traffic

    async def drain(self) -> None:
        """Let the requests callers sent before they removed this endpoint finish; record how it went."""
        if not self.traffic.drain:
            return
        self._quiescing = True
        self._set("Stopping", False, "waiting for in-flight requests")
        self.local.drain = await self.sidecar.wait_idle(self.assignment.revision, self.traffic.drain_timeout_seconds)
        self.on_change()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"instance {self.id}")

    def _set(self, phase: InstancePhase, ready: bool, message: str = "") -> None:
        if self._quiescing and phase not in ("Stopping", "Stopped"):
            return  # a passing health check must not make a draining instance look ready again
        if (phase, ready, message) != (self.phase, self.ready, self.message):
            self.phase, self.ready, self.message = phase, ready, message
            self.on_change()

    @property
    def data_dir(self) -> Path:
        """The instance's own directory (per ordinal for ordered identities): it survives upgrades."""
        return self.node.data_dir / "instances" / self.id

    def env(self) -> dict[str, str]:
        # A clean environment, not the agent's: nothing of the agent's own (its token above all) reaches the app.
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
               "LANG": os.environ.get("LANG", "C.UTF-8"), "HOME": self.node.instance_user.home}
        env.update(self.template.env)
        env.update({
            # Loopback only: callers reach the app through its sidecar, never directly.
            "HOST": self.node.private_ip, "PORT": str(self.local.app_port),
            "BALLAST_ENDPOINT": f"{self.node.ip}:{self.local.port}", "BALLAST_MESH_URL": self.sidecar.mesh_url,
            "BALLAST_INSTANCE_ID": self.id, "BALLAST_APP": self.assignment.app,
            "BALLAST_GROUP": self.assignment.group,
            "BALLAST_CELL": self.node.cell, "BALLAST_ZONE": self.node.zone,
            "BALLAST_REVISION": str(self.assignment.revision), "BALLAST_NODE_IP": self.node.ip,
            "BALLAST_NODE": self.node.name, "BALLAST_DATA_DIR": str(self.data_dir),
        })
        return env

    async def _launch(self) -> ProcessHandle:
        user = self.node.instance_user
        give_directory(self.data_dir, user)
        cwd = await self.resolve_cwd(self.template) or self.data_dir
        argv = [*self.template.command, *self.template.args]
        handle = await launch(argv, cwd=cwd, env=self.env(), log_path=self.node.data_dir / "logs" / f"{self.id}.log",
                              user=(user.uid, user.gid) if user.switch else None)
        self.local.pid, self.local.started = handle.pid, handle.started
        self.local.revision = self.assignment.revision
        return handle

    async def _run(self) -> None:
        backoff = RESTART_BACKOFF
        loop = asyncio.get_running_loop()
        if self.outdated is not None:
            await self.drain()
            self._set("Stopping", False, "stopping the process of the previous revision")
            await self.outdated.stop(self.template.grace_period_seconds)
            self.outdated = None
            self._quiescing = False
        while not self._stopping.is_set():
            if self.proc is None or not self.proc.alive():
                try:
                    self.proc = await self._launch()
                except Unreachable as exc:  # a control plane briefly away is no failure of the instance
                    self._set("Pending", False, f"waiting to start: {exc}")
                    await self._pause(backoff.delay)
                    backoff = backoff.failed()
                    continue
                except Exception as exc:  # the command, cwd or artifact is unusable: report, back off, retry
                    self._set("Failed", False, f"cannot start: {exc}")
                    await self._pause(backoff.delay)
                    backoff = backoff.failed()
                    continue
                self._set("Starting", False, "")
                self.on_change()
            began = loop.time()
            health = asyncio.create_task(self._health_loop())
            exited = asyncio.create_task(self.proc.wait())
            stopping = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            health.cancel()
            stopping.cancel()
            if self._stopping.is_set():
                exited.cancel()
                return
            code = exited.result()
            backoff = backoff.after_run(loop.time() - began)
            self.local.restarts += 1
            self.proc = None
            self._set("BackOff", False, f"exited with code {code}; restarting in {backoff.delay:g}s")
            await self._pause(backoff.delay)
            backoff = backoff.failed()

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _health_loop(self) -> None:
        check = self.template.health_check
        period = check.period_seconds if check else 1.0
        if check and check.initial_delay_seconds:
            await asyncio.sleep(check.initial_delay_seconds)
        count = HealthCount(check.failure_threshold if check else DEFAULT_FAILURE_THRESHOLD,
                            passed_once=self.phase == "Running")
        while True:
            passed, why, answered = await self._probe_answered(check)
            first_pass = passed and not count.passed_once
            count, health = count.observe(passed, answered)
            if first_pass:
                self._log_upgrade_timing()
                if self.node.instance_nice and self.proc is not None:
                    # Started at full priority (a start is on a release's critical path); serving at a
                    # lower one, so the agent and the sidecars keep the CPU they need when the app is busy.
                    renice(self.proc.pid, self.node.instance_nice)
            if health is Health.READY:
                self._set("Running", True, "")
            elif health is Health.UNHEALTHY:
                self._set("Unhealthy", False, why)
            elif health is Health.STARTING:
                self._set("Starting", False, why)
            await asyncio.sleep(count.next_probe(period))

    def _log_upgrade_timing(self) -> None:
        """One line per revision change: the physical cost of the change, for operators and benchmarks."""
        if self.previous_stop is None:
            return
        began, stopped = self.previous_stop
        now = asyncio.get_running_loop().time()
        log.info("upgrade-timing instance=%s revision=%s stop=%.3f start_to_ready=%.3f total=%.3f", self.id,
                 self.assignment.revision, stopped - began, now - stopped, now - began)
        self.previous_stop = None

    async def _probe_answered(self, check: HealthCheck | None) -> tuple[bool, str, bool]:
        """(passed, why, the app answered at all) — an answer that fails counts even while starting."""
        if check is None:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.node.private_ip, self.local.app_port),
                                                   1.0)
                writer.close()
                return True, "", True
            except (OSError, TimeoutError) as exc:
                return False, f"port {self.local.app_port} not accepting connections: {exc}", False
        url = f"http://{self.node.private_ip}:{self.local.app_port}{check.path}"
        try:
            response = await self.http.get(url, timeout=check.timeout_seconds)
        except httpx.HTTPError as exc:
            return False, f"health check {url} failed: {type(exc).__name__}", False
        if 200 <= response.status_code < 400:
            return True, "", True
        return False, f"health check {url} answered {response.status_code}", True

    async def stop(self, *, drain: bool = True) -> str:
        """Stop the process (retirement, a new revision, platform shutdown); first its in-flight requests."""
        if drain and self.proc is not None and self.proc.alive():
            await self.drain()
        self._stopping.set()
        self._set("Stopping", False, "")
        outcome = "not running"
        if self.proc is not None:
            outcome = await self.proc.stop(self.template.grace_period_seconds)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self.local.pid = self.local.started = None
        self._set("Stopped", False, outcome)
        return outcome

    async def detach(self) -> None:
        """Stop supervising but leave the process running (agent restart: it will be adopted)."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

