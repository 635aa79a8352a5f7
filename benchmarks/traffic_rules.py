#!/usr/bin/env python3
"""What TrafficRules cost: per-hop latency with routes compiled, rule changes to acknowledgement, weight accuracy.

1. Per-hop latency (no platform). Two demo apps (`python3 app.py`, revision 1 and 2, no artificial latency) and
   three sidecar HAProxies rendered by Ballast's own code (`sidecar_tables` on a registry `Snapshot`, then
   `render_sidecar`): one with no rule for `back`, one with a rule of 10 routes, one of 100. A paced client
   sends a FIXED RATE of calls (the same in every variant) to each sidecar's outbound listener (Host: back), and
   to the apps directly. Each call matches only the LAST route (a 50/50 split between the two revisions): every
   route before it mixes header, tag (baggage) and path conditions and sends to an empty subset with
   `fallback: fail`, so a call that matched one of them would be a 503, counted as failed. Rounds interleave
   the variants (their order rotates each round); latency is from writing the request to reading the whole
   answer, and each variant's p50 and p99 are the median of its rounds'.
2. Rule change -> every component acknowledged (`ballast up`: 2 zones x 2 nodes and a gateway; `back` 4
   instances exposed as back.local, `front` 2, `aux` 1). Alternately a weight-only change and a change of
   structure (a route added or removed) of one TrafficRule via `POST /v1/apply`, and after each a baseline:
   an apply of `aux` that only moves its `expose` host (a registry change without a rule). After each apply's
   answer, every 10 ms: `GET /v1/trafficrules/NAME` (`inEffect`), `GET /v1/gateways` (acknowledged generation),
   and the store's `components` table read-only (every sidecar and gateway acknowledged the registry generation
   read right after the apply). The last is the same measure for both kinds, so their ratio is a rule's cost.
3. Weight accuracy through the platform's gateway: `back` at revisions 1 and 2 (its release paused after the
   beta group), a rule 70/30 and then 999/1, N calls each; each revision's share, and for 999/1 the count of
   revision 2 against the exact 99.9% binomial interval.

Run:  .venv/bin/python benchmarks/traffic_rules.py [--seconds 5] [--rounds 3] [--rate 400] [--changes 50]
                                                   [--calls 20000] [--skip-platform]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (BenchFailed, Child, code_version, free_port, kill_leftovers, loadavg,  # noqa: E402
                      percentile, run_in_workdir, tail, wait_listening)

from ballast.cli.packaging import stage_demo  # noqa: E402
from ballast.dataplane.haproxy import HAProxy, ProxyFiles, find_binary  # noqa: E402
from ballast.dataplane.haproxy_config import Address, SidecarConfig, render_sidecar  # noqa: E402
from ballast.dataplane.tables import sidecar_tables  # noqa: E402
from ballast.wire.registry import Endpoint, Service, Snapshot  # noqa: E402
from ballast.wire.traffic import RuleInEffect, TrafficRuleSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOP_IP = "127.0.182.2"          # part 1: apps and sidecars
FIRST_NODE_IP = "127.0.181.2"   # parts 2 and 3: the platform's nodes
# What every call of part 1 carries: values close to, but not matching, the conditions of the routes before
# the last one, so HAProxy compares real text instead of finding a header absent.
CALL_PATH = "/api/items"
CALL_HEADERS = {"x-tenant": "acme", "x-user-group": "staff", "x-client": "web-1", "baggage": "env=prod,team=payments"}
Item = dict[str, Any]


# --- one HTTP/1.1 exchange on a kept-alive connection ------------------------------------------------------
@dataclass
class Conn:
    ip: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def open(self) -> "Conn":
        self.reader, self.writer = await asyncio.open_connection(self.ip, self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def request_bytes(host: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(conn: Conn, request: bytes, timeout: float = 10.0) -> tuple[int, bytes, bool]:
    """(status, body, whether the connection stays open)."""
    if conn.writer is None:
        await conn.open()
    assert conn.reader is not None and conn.writer is not None
    conn.writer.write(request)
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (ln.partition(":") for ln in lines[1:]) if k}
    length = int(headers.get("content-length", "0") or 0)
    body = await asyncio.wait_for(conn.reader.readexactly(length), timeout) if length else b""
    return status, body, headers.get("connection") != "close"


def revision_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("revision"))
    except ValueError:
        return "?"


# --- part 1: per-hop latency at a fixed rate ----------------------------------------------------------------
@dataclass
class Paced:
    latencies: list[float] = field(default_factory=list)   # send -> whole answer, seconds
    lateness: list[float] = field(default_factory=list)    # how long after its scheduled time each call was sent
    failures: Counter[str] = field(default_factory=Counter)
    revisions: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


async def paced(addresses: list[tuple[str, int]], host: str, rate: float, seconds: float, connections: int) -> Paced:
    """Calls at a fixed rate (open loop: call k is due at start + k/rate whatever came before), each on an idle
    kept-alive connection of a pool spread over `addresses`."""
    loop = asyncio.get_running_loop()
    request = request_bytes(host, CALL_PATH, CALL_HEADERS)
    idle: asyncio.Queue[Conn] = asyncio.Queue()
    for k in range(connections):
        idle.put_nowait(await Conn(*addresses[k % len(addresses)]).open())
    out = Paced()

    async def one(due: float) -> None:
        conn = await idle.get()
        sent = loop.time()
        out.lateness.append(sent - due)
        try:
            status, body, kept = await exchange(conn, request)
            if status == 200:
                out.latencies.append(loop.time() - sent)
                out.revisions[revision_of(body)] += 1
            else:
                out.failures[f"HTTP {status}"] += 1
            if not kept:
                conn.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            out.failures[type(exc).__name__] += 1
            conn.close()
        idle.put_nowait(conn)   # a closed one reopens on its next call

    start = loop.time() + 0.05
    tasks = []
    for k in range(int(rate * seconds)):
        due = start + k / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    out.seconds = loop.time() - start
    while not idle.empty():
        idle.get_nowait().close()
    return out


def filler_route(i: int) -> Item:
    """A route the measured call does not match; the four kinds mix header, tag (baggage) and path conditions,
    and in three of them a condition that holds comes first, so the one that fails is evaluated too."""
    kind = i % 4
    match: Item = ({"headers": {"x-user-group": {"exact": f"group-{i}"}}} if kind == 0 else
                   {"headers": {"x-tenant": {"exact": "acme"}}, "tags": {"env": f"canary-{i}"}} if kind == 1 else
                   {"headers": {"x-tenant": {"prefix": "ac"}}, "pathPrefix": f"/v{i}"} if kind == 2 else
                   {"headers": {"x-tenant": {"exact": "acme"}, "x-client": {"regex": f"^probe-{i}-[0-9]+$"}}})
    # An empty subset that fails: a call wrongly taking this route is a 503, never a silent success.
    return {"name": f"r{i}", "match": match, "to": [{"revision": 2, "cells": ["cell-b"]}], "fallback": "fail"}


def hop_rule(routes: int) -> RuleInEffect:
    last = {"name": "split", "match": {"headers": {"x-tenant": {"exact": "acme"}}, "pathPrefix": "/api"},
            "to": [{"revision": 1, "weight": 50}, {"revision": 2, "weight": 50}]}
    spec = TrafficRuleSpec.model_validate({"service": "back", "routes": [*map(filler_route, range(routes - 1)), last]})
    return RuleInEffect(name=f"bench-{routes}", generation=1, spec=spec)


async def part_hops(args: argparse.Namespace, work: Path) -> None:
    binary = find_binary()
    shutil.copy(ROOT / "src" / "ballast" / "demo" / "app.py", work / "app.py")
    ports = [free_port(HOP_IP) for _ in range(2)]
    apps = [Child(["python3", str(work / "app.py")], work / f"app-{r}.log",
                  env={"HOST": HOP_IP, "PORT": str(port), "BALLAST_APP": "back", "BALLAST_REVISION": str(r),
                       "DEMO_GRACE_SECONDS": "1"}) for r, port in ((1, ports[0]), (2, ports[1]))]
    endpoints = tuple(Endpoint(id=f"back-{r}", ip=HOP_IP, port=port, cell="cell-a", zone="zone-a", state="ready",
                               revision=r) for r, port in ((1, ports[0]), (2, ports[1])))
    variants: dict[str, tuple[RuleInEffect, ...]] = {"no rule": (), "10 routes": (hop_rule(10),),
                                                     "100 routes": (hop_rule(100),)}
    sidecars: dict[str, tuple[HAProxy, int]] = {}
    for a in apps:
        a.start()
    try:
        for port in ports:
            await wait_listening(HOP_IP, port)
        for name, rules in variants.items():
            snapshot = Snapshot(generation=1, services=(Service(name="back", endpoints=endpoints, rules=rules),))
            tables = sidecar_tables(snapshot, "cell-a", "front")
            proxy = HAProxy(binary, ProxyFiles(work / name.replace(" ", "-")), label=f"bench sidecar ({name})")
            inbound, outbound = free_port(HOP_IP), free_port(HOP_IP)
            await proxy.start(render_sidecar(SidecarConfig(
                instance=f"front-{len(sidecars)}", admin_socket=str(proxy.files.admin_socket),
                inbound=Address(HOP_IP, inbound), app=Address(HOP_IP, ports[0]), outbound=Address(HOP_IP, outbound),
                backends=tables.backends, rules=tables.rules, marking=tables.marking)))
            sidecars[name] = (proxy, outbound)
        paths: dict[str, list[tuple[str, int]]] = {"direct": [(HOP_IP, p) for p in ports]}
        paths.update({name: [(HOP_IP, port)] for name, (_, port) in sidecars.items()})
        results: dict[str, list[Paced]] = {name: [] for name in paths}
        for name, addresses in paths.items():   # warm-up: connections, HAProxy's pools, the apps' code paths
            await paced(addresses, "back", args.rate, 0.5, args.connections)
        order = list(paths)
        for r in range(args.rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                results[name].append(await paced(paths[name], "back", args.rate, args.seconds, args.connections))
        report_hops(results, args)
    finally:
        for proxy, _ in sidecars.values():
            await proxy.stop(1)
        for a in apps:
            a.stop(signal.SIGTERM, 5)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def report_hops(results: dict[str, list[Paced]], args: argparse.Namespace) -> None:
    print(f"\n## 1. per-hop latency: {args.rate:g} calls/s fixed rate, {args.connections} kept-alive connections, "
          f"{args.rounds} round(s) x {args.seconds:g} s per variant, rounds interleaved; load average {loadavg()}")
    print("latency = request written -> whole answer read (ms); p50 and p99 are each the median over the rounds "
          "(one round disturbed by the shared machine does not decide them); late p99 = how far behind schedule "
          "a call was sent\n")
    # The median round, not pooled samples: a burst of another process's work in one round would own the p99.
    figures = {n: (median([percentile(r.latencies, 50) for r in rs]), median([percentile(r.latencies, 99) for r in rs]))
               for n, rs in results.items()}
    print(f"{'path':<22} {'calls':>6} {'failed':>6} {'calls/s':>8} {'late p99':>8} {'p50':>7} {'p99':>7} "
          f"{'+p50 vs direct':>15} {'+p99':>7} {'+p50 vs no rule':>16} {'+p99':>7}  revisions answering")
    for name, rounds in results.items():
        p50, p99 = figures[name]
        failed = sum(sum(r.failures.values()) for r in rounds)
        calls = sum(len(r.latencies) for r in rounds) + failed
        rate = calls / sum(r.seconds for r in rounds)
        late = percentile([x for r in rounds for x in r.lateness], 99)
        revisions: Counter[str] = sum((r.revisions for r in rounds), Counter())
        label = "direct (app)" if name == "direct" else f"sidecar, {name}"
        direct, no_rule = figures["direct"], figures["no rule"]
        vs_rule = (f"{ms(p50 - no_rule[0]):>16} {ms(p99 - no_rule[1]):>7}" if name != "direct" else f"{'':>16} {'':>7}")
        print(f"{label:<22} {calls:>6} {failed:>6} {rate:>8.1f} {ms(late):>8} {ms(p50):>7} {ms(p99):>7} "
              f"{ms(p50 - direct[0]):>15} {ms(p99 - direct[1]):>7} {vs_rule}  "
              + " ".join(f"r{k}:{v}" for k, v in sorted(revisions.items())))
    print("\nper round p50 / p99 (ms), in the order run:")
    for name, rounds in results.items():
        print(f"  {name:<12} " + "   ".join(f"{ms(percentile(r.latencies, 50))} / {ms(percentile(r.latencies, 99))}"
                                           for r in rounds))
    for name, rounds in results.items():
        failures: Counter[str] = sum((r.failures for r in rounds), Counter())
        for kind, count in failures.items():
            print(f"  {name}: {count} x {kind}")
    print(flush=True)


# --- parts 2 and 3: the platform ----------------------------------------------------------------------------
def app_manifest(name: str, replicas: int, greeting: str = "v1", host: str | None = None, **env: str) -> Item:
    spec: Item = {"replicas": replicas,
                  "template": {"artifact": "./", "command": ["python3", "app.py"], "env": {"GREETING": greeting, **env},
                               "healthCheck": {"path": "/healthz", "periodSeconds": 5, "timeoutSeconds": 1},
                               "gracePeriodSeconds": 3}}
    if host:
        spec["expose"] = [{"host": host, "path": "/"}]
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": name}, "spec": spec}


def rule_manifest(name: str, routes: list[Item]) -> Item:
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "TrafficRule", "metadata": {"name": name},
            "spec": {"service": "back", "routes": routes}}


class Platform:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.data = work, work / "data"
        self.apps = stage_demo(work / "apps")
        self.gateway_port = free_port()
        self.child = Child([sys.executable, "-m", "ballast", "up", "--data-dir", str(self.data), "--port",
                            str(free_port()), "--gateway-port", str(self.gateway_port), "--metrics-port",
                            "0", "--first-node-ip", FIRST_NODE_IP, "--zones", "2",
                            "--nodes-per-zone", str(args.nodes_per_zone), "--no-user-config"],
                           work / "up.log", env={"HOME": str(work)})
        self.api: httpx.Client | None = None
        self.db: sqlite3.Connection | None = None
        self.files = 0

    def start(self) -> None:
        self.child.start()
        self.wait("ballast up", lambda: "Ballast is up" in (self.work / "up.log").read_text(errors="replace"), 120)
        cfg = yaml.safe_load((self.data / "client.yaml").read_text())
        self.api = httpx.Client(base_url=cfg["server"], headers={"Authorization": f"Bearer {cfg['token']}"},
                                timeout=30)
        # Read-only: only to see every component's acknowledged generation, which no API lists for nodes.
        self.db = sqlite3.connect(f"file:{self.data / 'ballast.db'}?mode=ro", uri=True, check_same_thread=False)

    def stop(self) -> str:
        if self.db is not None:
            self.db.close()
        if self.api is not None:
            self.api.close()
        return self.child.stop(signal.SIGINT, 120)

    def get(self, path: str) -> Any:
        assert self.api is not None
        r = self.api.get(path)
        if r.status_code != 200:
            raise BenchFailed(f"GET {path}: {r.status_code} {r.text[:300]}")
        return r.json()

    def post_apply(self, *docs: Item) -> Any:
        assert self.api is not None
        r = self.api.post("/v1/apply", json={"items": list(docs)})
        if r.status_code != 200:
            raise BenchFailed(f"apply: {r.status_code} {r.text[:300]}")
        return r.json()

    def cli(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "ballast", "--config", str(self.data / "client.yaml"), *args],
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise BenchFailed(f"ballast {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def cli_apply(self, *docs: Item) -> None:
        self.files += 1
        path = self.apps / f"apply-{self.files}.yaml"
        path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
        self.cli("apply", "-f", str(path))

    def wait(self, what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.child.exited:
                raise BenchFailed(f"ballast up exited while waiting for {what}:\n{tail(self.work / 'up.log')}")
            try:
                result = check()
            except (httpx.HTTPError, BenchFailed, KeyError):
                result = None
            if result:
                return result
            time.sleep(every)
        raise BenchFailed(f"timed out after {timeout:g}s waiting for {what}")

    def steady(self, app: str, count: int, revisions: set[int]) -> None:
        def check() -> bool:
            items = self.get(f"/v1/instances?app={app}")["items"]
            eps = self.get(f"/v1/apps/{app}/endpoints")["items"]
            return (len(items) == count and all(i["status"]["ready"] for i in items)
                    and {i["status"]["revision"] for i in items} == revisions
                    and sum(e["status"]["state"] == "ready" and not e["status"]["pending"] for e in eps) == count)
        self.wait(f"{count} instances of {app} ready at revisions {sorted(revisions)}, acknowledged", check, 180)

    # --- acknowledgement -----------------------------------------------------------------------------------
    def registry_generation(self) -> int:
        assert self.db is not None
        return int(self.db.execute("SELECT value FROM counters WHERE name = 'registry'").fetchone()[0])

    def all_acked(self, generation: int) -> bool:
        assert self.db is not None
        rows = self.db.execute("SELECT acked_generation FROM components").fetchall()
        return bool(rows) and all(int(g) >= generation for (g,) in rows)

    def components(self) -> list[str]:
        assert self.db is not None
        return [f"{k}/{n}" for k, n in self.db.execute("SELECT kind, name FROM components ORDER BY kind, name")]

    def measure(self, rule: str, *docs: Item) -> dict[str, float]:
        """Apply `docs`; then, every 10 ms, the same three reads whatever was applied, until all three hold.
        Times are from the apply's answer."""
        began = time.monotonic()
        self.post_apply(*docs)
        answered = time.monotonic()
        target = self.registry_generation()
        seen: dict[str, float] = {"apply": answered - began}
        deadline = answered + 60
        while len(seen) < 4:
            if time.monotonic() > deadline:
                raise BenchFailed(f"not acknowledged within 60 s: {sorted(seen)} of generation {target}")
            now = time.monotonic
            if "inEffect" not in seen and self.get(f"/v1/trafficrules/{rule}")["inEffect"]:
                seen["inEffect"] = now() - answered
            if "gateways" not in seen and all(g["status"]["acknowledgedGeneration"] >= target
                                              for g in self.get("/v1/gateways")["items"]):
                seen["gateways"] = now() - answered
            if "all" not in seen and self.all_acked(target):
                seen["all"] = now() - answered
            time.sleep(0.01)
        return seen


