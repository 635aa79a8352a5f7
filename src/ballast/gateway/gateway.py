"""`ballast gateway`: routes by host and path prefix to exposed services, a traffic component.

It registers itself, long-polls the registry, applies each snapshot to its
HAProxy (runtime API for endpoints, seamless reload for route changes) and
acknowledges the generation in effect, exactly as a node's mesh does. Its
HAProxy runs in its own session and is adopted after a gateway restart, so a
restart of this process costs no request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ballast.client import ApiError, Client, Unreachable
from ballast.core.request_metrics import Counts, Series
from ballast.dataplane.collector import RequestStats, read_gateway
from ballast.dataplane.haproxy import ConfigRejected, HAProxy, ProxyFailed, ProxyFiles, install_stats_script
from ballast.dataplane.haproxy_config import Address, GatewayConfig, render_gateway
from ballast.wire.registry import Snapshot
from ballast.wire.reports import Acknowledgement, GatewayRegistration
from ballast.dataplane.request_stats import SERVICE_PREFIX
from ballast.dataplane.runtime import RuntimeApiError
from ballast.dataplane.tables import gateway_tables
from ballast.dataplane.telemetry import TelemetryServer, build_app, request_families

log = logging.getLogger("ballast.gateway")
POLL_SECONDS = 25.0
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


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.client = Client(settings.server, settings.token, timeout=40.0)
        self.proxy = HAProxy(settings.haproxy, ProxyFiles(settings.data_dir / "haproxy"),
                             label=f"gateway {settings.name}")
        self.snapshot = Snapshot.empty()
        self.applied = 0
        self.error = ""
        self.received = False
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

    def render(self, snapshot: Snapshot) -> tuple[str, GatewayConfig]:
        routes, backends = gateway_tables(snapshot)
        cfg = GatewayConfig(name=self.settings.name, admin_socket=str(self.proxy.files.admin_socket),
                            listen=self.settings.listen, routes=routes, backends=backends,
                            threads=self.settings.threads, stats=self.stats_hooks)
        return render_gateway(cfg), cfg

    async def run(self, stop: asyncio.Event) -> None:
        self._adopt()
        if self.telemetry is not None:
            await self.telemetry.start()
        try:
            await self._register(stop)
            tasks = [asyncio.create_task(self._poll(stop)), asyncio.create_task(self._watch(stop)),
                     asyncio.create_task(self.request_stats.run(stop))]
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
        delay = 0.2
        while not stop.is_set():
            try:
                await self.client.put(f"/v1/gateways/{self.settings.name}", GatewayRegistration(
                    address=str(self.settings.listen),
                    metrics_address=self.telemetry.address if self.telemetry is not None else None).to_json())
                log.info("gateway %s registered at %s", self.settings.name, self.settings.listen)
                return
            except (Unreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status in (401, 403, 422):
                    raise
                log.warning("registration failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _poll(self, stop: asyncio.Event) -> None:
        known: int | None = None
        while not stop.is_set():
            try:
                answer = await self.client.get("/v1/registry", known=known, timeout=POLL_SECONDS)
            except (Unreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status == 404:
                    await self._register(stop)
                log.warning("registry unavailable (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            self.snapshot = Snapshot.from_json(answer)
            self.received = True
            known = self.snapshot.generation
            await self.apply()

    async def apply(self) -> None:
        snapshot = self.snapshot
        endpoints = {(s.name, e.id): (e.revision, e.cell) for s in snapshot.services for e in s.endpoints}
        if endpoints != self._endpoints:
            # An instance's revision changes only while it is drained; what it served so far was the old one's.
            await self.request_stats.poll(PROBE)
            self._endpoints = endpoints
        text, cfg = self.render(snapshot)
        try:
            refused = await self.proxy.converge(text, cfg.backends)
        except (ConfigRejected, ProxyFailed, RuntimeApiError) as exc:
            self.error = exc.message
            log.error("%s", exc.message)
        else:
            self.error = "; ".join(refused)
            if not [r for r in refused if not r.startswith("del server")]:
                self.applied = max(self.applied, snapshot.generation)
        self._save()
        try:
            await self.client.post(f"/v1/gateways/{self.settings.name}/ack",
                                   Acknowledgement(generation=self.applied, error=self.error[:4000]).to_json())
        except (Unreachable, ApiError) as exc:
            log.warning("acknowledging generation %s failed (%s)", self.applied, exc)

    async def _request_counts(self) -> tuple[str, dict[str, Counts]]:
        if not self.proxy.alive():
            raise RuntimeApiError(f"gateway {self.settings.name}: HAProxy is not running")
        return await read_gateway(self.proxy.files.admin_socket)

    def _series_of(self, key: str) -> Series | None:
        backend, _, instance = key.partition(" ")
        service = backend.removeprefix(SERVICE_PREFIX)
        known = self._endpoints.get((service, instance))
        if known is None:
            return None
        revision, cell = known
        return Series(app=service, instance=instance, revision=revision, cell=cell,
                      source=f"gateway/{self.settings.name}")

    async def _watch(self, stop: asyncio.Event) -> None:
        """Restart HAProxy if it dies; re-apply while something was refused (a postponed deletion)."""
        while not stop.is_set():
            await asyncio.sleep(1.0 if not self.error else 3.0)
            if self.received and (not self.proxy.alive() or self.error):
                if not self.proxy.alive():
                    log.warning("HAProxy of gateway %s is not running; starting it", self.settings.name)
                await self.apply()
