"""`GET /metrics`: the control plane's state in Prometheus text format, read from the store per scrape.

Releases (phase, groups done of all, the verification of each group with the numbers it was judged on),
orders (phase), instances (by app, cell, revision, readiness), registry endpoints (by service and state),
the audit chain's length, and every app's traffic over the last 30 s by revision and cell, read from the
node agents at scrape time (`?traffic=false` leaves that out). A scrape needs a token that may read, like
every API call (Prometheus: `authorization: {credentials: TOKEN}`). The per-instance counters and
histograms live on the agents' and gateways' own `/metrics`.

Also `GET /v1/apps/{app}/metrics`: one app's recent traffic as JSON, for `ballast metrics`.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ballast.api.deps import AppName, one, principal, require, store_of
from ballast.core.authz import Action
from ballast.core.orders import OrderPhase
from ballast.core.outbound import OutboundPolicy
from ballast.core.release_engine import Phase
from ballast.core.request_metrics import ZERO, Counts, summarize
from ballast.core.verification import Verdict
from ballast.services import apps, control_metrics, isolation_groups, request_metrics, traffic_rules
from ballast.services.access import Principal

router = APIRouter()
TRAFFIC_WINDOW = 30.0


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _families(state: control_metrics.ControlPlaneState) -> list[Metric]:
    phase = GaugeMetricFamily("ballast_release_phase", "1 for the phase the newest release of each app is in",
                              labels=["app", "release", "kind", "phase"])
    done = GaugeMetricFamily("ballast_release_completed_groups", "groups of the newest release that are done",
                             labels=["app", "release"])
    total = GaugeMetricFamily("ballast_release_groups", "groups in the newest release's plan", labels=["app", "release"])
    target = GaugeMetricFamily("ballast_release_target_revision", "the revision the newest release goes to",
                               labels=["app", "release"])
    for r in state.releases:
        for p in Phase:
            phase.add_metric([r.app, str(r.id), r.kind, p.value], 1.0 if r.phase == p.value else 0.0)
        done.add_metric([r.app, str(r.id)], r.completed_groups)
        total.add_metric([r.app, str(r.id)], r.groups)
        target.add_metric([r.app, str(r.id)], r.to_revision)
    order_phase = GaugeMetricFamily("ballast_order_phase", "1 for the phase each release order is in",
                                    labels=["order", "phase", "emergency"])
    for o in state.orders:
        for op in OrderPhase:
            order_phase.add_metric([o.name, op.value, str(o.emergency).lower()], 1.0 if o.phase == op.value else 0.0)
    inst = GaugeMetricFamily("ballast_instances", "running instances", labels=["app", "cell", "revision", "ready"])
    for labels, n in sorted(((k.app, k.cell, str(k.revision), str(k.ready).lower()), n)
                            for k, n in state.instances.items()):
        inst.add_metric(list(labels), n)
    eps = GaugeMetricFamily("ballast_endpoints", "registry endpoints", labels=["service", "state"])
    for (service, endpoint_state), n in sorted(state.endpoints.items()):
        eps.add_metric([service, endpoint_state], n)
    records = GaugeMetricFamily("ballast_audit_records", "records in the audit chain")
    records.add_metric([], state.audit_records)
    return [phase, done, total, target, order_phase, inst, eps, records, *_verification_families(state.releases)]


def _verification_families(latest: tuple[control_metrics.NewestRelease, ...]) -> list[GaugeMetricFamily]:
    """The newest verification of each group of each app's newest release, and the numbers it was judged on."""
    labels = ["app", "release", "group"]
    state = GaugeMetricFamily("ballast_release_verification_state", "1 for the state of the group's newest "
                              "verification", labels=[*labels, "state"])
    requests = GaugeMetricFamily("ballast_release_verification_requests", "requests in the verification window",
                                 labels=[*labels, "side", "revision"])
    errors = GaugeMetricFamily("ballast_release_verification_error_ratio", "failed share of those requests (0..1)",
                               labels=[*labels, "side", "revision"])
    p99 = GaugeMetricFamily("ballast_release_verification_p99_seconds", "p99 response time in the window",
                            labels=[*labels, "side", "revision"])
    for r in latest:
        for newest in r.verifications:
            values = [r.app, str(r.id), newest.group]
            for v in Verdict:
                state.add_metric([*values, v.value], 1.0 if newest.state == v.value else 0.0)
            for side in ("canary", "baseline"):
                numbers = (newest.result or {}).get(side)
                if not numbers:
                    continue
                at = [*values, side, str(numbers["revision"])]
                requests.add_metric(at, numbers["requests"])
                if numbers["errorRatePercent"] is not None:
                    errors.add_metric(at, numbers["errorRatePercent"] / 100)
                if numbers["p99Ms"] is not None:
                    p99.add_metric(at, numbers["p99Ms"] / 1000)
    return [state, requests, errors, p99]