def split_routes(change: int, structure: bool) -> list[Item]:
    """The split route's weights move with every change; with `structure`, a header route comes first."""
    w = 10 + (change * 7) % 80
    routes: list[Item] = [{"name": "split", "to": [{"revision": 1, "weight": 100 - w}, {"revision": 2, "weight": w}]}]
    if structure:
        routes.insert(0, {"name": "probe", "match": {"headers": {"x-probe": {"exact": str(change)}}},
                          "to": [{"revision": 2}]})
    return routes


def part_changes(p: Platform, args: argparse.Namespace) -> None:
    aux = p.get("/v1/apps/aux")
    aux_doc = {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": "aux"},
               "spec": {k: v for k, v in aux["spec"].items()}}
    rule_times: dict[str, list[dict[str, float]]] = {"weight only": [], "structure": []}
    base_times: list[dict[str, float]] = []
    p.post_apply(rule_manifest("bench-churn", split_routes(0, False)))
    p.wait("bench-churn in effect", lambda: p.get("/v1/trafficrules/bench-churn")["inEffect"], 60)
    structure = False
    for change in range(1, args.changes + 1):
        kind = "structure" if change % 2 == 0 else "weight only"
        if kind == "structure":
            structure = not structure   # a route added, next time removed
        rule_times[kind].append(p.measure("bench-churn", rule_manifest("bench-churn", split_routes(change, structure))))
        before = p.registry_generation()
        aux_doc["spec"]["expose"] = [{"host": f"aux-{change % 2}.local", "path": "/"}]
        base_times.append(p.measure("bench-churn", aux_doc))
        if p.registry_generation() <= before:
            raise BenchFailed("the baseline apply did not move the registry generation")
    assert p.api is not None
    p.api.delete("/v1/trafficrules/bench-churn").raise_for_status()
    report_changes(p, rule_times, base_times, args)


