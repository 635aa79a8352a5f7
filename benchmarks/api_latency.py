#!/usr/bin/env python3
"""Read latency of the instance list at 10,000 instances: `GET /v1/instances`, `GET /v1/instances?app=X`, and
pages of 500 (`?limit=500`, the first and a middle one through `continue`, with and without `cell=` filtering).

Builds a store (a SQLite file in a temp dir, or a PostgreSQL database given
with --store) holding APPS apps x PER_APP instances (default 10 x 1,000), with
consistent cells, nodes, apps and revisions: the admin is bootstrapped and the
cells and apps are applied through Ballast's own services, the nodes are
registered through the registry, and the instance rows are inserted directly
(one transaction per app). A registry pass registers their endpoints, and
every node's mesh is marked as having acknowledged that generation, as its
agent would have. A scheduler pass over the store must then decide nothing,
which checks the data is consistent.

It then starts the real control plane as a subprocess (`ballast server --store
URL --listen 127.0.0.1:PORT --bootstrap-token-file F`) and, after warm-up,
sends sequential requests over one keep-alive httpx connection, printing
p50/p99/mean/min/max latency (time to the full response body), response size,
and the server's CPU time per request. For context it also times, in-process
against the same store, the pieces of the list handler (SQL query, building
the objects, the whole request through the ASGI app without the network) and
one scheduler pass, which the server repeats every 2 s even when idle.
With --heartbeats, one thread per node meanwhile posts that node's status
report every 2 s, as its agent would in steady state (nothing changes).

Run:  .venv/bin/python benchmarks/api_latency.py [--apps 10 --per-app 1000 --requests 100]
      .venv/bin/python benchmarks/api_latency.py --store postgresql://USER:PW@HOST:5432/NEWDB --create-db
      (--create-db creates NEWDB first and drops it at the end; without it the database must be empty)
      add --heartbeats for steady-state agent traffic; --apps/--per-app change the shape (e.g. 100 x 100)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import inspect
import os
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import httpx
import yaml
from sqlalchemy import insert, select, update
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (BenchFailed, Child, code_version, cpu_seconds, exit_on_sigterm, free_port, kill_leftovers, loadavg,  # noqa: E402
                      machine_busy_seconds, percentile, tail)

import ballast  # noqa: E402
from ballast.api import objects  # noqa: E402
from ballast.api.app import create_app  # noqa: E402
from ballast.controllers import endpoints as endpoints_controller  # noqa: E402
from ballast.controllers import releases as releases_controller  # noqa: E402
from ballast.controllers import scheduler  # noqa: E402
from ballast.core.manifests import parse_documents  # noqa: E402
from ballast.services import apply as apply_service  # noqa: E402
from ballast.services import instances as instances_service  # noqa: E402
from ballast.services import registry  # noqa: E402
from ballast.services.access import bootstrap_admin  # noqa: E402
from ballast.store.engine import Store  # noqa: E402
from ballast.services.endpoints import REGISTRY_COUNTER  # noqa: E402
from ballast.store.schema import apps, components, counters, endpoints, instances  # noqa: E402
from ballast.wire.reports import NodeRegistration  # noqa: E402

DEMO_MANIFEST = Path(ballast.__file__).resolve().parent / "demo" / "shop.yaml"
CELLS = {"cell-a": "zone-a", "cell-b": "zone-b"}
PAGE = 500   # instances per page in the paged measurements
NODES = [("node-a1", "cell-a", "127.0.31.2"), ("node-a2", "cell-a", "127.0.31.3"),
         ("node-b1", "cell-b", "127.0.31.4"), ("node-b2", "cell-b", "127.0.31.5")]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="store URL (default: a SQLite file in a temp dir); postgresql://... allowed")
    p.add_argument("--create-db", action="store_true",
                   help="PostgreSQL only: create the database named in --store first and drop it at the end")
    p.add_argument("--apps", type=int, default=10, help="apps (default 10)")
    p.add_argument("--per-app", type=int, default=1000, help="instances per app (default 1000)")
    p.add_argument("--requests", type=int, default=100, help="measured requests per endpoint (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured requests per endpoint first (default 5)")
    p.add_argument("--idle-window", type=float, default=10.0,
                   help="seconds to watch the server's CPU while it gets no requests (default 10)")
    p.add_argument("--heartbeats", action="store_true",
                   help="meanwhile, post each node's status report every 2 s as its agent would (unchanged "
                        "instances, so no row changes); shows the cost of steady-state agent traffic")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds in total")
    args = p.parse_args()
    if args.create_db and not (args.store or "").startswith("postgres"):
        p.error("--create-db needs --store postgresql://.../DBNAME")
    if args.apps < 1 or args.per_app < 2:
        p.error("need at least 1 app with 2 instances")
    return args


# --- the store ---------------------------------------------------------------------------
async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg  # the store's own PostgreSQL driver

    u = make_url(url)
    conn = await asyncpg.connect(user=u.username, password=u.password, host=u.host or "127.0.0.1",
                                 port=u.port or 5432, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _db_name(url: str) -> str:
    name = make_url(url).database or ""
    if not name.replace("_", "").isalnum():
        raise BenchFailed(f"--create-db: database name {name!r} must be letters, digits and underscores")
    return name


def _documents(n_apps: int, per_app: int) -> list[dict[str, Any]]:
    shop = yaml.safe_load(DEMO_MANIFEST.read_text())
    shop["spec"]["template"].pop("artifact", None)  # no agent runs here; nothing is fetched
    shop["spec"].pop("expose", None)                # one host routes to one app: the copies are not exposed
    docs: list[dict[str, Any]] = [{"apiVersion": "ballast.io/v1alpha1", "kind": "Cell", "metadata": {"name": c},
                                   "spec": {"zone": z}} for c, z in CELLS.items()]
    for a in range(n_apps):
        doc = copy.deepcopy(shop)
        doc["metadata"]["name"] = f"app-{a:02d}"
        doc["spec"]["cells"] = {"cell-a": per_app // 2, "cell-b": per_app - per_app // 2}
        docs.append(doc)
    return docs


async def build_store(url: str, n_apps: int, per_app: int) -> tuple[str, dict[str, float]]:
    """Fill an empty store; return the admin token and in-process timings (seconds)."""
    store = await Store.open(url)
    timings: dict[str, float] = {}
    try:
        token = await bootstrap_admin(store)
        if token is None:
            raise BenchFailed(f"the store {make_url(url).render_as_string()} is not empty (it already has users); "
                              "give a new database, or --create-db")
        manifests = parse_documents(_documents(n_apps, per_app))
        await apply_service.apply(store, manifests, actor="admin", authorize=lambda action, app: None)
        async with store.write() as tx:
            for name, cell, ip in NODES:
                await registry.register_node(tx, name, NodeRegistration(cell=cell, ip=ip, cpu_millis=64_000,
                                                                        memory_bytes=64 * 2**30,
                                                                        agent_version="bench"), "admin")
        started = time.perf_counter()
        async with store.read() as conn:
            app_rows = (await conn.execute(select(apps.c.name, apps.c.deployed_revision, apps.c.spec)
                                           .order_by(apps.c.name))).all()
        for app_row in app_rows:
            async with store.write() as tx:
                rows: list[dict[str, Any]] = []
                for cell, count in app_row.spec["cells"].items():
                    cell_nodes = [n for n in NODES if n[1] == cell]
                    for i in range(count):
                        node, _, ip = cell_nodes[i % len(cell_nodes)]
                        seq = len(rows)
                        rows.append(dict(id=f"{app_row.name}-{seq:06d}", app=app_row.name,
                                         revision=app_row.deployed_revision, node=node, cell=cell, zone=CELLS[cell],
                                         ip=ip, port=20000 + seq % 10000, desired="running", phase="Running",
                                         granted_revision=app_row.deployed_revision, granted_desired="running",
                                         mesh_port=30000 + seq % 10000,
                                         ready=True, restarts=0, pid=100000 + seq, message="",
                                         created_seq=tx.rv * 10_000 + seq, desired_version=tx.rv,
                                         running_revision=app_row.deployed_revision, replaces=None, ordinal=None,
                                         changed_at=tx.now, created_at=tx.now, updated_at=tx.now,
                                         resource_version=tx.rv))
                await tx.conn.execute(insert(instances), rows)
        timings["insert"] = time.perf_counter() - started
        # The registry's endpoints, acknowledged by every node's mesh as its agent would have: a server started on
        # this store finds nothing to do, and its idle figures are those of a settled platform.
        await endpoints_controller.reconcile_once(store)
        async with store.write() as tx:
            generation = (await tx.conn.execute(select(counters.c.value).where(
                counters.c.name == REGISTRY_COUNTER))).scalar_one()
            await tx.conn.execute(update(components).values(acked_generation=generation))
        async with store.read() as conn:
            registered = len((await conn.execute(select(endpoints.c.id))).all())
        if registered != n_apps * per_app:
            raise BenchFailed(f"the registry pass registered {registered} endpoints, expected {n_apps * per_app}")
        timings.update(await in_process_timings(store, token, app_rows[0].name))
    finally:
        await store.close()
    return token, timings


async def _median_time(n: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Median wall time of n runs of fn (awaited if it returns an awaitable) and the last result."""
    times, result = [], None
    for _ in range(n):
        t = time.perf_counter()
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


