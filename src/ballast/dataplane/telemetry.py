"""A component's telemetry endpoint: `/metrics` for Prometheus and `/v1/request-metrics` for the control plane.

Node agents and gateways each run one, beside their proxies, in their own
event loop. It serves read-only counts (no secrets, no changes), so it takes
no token; it listens on the component's own address. The control plane reads
`/v1/request-metrics` to show live traffic and to judge release groups;
Prometheus scrapes `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Callable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ballast.core.request_metrics import BOUNDS_MS, CLASSES, Counts
from ballast.dataplane.collector import RequestStats
from ballast.errors import BallastError

log = logging.getLogger("ballast.telemetry")
MAX_WINDOW_SECONDS = 300.0


class TelemetryUnavailable(BallastError):
    status = 503


def request_families(prefix: str, place: str, name: str, stats: RequestStats) -> list[Metric]:
    """Counters and the response-time histogram of every series, labelled app, instance, revision, cell and
    `place` (node or gateway) = `name`, in Prometheus' shapes."""
    labels = ["app", "instance", "revision", "cell", place]
    requests = CounterMetricFamily(f"{prefix}_requests", "requests to the instance", labels=labels)
    responses = CounterMetricFamily(f"{prefix}_responses", "answers by status class",
                                    labels=[*labels, "code"])
    errors = CounterMetricFamily(f"{prefix}_request_errors", "requests that failed: 5xx answers and broken exchanges",
                                 labels=labels)
    broken = CounterMetricFamily(f"{prefix}_connection_errors",
                                 "exchanges that broke at the connection level (refused, reset, no answer)",
                                 labels=labels)
    seconds = HistogramMetricFamily(f"{prefix}_response_seconds", "time from a request's arrival to the answer",
                                    labels=labels)
    for s, c in sorted(stats.totals().items(), key=lambda kv: (kv[0].app, kv[0].instance, kv[0].revision)):
        values = [s.app, s.instance, str(s.revision), s.cell, name]
        requests.add_metric(values, c.requests)
        for code, n in zip(CLASSES, c.responses):
            responses.add_metric([*values, code], n)
        errors.add_metric(values, c.errors)
        broken.add_metric(values, c.conn_errors)
        seconds.add_metric(values, buckets=_cumulative(c), sum_value=c.latency_sum)
    read_errors = CounterMetricFamily(f"{prefix}_stats_read_errors", "failed readings of a proxy's statistics",
                                      labels=[place])
    read_errors.add_metric([name], stats.read_errors)
    probes = GaugeMetricFamily(f"{prefix}_stats_probes_failing", "proxies whose last reading failed", labels=[place])
    probes.add_metric([name], len(stats.last_errors))
    return [requests, responses, errors, broken, seconds, read_errors, probes]


def _cumulative(c: Counts) -> list[tuple[str, float]]:
    out, running = [], 0
    for bound, n in zip(BOUNDS_MS, c.latency):
        running += n
        out.append((_seconds_label(bound), float(running)))
    out.append(("+Inf", float(running + c.latency[-1])))
    return out


def _seconds_label(milliseconds: float) -> str:
    return repr(milliseconds / 1000)


class _Families(Collector):
    def __init__(self, make: Callable[[], list[Metric]]) -> None:
        self.make = make

    def collect(self) -> Iterator[Metric]:
        yield from self.make()


def build_app(stats: RequestStats, families: Callable[[], list[Metric]]) -> Starlette:
    async def metrics(_: Request) -> Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def request_metrics(request: Request) -> JSONResponse:
        app = request.query_params.get("app") or None
        raw = request.query_params.get("window")
        seconds: float | None = None
        if raw is not None:
            try:
                seconds = float(raw)
            except ValueError:
                seconds = -1.0
            if not 0 < seconds <= MAX_WINDOW_SECONDS:
                return JSONResponse({"error": "InvalidInput", "message": f"window: got {raw!r}, expected seconds "
                                     f"in (0, {MAX_WINDOW_SECONDS:g}]"}, status_code=422)
        if request.query_params.get("fresh") in ("1", "true"):
            await stats.refresh()   # a verification window's edge: the counts of now, not of the last reading
        return JSONResponse(stats.to_json(app, seconds))

    return Starlette(routes=[Route("/metrics", metrics), Route("/v1/request-metrics", request_metrics)])


class _Embedded(uvicorn.Server):
    """uvicorn inside a component that handles its own signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class TelemetryServer:
    def __init__(self, app: Any, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._app = app
        self._server: _Embedded | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind (a taken port is an error naming it) and serve in the background."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise TelemetryUnavailable(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror}; "
                                       "choose another --metrics-port (0 turns the endpoint off)") from exc
        sock.listen(128)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self._server = _Embedded(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="telemetry")

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 5)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()