def stats_row(label: str, values: list[float]) -> str:
    if not values:
        return f"  {label:<50} -"
    return (f"  {label:<50} {len(values):>4} {ms(percentile(values, 50)):>9} {ms(percentile(values, 90)):>9} "
            f"{ms(percentile(values, 99)):>9} {ms(max(values)):>9}")


def report_changes(p: Platform, rule_times: dict[str, list[dict[str, float]]], base_times: list[dict[str, float]],
                   args: argparse.Namespace) -> None:
    every_rule = [t for ts in rule_times.values() for t in ts]
    print(f"## 2. change -> acknowledged: {len(every_rule)} TrafficRule changes, {len(base_times)} baseline "
          f"applies, interleaved; components: {', '.join(p.components())}; load average {loadavg()}")
    print("ms from the apply's answer (the apply's own round trip on its row); polled every 10 ms\n")
    print(f"  {'':<50} {'n':>4} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}")
    for title, times in (("rule, weight only", rule_times["weight only"]), ("rule, structure", rule_times["structure"]),
                         ("rule, all", every_rule)):
        print(stats_row(f"{title}: inEffect (GET /v1/trafficrules)", [t["inEffect"] for t in times]))
        print(stats_row(f"{title}: every component acked", [t["all"] for t in times]))
        print(stats_row(f"{title}: gateway acked", [t["gateways"] for t in times]))
    print(stats_row("baseline (aux expose): every component acked", [t["all"] for t in base_times]))
    print(stats_row("baseline (aux expose): gateway acked", [t["gateways"] for t in base_times]))
    print(stats_row("apply round trip, rule", [t["apply"] for t in every_rule]))
    print(stats_row("apply round trip, baseline", [t["apply"] for t in base_times]))
    rule_all, base_all = [t["all"] for t in every_rule], [t["all"] for t in base_times]
    print(f"\n  ratio rule / baseline, every component acked: p50 "
          f"{percentile(rule_all, 50) / percentile(base_all, 50):.2f}x, p99 "
          f"{percentile(rule_all, 99) / percentile(base_all, 99):.2f}x\n", flush=True)


