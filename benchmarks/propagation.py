#!/usr/bin/env python3
"""Configuration propagation: from a registry change committed to every traffic component having applied and
acknowledged it, with the time broken down into control plane, wire, queueing, apply and acknowledgement.

Starts `ballast up` (2 zones x 2 nodes on 127.0.182.2-5, and the gateway: five traffic components) with apps of
100 instances in all, each with its HAProxy sidecar: `front` (exposed as front.local), `back` with a TrafficRule
splitting it by cell and an IsolationGroup of one instance, and `probe` (4 instances, a fast health check). Then
N registry changes, interleaved, one at a time (the next once every component acknowledged the last):

  endpoint draining   a probe instance's app is SIGSTOPped (its sidecar keeps running): its health check fails,
  endpoint ready      the registry controller drains its endpoint; SIGCONT, and it is made ready again. Nothing
                      restarts: the app hangs and recovers, which is the least disruptive real trigger there is
                      (no API drains a single endpoint; a new revision or a node drain restarts instances).
  rule weight         `POST /v1/apply` of the rule with other weights only (HAProxy `set map`, no reload).
  group               `POST /v1/apply` of the group with `stress` flipped (what components route by changes).

Each change's registry generation is read from the store (the endpoint's, the rule's or the group's
`generation`). The times come from log lines, wall clock on one machine:

  registry-commit  (server, store/engine.py)      the write that moved the registry to generation G committed
  registry-answer  (server, api/routes_registry)  a component's long-poll was answered with generation G'
  registry-apply   (each agent and the gateway,    received (wall) the snapshot G' arrived, began (wall) the
                    dataplane/component.py)        apply began, apply= its duration (every sidecar of the node,
                                                   or the gateway's HAProxy), ack= the acknowledgement POST's
                                                   round trip; acked= the generation acknowledged, ok= recorded

Per change and component, from the first apply that acknowledged a generation >= G:
  control plane = answered - committed; wire = received - answered (the answer's serialization, HTTP, parsing);
  queued = began - received (the component busy with an earlier apply); apply; ack. They add up to the
  component's end to end; the change's end to end is its slowest component's. Beside it, two cross-checks: the
  moment this script's 20 ms poll of the store's `components` table saw every component at >= G, and for
  endpoint changes the control plane's own `ack-latency` line (from its write's start to the registry
  controller's pass that saw the last acknowledgement).

The changes run once without load, then again under a constant background load (`ballast.loadgen`: kept-alive
connections back to back through the gateway to front.local, and east-west through a front sidecar to back).

A drained endpoint is always made ready again, so a phase may run one change more than --changes.

    .venv/bin/python benchmarks/propagation.py [--changes 60] [--instances 100] [--no-load] [--per-change]
                                               [--load-connections 8]
                                               [--store postgresql://USER:PASS@HOST:PORT/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from _harness import BenchFailed, code_version, exit_on_sigterm, loadavg, percentile  # noqa: E402
from traffic_rules import app_manifest, ms, rule_manifest, stats_row  # noqa: E402

import tests.conftest  # noqa: E402
from ballast.cli.packaging import stage_demo  # noqa: E402
from ballast.loadgen import BackgroundLoad, Load, Target  # noqa: E402
from ballast.store.engine import normalize_url  # noqa: E402
from tests.e2e.conftest import Platform, eventually, postgres_database, start_platform  # noqa: E402

FIRST_NODE_IP = "127.0.182.2"
PROBES = 4                      # instances of `probe`, drained and made ready in turn
RULE, GROUP = "prop-weights", "back-unit"
POLL = 0.02                     # the store's components table, while waiting for a change's acknowledgements
KINDS = ("endpoint draining", "rule weight", "endpoint ready", "group")
PARTS = ("control", "wire", "queued", "apply", "ack")
PART_LABELS = {"control": "control plane (commit -> long-poll answered)",
               "wire": "wire (answer serialized, sent, parsed)",
               "queued": "queued (received -> apply began)",
               "apply": "apply (all sidecars of a node / gateway)",
               "ack": "ack (POST -> answered)"}
Item = dict[str, Any]

COMMIT = re.compile(r"registry-commit generation=(\d+) at=([\d.]+)")
ANSWER = re.compile(r"registry-answer to=(\S+) known=\S+ generation=(\d+) at=([\d.]+)")
APPLY = re.compile(r"registry-apply (node|gateway) (\S+) generation=(\d+) acked=(\d+) ok=(yes|no) received=([\d.]+) "
                   r"began=([\d.]+) apply=([\d.]+) ack=([\d.]+)")
ACK_LATENCY = re.compile(r"ack-latency endpoint=\S+ state=\S+ generation=(\d+) seconds=([\d.]+)")


# --- what the logs say ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApplyLine:
    component: str      # node/NAME or gateway/NAME, as the server names its principal
    generation: int     # of the snapshot applied
    acked: int
    ok: bool
    received: float
    began: float
    apply: float
    ack: float


@dataclass
class Logs:
    commits: dict[int, float] = field(default_factory=dict)
    answers: dict[tuple[str, int], float] = field(default_factory=dict)    # first answer of G to a component
    applies: dict[str, list[ApplyLine]] = field(default_factory=lambda: defaultdict(list))
    ack_latency: dict[int, float] = field(default_factory=dict)           # generation -> seconds (the slowest)

    @classmethod
    def read(cls, logs_dir: Path) -> "Logs":
        out = cls()
        for path in sorted(logs_dir.glob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if m := COMMIT.search(line):
                    out.commits[int(m[1])] = float(m[2])
                elif m := ANSWER.search(line):
                    out.answers.setdefault((m[1], int(m[2])), float(m[3]))
                elif m := APPLY.search(line):
                    out.applies[f"{m[1]}/{m[2]}"].append(ApplyLine(
                        f"{m[1]}/{m[2]}", int(m[3]), int(m[4]), m[5] == "yes", *map(float, m.groups()[5:])))
                elif m := ACK_LATENCY.search(line):
                    out.ack_latency[int(m[1])] = max(out.ack_latency.get(int(m[1]), 0.0), float(m[2]))
        for lines in out.applies.values():
            lines.sort(key=lambda a: a.began)
        return out

    def parts(self, component: str, generation: int) -> dict[str, float] | None:
        """Seconds of each part for one component, from the first apply that acknowledged >= generation."""
        committed = self.commits.get(generation)
        done = next((a for a in self.applies.get(component, ()) if a.ok and a.acked >= generation), None)
        if committed is None or done is None:
            return None
        answered = self.answers.get((component, done.generation))
        out = {"queued": done.began - done.received, "apply": done.apply, "ack": done.ack,
               "total": done.began + done.apply + done.ack - committed}
        if answered is not None:
            out.update(control=answered - committed, wire=done.received - answered)
        return out


# --- one change ---------------------------------------------------------------------------------------------
@dataclass
class Change:
    kind: str
    generation: int
    polled: float = 0.0                   # wall time the poll saw every component at >= generation
    parts: dict[str, dict[str, float]] = field(default_factory=dict)   # component -> part -> seconds
    total: float = 0.0                    # the slowest component's end to end (logs)
    critical: str = ""                    # that component
    polled_total: float = 0.0
    server_ack_latency: float | None = None


class Bench:
    def __init__(self, platform: Platform, store_url: str, args: argparse.Namespace) -> None:
        self.platform, self.args = platform, args
        cfg = yaml.safe_load((platform.data_dir / "client.yaml").read_text())
        self.api = httpx.AsyncClient(base_url=platform.server, headers={"Authorization": f"Bearer {cfg['token']}"},
                                     timeout=30)
        self.db: AsyncEngine = create_async_engine(read_only(store_url))
        self.stopped: set[int] = set()    # app pids this script SIGSTOPped (always SIGCONTed again)
        self.weights = 0
        self.stress = False
        self.probe_turn = 0
        self.drained, self.drained_pid, self.drained_at = "", 0, 0   # the probe instance drained last

    async def close(self) -> None:
        for pid in self.stopped:
            os.kill(pid, signal.SIGCONT)
        await self.api.aclose()
        await self.db.dispose()

    async def sql(self, query: str, **params: Any) -> list[Any]:
        async with self.db.connect() as conn:
            return list((await conn.execute(text(query), params)).all())

    async def apply(self, *docs: Item) -> None:
        r = await self.api.post("/v1/apply", json={"items": list(docs)})
        if r.status_code != 200:
            raise BenchFailed(f"apply: {r.status_code} {r.text[:300]}")

    async def until(self, what: str, check: Any, timeout: float = 60.0, every: float = POLL) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (found := await check()) is not None:
                return found
            await asyncio.sleep(every)
        raise BenchFailed(f"timed out after {timeout:g}s waiting for {what}")

    # the triggers: each returns the registry generation its change produced
    async def rule_weight(self) -> int:
        self.weights += 1
        w = 10 + (self.weights * 7) % 80
        await self.apply(rule_manifest(RULE, split(w)))
        return int((await self.sql("SELECT generation FROM traffic_rules WHERE kind = 'TrafficRule' AND name = :n",
                                   n=RULE))[0][0])

    async def group(self) -> int:
        self.stress = not self.stress
        await self.apply(group_manifest(self.stress))
        return int((await self.sql("SELECT generation FROM isolation_groups WHERE name = :n", n=GROUP))[0][0])

    async def endpoint_state(self, instance: str, state: str, after: int) -> int:
        async def check() -> int | None:
            rows = await self.sql("SELECT state, generation FROM endpoints WHERE id = :i", i=instance)
            return int(rows[0][1]) if rows and rows[0][0] == state and rows[0][1] > after else None
        return int(await self.until(f"endpoint {instance} {state}", check, 60, 0.05))

    async def draining(self) -> int:
        probes = sorted((i["metadata"]["name"], i["status"]["pid"])
                        for i in (await self.api.get("/v1/instances?app=probe")).json()["items"])
        self.probe_turn += 1
        self.drained, pid = probes[self.probe_turn % len(probes)]
        before = int((await self.sql("SELECT generation FROM endpoints WHERE id = :i", i=self.drained))[0][0])
        os.kill(pid, signal.SIGSTOP)   # the app hangs; its health check fails; the controller drains it
        self.stopped.add(pid)
        self.drained_pid = pid
        self.drained_at = await self.endpoint_state(self.drained, "draining", before)
        return self.drained_at

    async def ready(self) -> int:
        os.kill(self.drained_pid, signal.SIGCONT)
        self.stopped.discard(self.drained_pid)
        return await self.endpoint_state(self.drained, "ready", self.drained_at)

    async def all_acked(self, generation: int) -> float:
        async def check() -> float | None:
            rows = await self.sql("SELECT acked_generation FROM components")
            return time.time() if rows and all(int(g) >= generation for (g,) in rows) else None
        return float(await self.until(f"every component acknowledging generation {generation}", check))

    async def run(self, changes: int) -> list[Change]:
        out: list[Change] = []
        trigger = {"endpoint draining": self.draining, "rule weight": self.rule_weight,
                   "endpoint ready": self.ready, "group": self.group}
        k = 0
        while k < changes or out[-1].kind == "endpoint draining" or KINDS[k % 4] == "endpoint ready":
            kind = KINDS[k % 4]
            k += 1
            generation = await trigger[kind]()
            out.append(Change(kind, generation, polled=await self.all_acked(generation)))
            await asyncio.sleep(0.2)   # let the last acknowledgement's controller pass go by
        return out

    async def components(self) -> list[str]:
        return [f"{'node' if k == 'mesh' else k}/{n}"
                for k, n in await self.sql("SELECT kind, name FROM components ORDER BY kind, name")]


def read_only(url: str) -> str:
    """The store, read-only where the driver allows it (SQLite); this script only reads."""
    async_url = normalize_url(url)
    if async_url.startswith("sqlite+aiosqlite:///"):
        return f"sqlite+aiosqlite:///file:{async_url.removeprefix('sqlite+aiosqlite:///')}?mode=ro&uri=true"
    return async_url


def split(w: int) -> list[Item]:
    return [{"name": "split", "to": [{"cells": ["cell-a"], "weight": 100 - w}, {"cells": ["cell-b"], "weight": w}]}]


def group_manifest(stress: bool) -> Item:
    return {"apiVersion": "ballast.io/v1alpha1", "kind": "IsolationGroup", "metadata": {"name": GROUP},
            "spec": {"app": "back", "code": "unit", "replicas": 1, "stress": stress}}


def resolve(changes: list[Change], logs: Logs) -> None:
    for c in changes:
        committed = logs.commits.get(c.generation)
        if committed is None:
            raise BenchFailed(f"no registry-commit line for generation {c.generation} ({c.kind})")
        for comp in logs.applies:
            found = logs.parts(comp, c.generation)
            if found is None:
                raise BenchFailed(f"{comp}: no acknowledged apply of generation >= {c.generation} in its log")
            c.parts[comp] = found
        c.critical = max(c.parts, key=lambda comp: c.parts[comp]["total"])
        c.total = c.parts[c.critical]["total"]
        c.polled_total = c.polled - committed
        c.server_ack_latency = logs.ack_latency.get(c.generation)


# --- the platform -------------------------------------------------------------------------------------------
def deploy(platform: Platform, instances: int) -> None:
    apps_dir = stage_demo(platform.root / "apps")
    rest = instances - PROBES - 1   # the group's one instance
    if rest < 4:
        raise BenchFailed(f"--instances {instances}: at least {PROBES + 5} (probe {PROBES}, the group 1, front, back)")
    probe = app_manifest("probe", PROBES)
    # Fast to notice a hung app and its recovery: that is the trigger, not what is measured.
    probe["spec"]["template"]["healthCheck"] = {"path": "/healthz", "periodSeconds": 0.5, "timeoutSeconds": 1,
                                                "failureThreshold": 1}
    docs = [app_manifest("front", rest // 2, host="front.local"), app_manifest("back", rest - rest // 2), probe]
    (apps_dir / "apps.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    platform.cli("apply", "-f", str(apps_dir / "apps.yaml"), timeout=120)
    (apps_dir / "back-traffic.yaml").write_text(yaml.safe_dump_all([group_manifest(False), rule_manifest(RULE, split(50))],
                                                                   sort_keys=False))
    platform.cli("apply", "-f", str(apps_dir / "back-traffic.yaml"), timeout=120)

    def steady() -> None:
        items = platform.api("/v1/instances")["items"]
        ready = sum(bool(i["status"]["ready"]) for i in items)
        assert len(items) == instances and ready == instances, f"{ready}/{len(items)} of {instances} ready"
        for app in ("front", "back", "probe"):
            pending = [e for e in platform.api(f"/v1/apps/{app}/endpoints")["items"]
                       if e["status"]["state"] != "ready" or e["status"]["pending"]]
            assert not pending, f"{app}: {len(pending)} endpoints not ready and acknowledged"
    eventually(steady, f"{instances} instances ready, their endpoints acknowledged", timeout=600)


def background_load(platform: Platform, connections: int) -> BackgroundLoad:
    mesh = sorted(i["status"]["meshUrl"] for i in platform.api("/v1/instances?app=front")["items"])[0]
    ip, port = mesh.removeprefix("http://").split(":")
    return BackgroundLoad([Target("gateway", "127.0.0.1", platform.gateway_port, "front.local", ("/",), connections),
                           Target("east-west", ip, int(port), "back", ("/",), max(1, connections // 2))])


# --- the report ---------------------------------------------------------------------------------------------
def summary(values: list[float]) -> tuple[float, float, float, float]:
    return percentile(values, 50), percentile(values, 90), percentile(values, 99), max(values)


def report_phase(title: str, changes: list[Change], per_change: bool) -> None:
    print(f"\n## {title}")
    print("ms from the registry write's commit; parts of the slowest component (the one that decided the end to end)"
          ", then of every component\n")
    print(f"  {'':<50} {'n':>4} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}")
    for kind in (*KINDS, "all"):
        chosen = [c for c in changes if kind in ("all", c.kind)]
        if not chosen:
            continue
        print(f"  {kind}")
        print(stats_row("  end to end: every component acked (logs)", [c.total for c in chosen]))
        print(stats_row("  cross-check: the store polled every 20 ms", [c.polled_total for c in chosen]))
        if kind.startswith("endpoint"):
            print(stats_row("  cross-check: server ack-latency (from tx start)",
                            [c.server_ack_latency for c in chosen if c.server_ack_latency is not None]))
        for part in PARTS:
            print(stats_row(f"    {PART_LABELS[part]}", [c.parts[c.critical][part] for c in chosen
                                                      if part in c.parts[c.critical]]))
        if kind == "all":
            print("  every component of every change")
            for part in (*PARTS, "total"):
                label = PART_LABELS.get(part, "end to end, per component")
                print(stats_row(f"    {label}", [p[part] for c in chosen for p in c.parts.values() if part in p]))
    print("\n  per component, all changes      end to end p50 / p99       apply p50 / p99     slowest in")
    for comp in sorted(changes[0].parts):
        totals = [c.parts[comp]["total"] for c in changes]
        applies = [c.parts[comp]["apply"] for c in changes]
        slowest = sum(c.critical == comp for c in changes)
        print(f"    {comp:<28} {ms(percentile(totals, 50)):>9} / {ms(percentile(totals, 99)):>9}   "
              f"{ms(percentile(applies, 50)):>8} / {ms(percentile(applies, 99)):>8}   {slowest:>3} of {len(changes)}")
    if per_change:
        print(f"\n  per change (ms): {'generation':>10}  {'kind':<18} {'total':>8}  slowest component  "
              + " ".join(f"{p:>8}" for p in PARTS))
        for c in changes:
            parts = c.parts[c.critical]
            print(f"  {'':<16} {c.generation:>10}  {c.kind:<18} {ms(c.total):>8}  {c.critical:<17}  "
                  + " ".join(f"{ms(parts[p]) if p in parts else '-':>8}" for p in PARTS))
    print(flush=True)


def report_ratio(quiet: list[Change], loaded: list[Change]) -> None:
    print("\n## under load / no load, same run (ratio of the figures above)\n")
    print(f"  {'':<58} {'p50':>7} {'p99':>7}")
    for kind in (*KINDS, "all"):
        q = [c for c in quiet if kind in ("all", c.kind)]
        loaded_k = [c for c in loaded if kind in ("all", c.kind)]
        if not q or not loaded_k:
            continue
        rows = [("end to end", [c.total for c in q], [c.total for c in loaded_k])]
        rows += [(PART_LABELS[p], [c.parts[c.critical].get(p, 0.0) for c in q],
                  [c.parts[c.critical].get(p, 0.0) for c in loaded_k]) for p in PARTS]
        print(f"  {kind}")
        for label, a, b in rows:
            print(f"    {label:<56} {ratio(b, a, 50):>7} {ratio(b, a, 99):>7}")


def ratio(loaded: list[float], quiet: list[float], q: float) -> str:
    base = percentile(quiet, q)
    return f"{percentile(loaded, q) / base:.2f}x" if base > 0 else "-"


def where_the_time_goes(phases: list[tuple[str, list[Change]]]) -> str:
    """One paragraph, computed: per phase the end-to-end p50/p99 and, over the changes at or above the p90, which
    part of the slowest component took the time."""
    sentences = []
    for title, changes in phases:
        totals = [c.total for c in changes]
        p90 = percentile(totals, 90)
        tail = [c for c in changes if c.total >= p90]
        spent = {p: sum(c.parts[c.critical].get(p, 0.0) for c in tail) for p in PARTS}
        whole = sum(spent.values()) or 1.0
        ranked = sorted(spent, key=lambda p: -spent[p])
        p99s = {p: percentile([c.parts[c.critical].get(p, 0.0) for c in changes], 99) for p in PARTS}
        worst_kind = max({c.kind for c in changes}, key=lambda k: percentile([c.total for c in changes if c.kind == k], 99))
        slowest = Counter(c.critical for c in changes)
        most = max(slowest.values())
        critical = " and ".join(sorted(comp for comp, n in slowest.items() if n == most))
        sentences.append(
            f"{title}: end to end p50 {ms(percentile(totals, 50))} ms, p99 {ms(percentile(totals, 99))} ms "
            f"(slowest kind at p99: {worst_kind}); in the changes at or above the p90 ({len(tail)}), "
            + ", ".join(f"{p} {100 * spent[p] / whole:.0f}%" for p in ranked)
            + f" of the slowest component's time; the largest part at p99 is {max(p99s, key=lambda p: p99s[p])} "
            f"({ms(max(p99s.values()))} ms); the slowest component was most often {critical} ({most} of "
            f"{len(changes)})")
    return "Where the time goes. " + ". ".join(sentences) + "."


# --- the run ------------------------------------------------------------------------------------------------
def databases(store: str | None) -> Iterator[str | None]:
    """None (SQLite in the data dir), or a fresh database on the PostgreSQL server of `store`, dropped after."""
    if store is None:
        yield None
        return
    tests.conftest.PG_URL = store   # postgres_database() makes its database on the server of this URL
    yield from postgres_database()


def run(args: argparse.Namespace, work: Path) -> None:
    began = time.monotonic()
    print(f"code {code_version()}; load average {loadavg()}", flush=True)
    dbs = databases(args.store)
    store = next(dbs)
    platforms = start_platform(work, FIRST_NODE_IP, store=store,
                               args=("--node-cpu", "64", "--node-memory", "64Gi"))
    platform = next(platforms)
    try:
        print(f"ballast up: {platform.data_dir}, store {'PostgreSQL' if store else 'SQLite'}; "
              f"up after {time.monotonic() - began:.0f} s", flush=True)
        deploy(platform, args.instances)
        print(f"{args.instances} instances ready and acknowledged after {time.monotonic() - began:.0f} s", flush=True)
        store_url = store or f"sqlite:///{platform.data_dir / 'ballast.db'}"
        phases: list[tuple[str, list[Change]]] = []
        bench = Bench(platform, store_url, args)
        loop = asyncio.new_event_loop()
        try:
            comps = loop.run_until_complete(bench.components())
            print(f"components: {', '.join(comps)}", flush=True)
            before = loadavg()
            quiet = loop.run_until_complete(bench.run(args.changes))
            resolve(quiet, Logs.read(platform.data_dir / "logs"))
            phases.append((f"no load ({len(quiet)} changes; load average {before} -> {loadavg()})", quiet))
            report_phase(phases[-1][0], quiet, args.per_change)
            if not args.no_load:
                with background_load(platform, args.load_connections) as load:
                    time.sleep(2)   # the load's connections open and settle first
                    before = loadavg()
                    loaded = loop.run_until_complete(bench.run(args.changes))
                    describe = load_line(load)
                resolve(loaded, Logs.read(platform.data_dir / "logs"))
                phases.append((f"under load ({len(loaded)} changes; {describe}; load average {before} -> "
                               f"{loadavg()})", loaded))
                report_phase(phases[-1][0], loaded, args.per_change)
                report_ratio(quiet, loaded)
        finally:
            loop.run_until_complete(bench.close())
            loop.close()
        print("\n" + where_the_time_goes([(t.split(" (")[0], c) for t, c in phases]), flush=True)
    finally:
        for gen in (platforms, dbs):
            try:
                next(gen)
            except StopIteration:
                pass
        left = platform.leftovers()
        print(f"\nplatform stopped (exit {platform.proc.returncode if platform.proc else None}); "
              f"leftover processes: {len(left)}")
    print(f"total {time.monotonic() - began:.0f} s; command: .venv/bin/python benchmarks/propagation.py "
          + " ".join(sys.argv[1:]))


def load_line(load: Load) -> str:
    seconds = time.monotonic() - load.started
    failures = ", ".join(f"{n} x {kind}" for kind, n in load.failures().most_common(3))
    return (f"load: {', '.join(f'{t.name} {t.connections} conn' for t in load.targets)}, {load.requests} requests "
            f"({load.requests / seconds:.0f}/s), {load.failed} failed{f' ({failures})' if failures else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=60, help="registry changes per phase (four kinds in turn)")
    parser.add_argument("--instances", type=int, default=100, help="instances in all, each with its sidecar")
    parser.add_argument("--no-load", action="store_true", help="skip the phase under load")
    parser.add_argument("--load-connections", type=int, default=8,
                        help="through the gateway (half as many east-west)")
    parser.add_argument("--per-change", action="store_true", help="also one line per change")
    parser.add_argument("--store", help="a PostgreSQL server URL: the platform gets a fresh database on it")
    args = parser.parse_args()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="ballast-bench-prop-"))
    work.chmod(0o711)
    try:
        run(args, work)
    except (BenchFailed, AssertionError) as exc:   # tests.e2e's waits and leftover checks raise AssertionError
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
