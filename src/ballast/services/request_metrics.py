"""An app's request metrics, read from the components that count them: node agents and gateways.

The control plane keeps no time series. Each node agent counts what its
sidecars' inbound sides served, per instance and revision; each gateway
counts what it sent to each instance. Both answer `/v1/request-metrics` with
cumulative totals and, on request, the last N seconds. This module finds the
sources of an app (the nodes that host its instances, the gateways), reads
them concurrently with a short timeout, and says which could not be read:
a missing source is reported, never silently left out. A source is read only
at its registered telemetry address on its own IP (`core.outbound`), without
any credential of ours.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Iterable

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.endpoints import GATEWAY
from ballast.core.outbound import OutboundPolicy, gateway_home, telemetry_refusal
from ballast.core.request_metrics import GROUPINGS, Counts, Series, group, summarize
from ballast.services import outbound
from ballast.store.schema import components, instances, nodes

SIDECAR, GATEWAY_SOURCE = "sidecar", "gateway"
READ_TIMEOUT = 3.0


@dataclass(frozen=True)
class Source:
    name: str                  # a node, or gateway/NAME
    kind: str                  # sidecar | gateway
    address: str | None        # its telemetry endpoint; None: it serves none
    home: str = ""             # the IP it registered as its own (a node's IP, a gateway's listening address)


@dataclass(frozen=True)
class Reading:
    """What one source answered: cumulative totals per series (and the last seconds, if asked), or why not."""

    source: Source
    epoch: str = ""
    at: float = 0.0
    window_seconds: float | None = None
    totals: dict[Series, Counts] = field(default_factory=dict)
    recent: dict[Series, Counts] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def to_json(self) -> dict[str, Any]:
        return {"name": self.source.name, "kind": self.source.kind, "address": self.source.address, "ok": self.ok,
                "error": self.error}


async def sources(conn: AsyncConnection, app: str, kind: str = SIDECAR) -> list[Source]:
    """Sidecar sources: every node that hosts (or hosted) an instance of `app`. Gateway sources: every gateway."""
    if kind == GATEWAY_SOURCE:
        rows = (await conn.execute(select(components.c.name, components.c.metrics_address, components.c.address)
                                   .where(components.c.kind == GATEWAY).order_by(components.c.name))).all()
        return [Source(f"gateway/{r.name}", GATEWAY_SOURCE, r.metrics_address,
                       gateway_home(r.address, r.metrics_address)) for r in rows]
    hosting = select(instances.c.node).where(instances.c.app == app).distinct()
    rows = (await conn.execute(select(nodes.c.name, nodes.c.metrics_address, nodes.c.ip)
                               .where(nodes.c.name.in_(hosting)).order_by(nodes.c.name))).all()
    return [Source(r.name, SIDECAR, r.metrics_address, r.ip) for r in rows]


async def all_sidecar_sources(conn: AsyncConnection) -> list[Source]:
    rows = (await conn.execute(select(nodes.c.name, nodes.c.metrics_address, nodes.c.ip).order_by(nodes.c.name))).all()
    return [Source(r.name, SIDECAR, r.metrics_address, r.ip) for r in rows]


async def read(sources_: Iterable[Source], app: str | None, window_seconds: float | None = None, *,
               fresh: bool = False, timeout: float = READ_TIMEOUT, policy: OutboundPolicy,
               transport: httpx.AsyncBaseTransport | None = None) -> list[Reading]:
    """Read every source at once; each answers within `timeout` or is reported as unreadable. `fresh`: the
    sources read their proxies first (the counts of this moment rather than of their last reading)."""
    # Our credentials stay home: no headers of ours, nothing from the environment (.netrc, proxies).
    async with httpx.AsyncClient(timeout=timeout, transport=transport, trust_env=False,
                                 follow_redirects=False) as http:
        return list(await asyncio.gather(*(_read_one(http, s, app, window_seconds, fresh, policy)
                                           for s in sources_)))


async def _read_one(http: httpx.AsyncClient, source: Source, app: str | None, window_seconds: float | None,
                    fresh: bool, policy: OutboundPolicy) -> Reading:
    if not source.address:
        return Reading(source, error=f"{source.name} serves no request metrics (its metrics endpoint is off)")
    expected = telemetry_refusal(policy, source.home, source.address,
                                 outbound.is_this_host(source.address.rpartition(":")[0].strip("[]")))
    if expected is not None:
        return Reading(source, error=f"{source.name}: telemetry address {source.address} refused; expected {expected}")
    params: dict[str, Any] = {"app": app} if app else {}
    if fresh:
        params["fresh"] = 1
    if window_seconds:
        params["window"] = window_seconds
    url = f"http://{source.address}/v1/request-metrics"
    try:
        response = await http.get(url, params=params)
    except httpx.HTTPError as exc:
        return Reading(source, error=f"{source.name}: {url} unreachable ({type(exc).__name__})")
    if response.status_code != 200:
        return Reading(source, error=f"{source.name}: {url} answered {response.status_code}")
    try:
        return parse(source, response.json())
    except ValueError as exc:
        return Reading(source, error=f"{source.name}: unreadable answer from {url}: {exc}")


def parse(source: Source, body: Any) -> Reading:
    """A source's JSON answer as values; ValueError when it is not what a component sends."""
    if not isinstance(body, dict) or not isinstance(body.get("series"), list):
        raise ValueError("expected an object with a list of series")
    totals: dict[Series, Counts] = {}
    recent: dict[Series, Counts] = {}
    for item in body["series"]:
        try:
            series = Series(app=str(item["app"]), instance=str(item["instance"]), revision=int(item["revision"]),
                            cell=str(item["cell"]), source=source.name)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a series without {exc}") from None
        totals[series] = Counts.from_json(item.get("total") or {})
        if item.get("window") is not None:
            recent[series] = Counts.from_json(item["window"])
    covered = body.get("windowSeconds")
    return Reading(source, epoch=str(body.get("epoch", "")), at=float(body.get("at") or 0.0),
                   window_seconds=float(covered) if covered is not None else None, totals=totals, recent=recent)


def covered_seconds(readings: list[Reading], asked: float) -> float:
    """The seconds the readings' recent counts cover: the shortest any source could answer (a young one covers
    less than asked), or what was asked when none answered."""
    covered = [r.window_seconds for r in readings if r.ok and r.window_seconds]
    return min(covered) if covered else asked


def rows(readings: list[Reading], by: str, window_seconds: float) -> list[dict[str, Any]]:
    """The readings' last-seconds counts grouped `by` revision, cell or instance, summarized per group."""
    if by not in GROUPINGS:
        raise ValueError(f"group by one of {', '.join(GROUPINGS)}")
    pairs = [(s, c) for r in readings for s, c in r.recent.items()]
    seconds = covered_seconds(readings, window_seconds)
    members: dict[str, set[Series]] = {}
    for s, _ in pairs:
        members.setdefault(s.label(by), set()).add(s)
    out = []
    for key, counts in sorted(group(pairs, by).items(), key=lambda kv: _sort_key(by, kv[0])):
        mine = members[key]
        totals = sum((r.totals[s].requests for r in readings for s in mine if s in r.totals), 0)
        row: dict[str, Any] = {"key": key, "instances": len({s.instance for s in mine}),
                               "revisions": sorted({s.revision for s in mine}), "cells": sorted({s.cell for s in mine}),
                               "window": summarize(counts, seconds).to_json(), "totalRequests": totals}
        out.append(row)
    return out


def _sort_key(by: str, key: str) -> tuple[int, str]:
    return (int(key), "") if by == "revision" and key.isdigit() else (0, key)