def binomial_interval(n: int, p: float, confidence: float = 0.999) -> tuple[int, int]:
    """The central interval of Binomial(n, p) holding `confidence` of its mass (exact, by summing the pmf)."""
    def pmf(k: int) -> float:
        return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + k * math.log(p) + (n - k) * math.log1p(-p))
    masses = [pmf(k) for k in range(n + 1)]
    tail_mass = (1 - confidence) / 2
    low, below = 0, 0.0
    while below + masses[low] < tail_mass:
        below += masses[low]
        low += 1
    high, above = n, 0.0
    while above + masses[high] < tail_mass:
        above += masses[high]
        high -= 1
    return low, high


async def count_calls(port: int, host: str, calls: int, connections: int) -> tuple[Counter[str], Counter[str]]:
    """`calls` GETs through the gateway, back to back on kept-alive connections: revisions and failures."""
    request = request_bytes(host, "/", {})
    revisions: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    left = [calls]

    async def worker() -> None:
        conn = Conn("127.0.0.1", port)
        while left[0] > 0:
            left[0] -= 1
            try:
                status, body, kept = await exchange(conn, request)
                if status == 200:
                    revisions[revision_of(body)] += 1
                else:
                    failures[f"HTTP {status}"] += 1
                if not kept:
                    conn.close()
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                failures[type(exc).__name__] += 1
                conn.close()
        conn.close()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return revisions, failures