async def in_process_timings(store: Store, token: str, one_app: str) -> dict[str, float]:
    """Where a list request spends its time, without the network: same store, same handler code."""
    out: dict[str, float] = {}
    # The first pass records the scheduler's status for each app (as it would have after placing them);
    # neither it nor the later ones may create or retire anything.
    for _ in range(2):
        changes = await scheduler.reconcile_once(store)
        if changes:
            raise BenchFailed(f"the built store is inconsistent: a scheduler pass wanted {changes} change(s)")
    out["scheduler pass"], changes = await _median_time(3, lambda: scheduler.reconcile_once(store))
    if changes:
        raise BenchFailed(f"the built store is inconsistent: a scheduler pass wanted {changes} change(s)")
    out["releases pass"], _ = await _median_time(3, lambda: releases_controller.reconcile_once(store))

    async def query(app: str | None) -> list[Any]:
        async with store.read() as conn:   # what the route calls: the service's frozen records
            return await instances_service.list_instances(conn, store.clock(), app=app)

    asgi = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(store)), base_url="http://in-process",
                             headers={"Authorization": f"Bearer {token}"})
    async with asgi:
        for label, app in (("all", None), ("app", one_app)):
            out[f"{label}: SQL query + fetch rows + records"], rows = await _median_time(5, lambda: query(app))
            out[f"{label}: rows -> API objects"], items = await _median_time(
                5, lambda: [objects.instance(r) for r in rows])
            out[f"{label}: json.dumps of the objects"], _ = await _median_time(5, lambda: json.dumps({"items": items}))
            params = {"app": app} if app else {}
            out[f"{label}: whole request through the ASGI app"], answer = await _median_time(
                5, lambda: asgi.get("/v1/instances", params=params))
            if answer.status_code != 200 or len(answer.json()["items"]) != len(rows):
                raise BenchFailed(f"in-process GET /v1/instances {params}: HTTP {answer.status_code}, "
                                  f"expected {len(rows)} items")
    return out