async def _traffic_families(sources: list[request_metrics.Source], policy: OutboundPolicy) -> list[GaugeMetricFamily]:
    """Every app's traffic in the last TRAFFIC_WINDOW seconds by revision and cell, read from the node agents
    now (their own /metrics hold the per-instance counters; these gauges need no rate() to alert on)."""
    readings = await request_metrics.read(sources, None, TRAFFIC_WINDOW, policy=policy)
    labels = ["app", "revision", "cell"]
    rate = GaugeMetricFamily("ballast_app_requests_per_second", f"requests per second over the last "
                             f"{TRAFFIC_WINDOW:g}s, as the sidecars counted them", labels=labels)
    ratio = GaugeMetricFamily("ballast_app_error_ratio", "failed share of those requests (0..1)", labels=labels)
    latency = GaugeMetricFamily("ballast_app_response_seconds", "response-time percentiles of those requests",
                                labels=[*labels, "quantile"])
    up = GaugeMetricFamily("ballast_request_metrics_source_up", "1 if the node's agent answered this scrape",
                           labels=["node"])
    grouped: dict[tuple[str, str, str], Counts] = {}
    for reading in readings:
        up.add_metric([reading.source.name], 1.0 if reading.ok else 0.0)
        for s, c in reading.recent.items():
            key = (s.app, str(s.revision), s.cell)
            grouped[key] = grouped.get(key, ZERO) + c
    seconds = request_metrics.covered_seconds(readings, TRAFFIC_WINDOW)
    for key, counts in sorted(grouped.items()):
        summary = summarize(counts, seconds)
        rate.add_metric(list(key), summary.rate)
        if summary.error_rate is not None:
            ratio.add_metric(list(key), summary.error_rate / 100)
        for q, value in (("0.5", summary.p50_ms), ("0.9", summary.p90_ms), ("0.99", summary.p99_ms)):
            if value is not None:
                latency.add_metric([*key, q], value / 1000)
    return [rate, ratio, latency, up]


def _rule_families(rules: list[dict[str, Any]]) -> list[GaugeMetricFamily]:
    """Each TrafficRule's state, and each route's subsets: ready endpoints, and whether calls fall back."""
    effect = GaugeMetricFamily("ballast_traffic_rule_in_effect", "1 once every traffic component acknowledged the "
                               "rule's generation", labels=["rule", "service"])
    generation = GaugeMetricFamily("ballast_traffic_rule_generation", "the registry generation of the rule's last "
                                   "change", labels=["rule", "service"])
    ready = GaugeMetricFamily("ballast_traffic_route_ready_endpoints", "ready endpoints in a route's subset",
                              labels=["rule", "route", "subset"])
    fallback = GaugeMetricFamily("ballast_traffic_route_fallback", "1 where a route's subset has no ready endpoint: "
                                 "its calls take the service's default pool (or 503, fallback: fail)",
                                 labels=["rule", "route", "subset"])
    for rule in rules:
        key = [rule["name"], rule["spec"]["service"]]
        effect.add_metric(key, 1.0 if rule["inEffect"] else 0.0)
        generation.add_metric(key, float(rule["generation"]))
        for route in rule.get("routes") or []:
            for side in route["to"]:
                labels = [rule["name"], route["name"], side["subset"]]
                ready.add_metric(labels, float(side["readyEndpoints"]))
                fallback.add_metric(labels, 1.0 if side["fallback"] else 0.0)
    return [effect, generation, ready, fallback]