def part_weights(p: Platform, args: argparse.Namespace) -> None:
    print(f"## 3. weight accuracy through the gateway (back.local, {args.calls} calls per rule, "
          f"{args.connections} connections)\n")
    for w1, w2 in ((70, 30), (999, 1)):
        p.post_apply(rule_manifest("bench-weights", [{"name": "split", "to": [{"revision": 1, "weight": w1},
                                                                             {"revision": 2, "weight": w2}]}]))
        p.wait("bench-weights in effect", lambda: p.get("/v1/trafficrules/bench-weights")["inEffect"], 60, 0.01)
        began = time.monotonic()
        revisions, failures = asyncio.run(count_calls(p.gateway_port, "back.local", args.calls, args.connections))
        took = time.monotonic() - began
        n = sum(revisions.values())
        share2 = w2 / (w1 + w2)
        low, high = binomial_interval(n, share2)
        print(f"  rule {w1}/{w2}: {n} answered, {sum(failures.values())} failed {dict(failures) or ''} "
              f"in {took:.1f} s")
        for rev, weight in (("1", w1), ("2", w2)):
            expected = weight / (w1 + w2)
            got = revisions[rev] / n if n else 0.0
            print(f"    revision {rev}: {revisions[rev]:>6} = {got * 100:7.3f}%  (weight {expected * 100:.3f}%, "
                  f"deviation {(got - expected) * 100:+.3f} pp)")
        inside = "inside" if low <= revisions["2"] <= high else "OUTSIDE"
        print(f"    revision 2 count {revisions['2']} vs the 99.9% binomial interval for n={n}, p={share2:g}: "
              f"{low}..{high} ({inside})")
        other = {k: v for k, v in revisions.items() if k not in ("1", "2")}
        if other:
            print(f"    other answers: {other}")
    print(flush=True)