# --- the server --------------------------------------------------------------------------
def start_server(url: str, workdir: Path, port: int, deadline: float) -> Child:
    server = Child([sys.executable, "-m", "ballast", "server", "--store", url, "--listen", f"127.0.0.1:{port}",
                    "--bootstrap-token-file", str(workdir / "bootstrap-token")], workdir / "server.log")
    server.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as probe:
        while time.monotonic() < deadline:
            if server.exited:
                raise BenchFailed(f"the control plane exited with code {server.proc.returncode}:\n"  # type: ignore[union-attr]
                                  f"{tail(server.log)}")
            try:
                if probe.get("/healthz").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise BenchFailed(f"the control plane did not answer /healthz in time:\n{tail(server.log)}")


def measure(api: httpx.Client, server_pid: int, path: str, params: dict[str, str], expect: int, warmup: int,
            n: int, deadline: float) -> dict[str, float]:
    for _ in range(warmup):
        api.get(path, params=params).raise_for_status()
    latencies, sizes = [], set()
    cpu_before = cpu_seconds(server_pid) or 0.0
    for _ in range(n):
        if time.monotonic() > deadline:
            raise BenchFailed(f"gave up: the time limit ran out while measuring {path} {params}")
        t = time.perf_counter()
        response = api.get(path, params=params)
        latencies.append(time.perf_counter() - t)
        response.raise_for_status()
        sizes.add(len(response.content))
    cpu = ((cpu_seconds(server_pid) or 0.0) - cpu_before) / n
    got = len(response.json()["items"])
    if got != expect:
        raise BenchFailed(f"GET {path} {params} returned {got} items, expected {expect}")
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "mean": statistics.mean(latencies),
            "min": min(latencies), "max": max(latencies), "bytes": max(sizes), "server_cpu": cpu, "items": got}


