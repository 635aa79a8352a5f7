"""`ballast gateway`: routes by host and path prefix to exposed services, a traffic component.

It registers itself and runs the same registry loop as a node's mesh
(`dataplane/component.py`); what it applies is each snapshot to its HAProxy
(runtime API for endpoints, seamless reload for route changes). Its HAProxy
runs in its own process group and is adopted after a gateway restart (a state file
keeps its pid), so a restart of this process costs no request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ballast.client import ANSWER_SECONDS, Client
from ballast.core.request_metrics import Counts, Series
from ballast.dataplane.collector import RequestStats, read_gateway
from ballast.dataplane.component import Applied, TrafficComponent, register
from ballast.dataplane.haproxy import ConfigRejected, HAProxy, ProxyFailed, ProxyFiles, install_stats_script
from ballast.dataplane.haproxy_config import Address, GatewayConfig, ProxyTuning, render_gateway
from ballast.wire.registry import Snapshot
from ballast.wire.reports import GatewayRegistration
from ballast.dataplane.request_stats import SERVICE_PREFIX, SUBSET_SEPARATOR
from ballast.dataplane.runtime import RuntimeApiError
from ballast.dataplane.rule_config import render_weights_map, weight_entries
from ballast.dataplane.tables import gateway_rule_tables
from ballast.dataplane.telemetry import TelemetryServer, build_app, request_families
from ballast.gateway.tasks import ExecutorSettings, TaskExecutor

log = logging.getLogger("ballast.gateway")
PROBE = "gateway"


@dataclass(frozen=True)
class GatewaySettings:
    server: str
    token: str
    name: str
    listen: Address
    data_dir: Path
    haproxy: str
    threads: int = 2
    stop_proxy_on_exit: bool = False
    metrics_listen: Address | None = None   # /metrics and /v1/request-metrics; None: not served
    metrics_interval: float = 1.0
    trusted_color_networks: tuple[str, ...] = ()   # clients whose own baggage (color) is kept; others' is removed
    tuning: ProxyTuning = ProxyTuning()             # process knobs; the default is what `ballast gateway` runs


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.client = Client(settings.server, settings.token, timeout=40.0, answer_seconds=ANSWER_SECONDS)
        self.proxy = HAProxy(settings.haproxy, ProxyFiles(settings.data_dir / "haproxy"),
                             label=f"gateway {settings.name}")
        self.weights: dict[str, int] = {}   # the weights map the rendered configuration reads
        self.applied = 0
        self.applied_digest = ""
        self.error = ""
        self.executor = TaskExecutor(self.client, ExecutorSettings(settings.name, str(self.task_socket)))
        self.component = TrafficComponent(self.client, self, ack_path=f"/v1/gateways/{settings.name}/ack",
                                          label=f"gateway {settings.name}", reregister=self._register)
        self._state = settings.data_dir / "state.json"
        self.stats_hooks = install_stats_script(settings.data_dir, table_size=500_000)
        self.request_stats = RequestStats(f"gateway/{settings.name}", interval=settings.metrics_interval)
        self.request_stats.add(PROBE, self._request_counts, self._series_of)
        self._endpoints: dict[tuple[str, str], tuple[int, str]] = {}   # (service, instance) -> (revision, cell)
        self.telemetry: TelemetryServer | None = None
        if settings.metrics_listen is not None:
            app = build_app(self.request_stats, lambda: request_families("ballast_gateway", "gateway", settings.name,
                                                                         self.request_stats))
            self.telemetry = TelemetryServer(app, settings.metrics_listen.ip, settings.metrics_listen.port)

    @property
    def weights_map(self) -> Path:
        return self.proxy.files.state_dir / "weights.map"

    @property
    def task_socket(self) -> Path:
        """The HAProxy frontend the task executor calls through (mode 600: the gateway's user only)."""
        return self.proxy.files.sockets / "tasks.sock"

    def render(self, snapshot: Snapshot) -> tuple[str, GatewayConfig]:
        routes, tables = gateway_rule_tables(snapshot, every_mesh_service=True)
        cfg = GatewayConfig(name=self.settings.name, admin_socket=str(self.proxy.files.admin_socket),
                            listen=self.settings.listen, routes=routes, backends=tables.backends,
                            threads=self.settings.threads, stats=self.stats_hooks, rules=tables.rules,
                            marking=tables.marking, trusted_color_networks=self.settings.trusted_color_networks,
                            weights_map=str(self.weights_map), units=tables.units,
                            task_socket=str(self.task_socket), tuning=self.settings.tuning)
        self.weights = weight_entries(tables.rules)
        return render_gateway(cfg), cfg

    async def run(self, stop: asyncio.Event) -> None:
        self._adopt()
        if self.telemetry is not None:
            await self.telemetry.start()
        try:
            await self._register(stop)
            tasks = [asyncio.create_task(self.component.run(stop)), asyncio.create_task(self._watch(stop)),
                     asyncio.create_task(self.request_stats.run(stop)), asyncio.create_task(self._execute_tasks(stop))]
            await stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if self.settings.stop_proxy_on_exit:
                await self.proxy.stop(grace=10.0)
            self._save()
            if self.telemetry is not None:
                await self.telemetry.stop()
            await self.client.close()

    def _adopt(self) -> None:
        try:
            saved = json.loads(self._state.read_text())
        except (FileNotFoundError, ValueError):
            return
        if saved.get("pid") and saved.get("started") and self.proxy.adopt(int(saved["pid"]), int(saved["started"])):
            log.info("adopted the running HAProxy (pid %s)", saved["pid"])

    def _save(self) -> None:
        handle = self.proxy.handle
        alive = handle is not None and handle.alive() and not self.settings.stop_proxy_on_exit
        self._state.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": handle.pid if alive and handle else None,
                                   "started": handle.started if alive and handle else None}))
        os.replace(tmp, self._state)

    async def _register(self, stop: asyncio.Event) -> None:
        body = GatewayRegistration(address=str(self.settings.listen),
                                   metrics_address=self.telemetry.address if self.telemetry is not None else None)

        async def attempt() -> None:
            await self.client.put(f"/v1/gateways/{self.settings.name}", body.to_json())
            log.info("gateway %s registered at %s", self.settings.name, self.settings.listen)

        await register(stop, attempt, f"gateway {self.settings.name}")

    async def apply(self, snapshot: Snapshot) -> Applied:
        endpoints = {(s.name, e.id): (e.revision, e.cell) for s in snapshot.services for e in s.endpoints}
        if endpoints != self._endpoints:
            # An instance's revision changes only while it is drained; what it served so far was the old one's.
            await self.request_stats.poll(PROBE)
            self._endpoints = endpoints
        text, cfg = self.render(snapshot)
        try:
            refused = await self.proxy.converge(text, cfg.backends, {str(self.weights_map): self.weights})
        except (ConfigRejected, ProxyFailed, RuntimeApiError) as exc:
            self.error = exc.message
            log.error("%s", exc.message)
        else:
            self.error = "; ".join(refused)
            if not [r for r in refused if not r.startswith("del server")]:
                self.applied = max(self.applied, snapshot.generation)
                self.applied_digest = hashlib.sha256((text + render_weights_map(self.weights)).encode()).hexdigest()
        self._save()
        return Applied(self.applied, self.applied_digest, self.error)

    async def _request_counts(self) -> tuple[str, dict[str, Counts]]:
        if not self.proxy.alive():
            raise RuntimeApiError(f"gateway {self.settings.name}: HAProxy is not running")
        return await read_gateway(self.proxy.files.admin_socket)

    def _series_of(self, key: str) -> Series | None:
        backend, _, instance = key.partition(" ")
        service = backend.removeprefix(SERVICE_PREFIX).partition(SUBSET_SEPARATOR)[0]   # a subset is its service's
        known = self._endpoints.get((service, instance))
        if known is None:
            return None
        revision, cell = known
        return Series(app=service, instance=instance, revision=revision, cell=cell,
                      source=f"gateway/{self.settings.name}")

    async def _execute_tasks(self, stop: asyncio.Event) -> None:
        """Scheduled tasks' shards, once this gateway's HAProxy runs the task frontend (the first apply)."""
        await self.component.received.wait()
        await self.executor.run(stop)

    async def _watch(self, stop: asyncio.Event) -> None:
        """A HAProxy that died is started again by the next apply: ask for one at once."""
        while not stop.is_set():
            await asyncio.sleep(1.0)
            if self.component.received.is_set() and not self.proxy.alive():
                log.warning("HAProxy of gateway %s is not running; starting it", self.settings.name)
                self.component.poke()