def part_platform(args: argparse.Namespace, work: Path) -> None:
    p = Platform(work, args)
    began = time.monotonic()
    p.start()
    try:
        p.cli_apply(app_manifest("back", 4, host="back.local"), app_manifest("front", 2, DEMO_CALL_SERVICE="back"),
                    app_manifest("aux", 1, host="aux-0.local"))
        for app, count in (("back", 4), ("front", 2), ("aux", 1)):
            p.steady(app, count, {1})
        p.cli_apply(app_manifest("back", 4, greeting="v2", host="back.local"))
        p.cli("release", "start", "back")
        p.wait("back's release paused after the beta group",
               lambda: p.get("/v1/apps/back/release")["phase"] == "Paused", 120)
        p.steady("back", 4, {1, 2})
        print(f"(platform up, apps deployed, back at revisions 1 and 2: {time.monotonic() - began:.0f} s)\n",
              flush=True)
        part_changes(p, args)
        part_weights(p, args)
    finally:
        ended = p.stop()
        left = kill_leftovers(work)
        print(f"platform stopped: {ended}; leftover processes: {len(left)}")


def run(args: argparse.Namespace, work: Path) -> None:
    print(f"code {code_version()}; load average {loadavg()}", flush=True)
    began = time.monotonic()
    try:
        asyncio.run(part_hops(args, work))
    finally:
        left = kill_leftovers(work)
        if left:
            raise BenchFailed(f"processes survived part 1: {left}")
    if not args.skip_platform:
        part_platform(args, work)
    print(f"total {time.monotonic() - began:.0f} s; command: .venv/bin/python benchmarks/traffic_rules.py "
          + " ".join(sys.argv[1:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="part 1: per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="part 1: rounds of every variant, interleaved")
    parser.add_argument("--rate", type=float, default=400.0, help="part 1: calls/s, the same for every variant")
    parser.add_argument("--connections", type=int, default=8, help="parts 1 and 3: kept-alive connections")
    parser.add_argument("--changes", type=int, default=50, help="part 2: rule changes (and as many baselines)")
    parser.add_argument("--calls", type=int, default=20_000, help="part 3: calls per rule")
    parser.add_argument("--nodes-per-zone", type=int, default=2, help="parts 2 and 3 (2 zones)")
    parser.add_argument("--skip-platform", action="store_true", help="part 1 only")
    args = parser.parse_args()
    return run_in_workdir("ballast-bench-rules-", lambda work: run(args, work))


if __name__ == "__main__":
    sys.exit(main())