def _group_families(groups: list[dict[str, Any]]) -> list[GaugeMetricFamily]:
    """Each isolation group's size: wanted, ready (routable) instances per cell, and whether it is in effect."""
    wanted = GaugeMetricFamily("ballast_isolation_group_wanted_instances", "instances the group declares per cell",
                               labels=["group", "app", "unit", "cell"])
    ready = GaugeMetricFamily("ballast_isolation_group_ready_endpoints", "the group's endpoints ready to route per "
                              "cell", labels=["group", "app", "unit", "cell"])
    effect = GaugeMetricFamily("ballast_isolation_group_in_effect", "1 once every traffic component acknowledged "
                               "the group's last change of routing", labels=["group", "app", "unit"])
    for g in groups:
        key = [g["name"], g["app"], g["code"]]
        effect.add_metric(key, 1.0 if g["inEffect"] else 0.0)
        for cell, counts in g["cells"].items():
            wanted.add_metric([*key, cell], float(counts["wanted"]))
            ready.add_metric([*key, cell], float(counts["ready"]))
    return [wanted, ready, effect]


@router.get("/metrics", tags=["metrics"], include_in_schema=False)
async def metrics(request: Request, traffic: bool = Query(True, description="include every app's recent traffic, "
                                                                           "read from the node agents now"),
                  who: Principal = Depends(principal)) -> Response:
    require(who, Action.READ)
    async with store_of(request).read() as conn:
        families = _families(await control_metrics.read(conn))
        families += _rule_families(await traffic_rules.listing(conn, traffic_rules.TRAFFIC_RULE))
        families += _group_families(await isolation_groups.listing(conn))
        sources = await request_metrics.all_sidecar_sources(conn)
    if traffic:
        families += await _traffic_families(sources, request.app.state.outbound)
    refused = CounterMetricFamily("ballast_api_refused_requests", "requests refused before any route acted: "
                                  "unauthenticated, unroutable, throttled", labels=["reason"])
    for reason, n in sorted(request.app.state.refusals.totals.items()):
        refused.add_metric([reason], n)
    families.append(refused)
    suspended = GaugeMetricFamily("ballast_node_judgement_suspended", "1 where so many nodes fell silent at once that "
                                  "the control plane assumes it cannot hear them and drains none", labels=["scope"])
    for scope in store_of(request).memo.get("node-disruption", ((), frozenset()))[0]:
        suspended.add_metric([scope], 1.0)
    families.append(suspended)
    fenced = CounterMetricFamily("ballast_leader_fenced_writes", "writes of this replica's controllers refused "
                                 "because it no longer held the leadership lease at their epoch (epoch: the store "
                                 "refused; deadline: its own renewal deadline had passed)", labels=["reason"])
    for reason in ("epoch", "deadline"):
        fenced.add_metric([reason], store_of(request).fenced_writes.get(reason, 0))
    families.append(fenced)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/apps/{app}/metrics", tags=["metrics"])
async def app_request_metrics(app: AppName, request: Request,
                              by: Literal["revision", "cell", "instance"] = Query("revision"),
                              window: float = Query(30.0, gt=0, le=300, description="seconds"),
                              source: Literal["sidecar", "gateway"] = Query("sidecar"),
                              who: Principal = Depends(principal)) -> dict[str, Any]:
    """What the app's instances served in the last `window` seconds, grouped `by` revision, cell or instance, as
    their sidecars counted it (or the gateways); unreadable sources are named."""
    require(who, Action.READ, app)
    async with store_of(request).read() as conn:
        record = one(await apps.list_apps(conn, app), f"app {app!r} not found")
        sources = await request_metrics.sources(conn, app, source)
    readings = await request_metrics.read(sources, app, window, policy=request.app.state.outbound)
    return {"app": app, "by": by, "source": source, "windowSeconds": window,
            "deployedRevision": record.deployed_revision, "latestRevision": record.latest_revision,
            "rows": request_metrics.rows(readings, by, window), "sources": [r.to_json() for r in readings]}