def page_token(api: httpx.Client, filters: dict[str, str], limit: int, skip: int) -> str:
    """The continue token of the page after the first `skip` pages (walked once, unmeasured)."""
    token = ""
    for _ in range(skip):
        answer = api.get("/v1/instances", params={**filters, "limit": limit, **({"continue": token} if token else {})})
        token = answer.raise_for_status().json()["metadata"].get("continue") or ""
        if not token:
            raise BenchFailed(f"GET /v1/instances {filters} has fewer than {skip + 1} pages of {limit}")
    return token


def measure_pages(api: httpx.Client, server_pid: int, args: argparse.Namespace,
                  deadline: float) -> list[tuple[str, dict[str, float]]]:
    """A page of PAGE instances (the first, and one in the middle reached through `continue`), of all and of one
    cell (a filter the server applies in its query), beside the unpaged lists measured in the same run."""
    total = args.apps * args.per_app
    out = []
    for label, filters, count in (("", {}, total), ("cell=cell-a&", {"cell": "cell-a"}, total // 2)):
        limit = min(PAGE, count)
        middle = max(0, count // limit // 2)
        for where, skip in (("first", 0), (f"page {middle + 1} via continue", middle)):
            token = page_token(api, filters, limit, skip)
            params = {**filters, "limit": str(limit), **({"continue": token} if token else {})}
            out.append((f"GET /v1/instances?{label}limit={limit}, {where}", measure(api, server_pid, "/v1/instances", params, limit,
                                                                   args.warmup, args.requests, deadline)))
    return out


class Heartbeats:
    """Each node's agent, reduced to its steady-state traffic: a status report of all its instances every 2 s.

    One thread and connection per node, as each agent reports on its own; the reports repeat what the store
    already holds, so they change no instance row (only the node's heartbeat time).
    """

    PERIOD = 2.0

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url, self.token = base_url, token
        self.stop = threading.Event()
        self.durations: list[float] = []
        self.failures: list[str] = []
        self.reports: dict[str, list[dict[str, Any]]] = {}
        self.credentials: dict[str, str] = {}
        with self._client(token) as client:
            for name, _, _ in NODES:
                # Each node reports with its own credential, joined with an admin's one-time join token.
                join = client.post("/v1/join-tokens", json={"kind": "node", "name": name}).raise_for_status().json()
                joined = httpx.post(f"{base_url}/v1/join", json={"kind": "node", "name": name}, timeout=60,
                                    headers={"Authorization": f"Bearer {join['token']}"}).raise_for_status().json()
                self.credentials[name] = joined["token"]
                items = client.get("/v1/instances", params={"node": name}).raise_for_status().json()["items"]
                self.reports[name] = [{"id": i["metadata"]["name"], "phase": i["status"]["phase"],
                                       "ready": i["status"]["ready"], "pid": i["status"]["pid"],
                                       "port": i["status"]["port"], "restarts": i["status"]["restarts"],
                                       "message": i["status"]["message"], "revision": i["status"]["revision"]}
                                      for i in items]
        self.threads = [threading.Thread(target=self._agent, args=(name,), name=f"heartbeat {name}", daemon=True)
                        for name in self.reports]

    def _client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def _agent(self, name: str) -> None:
        with self._client(self.credentials[name]) as client:
            while not self.stop.is_set():
                began = time.monotonic()
                answer = client.post(f"/v1/nodes/{name}/status", json={"instances": self.reports[name]})
                self.durations.append(time.monotonic() - began)
                if answer.status_code != 200:
                    self.failures.append(f"{name}: HTTP {answer.status_code} {answer.text[:200]}")
                self.stop.wait(max(0.0, self.PERIOD - (time.monotonic() - began)))

    def __enter__(self) -> "Heartbeats":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def idle_cpu_share(pid: int, seconds: float) -> float:
    """Fraction of one core the process uses while nobody sends it requests (its controllers' own work)."""
    before, t = cpu_seconds(pid) or 0.0, time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    return ((cpu_seconds(pid) or 0.0) - before) / (time.monotonic() - t)


def _noise_counters(server_pid: int) -> tuple[float, float, float]:
    t = os.times()
    return time.monotonic(), machine_busy_seconds(), (cpu_seconds(server_pid) or 0.0) + t.user + t.system


def _other_processes_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Share of the machine's CPU capacity used by anything but the control plane and this benchmark."""
    wall = after[0] - before[0]
    other = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, other) / (wall * (os.cpu_count() or 1))


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def report(args: argparse.Namespace, store_kind: str, timings: dict[str, float],
           results: list[tuple[str, dict[str, float]]], rss: float | None, idle: float, idle_window: float) -> None:
    total = args.apps * args.per_app
    print()
    print(f"API read latency: {total:,} instances ({args.apps} apps x {args.per_app:,}) on {store_kind}, "
          f"{args.requests} sequential requests per endpoint after {args.warmup} warm-up, one keep-alive connection"
          + ("; with simulated agent heartbeats" if args.heartbeats else ""))
    print()
    print(f"  {'request':<60} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'min ms':>8} {'max ms':>8} "
          f"{'items':>7} {'body':>10} {'server CPU/req':>15}")
    if args.heartbeats:
        print("  (server CPU/req here includes its share of the concurrent heartbeats' cost)")
    for label, r in results:
        print(f"  {label:<60} {r['p50'] * 1000:8.1f} {r['p99'] * 1000:8.1f} {r['mean'] * 1000:8.1f} "
              f"{r['min'] * 1000:8.1f} {r['max'] * 1000:8.1f} {int(r['items']):>7,} {r['bytes'] / 1024:8.0f} KiB "
              f"{r['server_cpu'] * 1000:11.1f} ms")
    print(f"  server peak RSS after the run: {rss:.0f} MiB" if rss is not None else "  server peak RSS: unknown")
    quiet = "only the simulated heartbeats" if args.heartbeats else "no requests at all"
    print(f"  server CPU with {quiet} ({idle_window:g} s window): {idle * 100:.0f}% of one core")
    print()
    print("  in-process, same store (median of 3-5 runs, ms):")
    print(f"    inserting the {total:,} instance rows ({args.apps} transactions)  {timings['insert'] * 1000:9.1f}")
    print(f"    one scheduler pass (decides nothing; runs after every write, else every 2 s)  "
          f"{timings['scheduler pass'] * 1000:9.1f}")
    print(f"    one releases-controller pass (no release active; after every write, else every 1 s)  "
          f"{timings['releases pass'] * 1000:9.1f}")
    for key, value in timings.items():
        if ":" in key:
            scope, piece = key.split(": ", 1)
            what = f"GET /v1/instances{'?app=' if scope == 'app' else ''}"
            print(f"    {what:<26} {piece:<40} {value * 1000:9.1f}")


def main() -> int:
    args = parse_args()
    exit_on_sigterm()
    deadline = time.monotonic() + args.timeout
    workdir = Path(tempfile.mkdtemp(prefix="ballast-bench-api-"))
    url = args.store or f"sqlite:///{workdir / 'ballast.db'}"
    store_kind = "PostgreSQL" if url.startswith("postgres") else "SQLite (file, WAL)"
    created_db = False
    server: Child | None = None
    failed: str | None = None
    try:
        print(f"code: {code_version()}; load average: {loadavg()}; store: {make_url(url).render_as_string()}",
              flush=True)
        if args.create_db:
            asyncio.run(_pg_admin(url, f'CREATE DATABASE "{_db_name(url)}"'))
            created_db = True
        token, timings = asyncio.run(build_store(url, args.apps, args.per_app))
        print(f"store built: {args.apps * args.per_app:,} instances; starting the control plane", flush=True)
        port = free_port()
        server = start_server(url, workdir, port, min(deadline, time.monotonic() + 60))
        assert server.proc is not None
        one_app = "app-00"
        heartbeats = Heartbeats(f"http://127.0.0.1:{port}", token) if args.heartbeats else None
        with contextlib.ExitStack() as stack, httpx.Client(base_url=f"http://127.0.0.1:{port}",
                                                           headers={"Authorization": f"Bearer {token}"},
                                                           timeout=60) as api:
            if heartbeats is not None:
                stack.enter_context(heartbeats)
            idle = idle_cpu_share(server.proc.pid, args.idle_window)
            noise_before = _noise_counters(server.proc.pid)
            results = [
                ("GET /v1/instances (all)", measure(api, server.proc.pid, "/v1/instances", {}, args.apps * args.per_app,
                                                     args.warmup, args.requests, deadline)),
                (f"GET /v1/instances?app={one_app}", measure(api, server.proc.pid, "/v1/instances", {"app": one_app},
                                                             args.per_app, args.warmup, args.requests, deadline)),
            ]
            results += measure_pages(api, server.proc.pid, args, deadline)
            noise = _other_processes_share(noise_before, _noise_counters(server.proc.pid))
        rss = peak_rss_mib(server.proc.pid)
        report(args, store_kind, timings, results, rss, idle, args.idle_window)
        print(f"  other processes on this machine used {noise * 100:.0f}% of its CPU capacity during the measured "
              f"requests (the database server counts as other)")
        if heartbeats is not None:
            print(f"  simulated agent heartbeats during the run: {len(heartbeats.durations)} status reports of "
                  f"{args.apps * args.per_app // len(NODES):,} instances each, every {Heartbeats.PERIOD:g} s per node; "
                  f"round trip p50 {percentile(heartbeats.durations, 50) * 1000:.0f} ms, "
                  f"max {max(heartbeats.durations) * 1000:.0f} ms")
            if heartbeats.failures:
                raise BenchFailed(f"{len(heartbeats.failures)} status report(s) failed, e.g. {heartbeats.failures[0]}")
        print(f"  load average at the end: {loadavg()}")
    except BenchFailed as exc:
        failed = str(exc)
    except Exception as exc:  # any other failure: still clean up below, then exit non-zero with the reason
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        if server is not None:
            how = server.stop(signal.SIGTERM, grace=20)
            print(f"control plane: {how}")
            if "KILLED" in how:
                failed = "; ".join(filter(None, [failed, f"control plane {how}"]))
        left = kill_leftovers(workdir)
        if left:
            failed = "; ".join(filter(None, [failed, f"{len(left)} process(es) left running (now killed): "
                                             + ", ".join(f"pid {p}: {c[:100]}" for p, c in left)]))
        if created_db:
            try:
                asyncio.run(_pg_admin(url, f'DROP DATABASE IF EXISTS "{_db_name(url)}" WITH (FORCE)'))
                print(f"dropped database {_db_name(url)}")
            except Exception as exc:  # report, but keep the figures
                failed = "; ".join(filter(None, [failed, f"could not drop database {_db_name(url)}: {exc}"]))
        if failed:
            print(f"work dir kept for inspection: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
