#!/usr/bin/env python3
"""Releases under load with the drain protocol on, and the same releases with it off, side by side.

Starts the real platform (`ballast up`: 2 zones x 2 nodes on 127.0.71.x and a gateway) with three apps
made of the demo app: `front` (10 instances over 2 cells, exposed as front.local, calling `back` through
its sidecar on /call), `back` (10 instances, ordered identities) and `client` (one instance per cell, never
released; its sidecars carry the east-west load). Both front and back use the demo's realistic latency
(a fifth of the requests take 100-500 ms). A load generator keeps keep-alive connections busy through the
gateway (front.local /call and /) and east-west through the client's sidecars (to back and to front).

While the load runs, each phase releases: front in place, back ordered, front replace, back rolled back
from inside group-1, front rolled back after its beta group, then front in place again until the phase
has seen at least --min-requests. Phase "drain on" is Ballast as shipped; phase "drain off" sets
`traffic.drain: false` on both apps (instances are simply restarted) and repeats the same releases.

Printed per phase: requests and failures (by kind), p50/p99 latency in steady state and during the
releases, and the time from an endpoint turning draining (or ready) to every traffic component having
acknowledged it (p50/p99, from the control plane's `ack-latency` log lines).

Run:  .venv/bin/python benchmarks/lossless_release.py [--min-requests 100000] [--connections 48]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (BenchFailed, Child, code_version, free_port, run_in_workdir, kill_leftovers,  # noqa: E402
                      loadavg, tail)

from ballast.loadgen import BackgroundLoad, Load, Target, percentile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ACK = re.compile(r"^(\S+ \S+) ballast.endpoints INFO ack-latency endpoint=(\S+) state=(\S+) generation=\d+ "
                 r"seconds=([\d.]+)", re.MULTILINE)
FIVE_EACH = {"cell-a": 5, "cell-b": 5}


class Bench:
    def __init__(self, work: Path, connections: int) -> None:
        self.work, self.connections = work, connections
        self.data = work / "data"
        self.apps = work / "apps"
        self.apps.mkdir()
        shutil.copy(ROOT / "src" / "ballast" / "demo" / "app.py", self.apps / "app.py")
        self.gateway_port = free_port()
        self.platform = Child([sys.executable, "-m", "ballast", "up", "--data-dir", str(self.data), "--port",
                               str(free_port()), "--gateway-port", str(self.gateway_port), "--first-node-ip",
                               "127.0.71.2", "--no-user-config"], work / "up.log", env={"HOME": str(work)})
        self.api: httpx.Client | None = None
        self.revisions = {"front": 0, "back": 0}
        self.drain = True

    # --- platform -----------------------------------------------------------------------------
    def start(self) -> None:
        self.platform.start()
        self.wait("ballast up", lambda: "Ballast is up" in (self.work / "up.log").read_text(errors="replace"), 120)
        cfg = yaml.safe_load((self.data / "client.yaml").read_text())
        self.api = httpx.Client(base_url=cfg["server"], headers={"Authorization": f"Bearer {cfg['token']}"},
                                timeout=30)

    def get(self, path: str) -> Any:
        assert self.api is not None
        r = self.api.get(path)
        if r.status_code != 200:
            raise BenchFailed(f"GET {path}: {r.status_code} {r.text[:200]}")
        return r.json()

    def cli(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "ballast", "--config", str(self.data / "client.yaml"), *args],
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise BenchFailed(f"ballast {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def wait(self, what: str, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.platform.exited:
                raise BenchFailed(f"ballast up exited while waiting for {what}:\n{tail(self.work / 'up.log')}")
            try:
                result = check()
            except (httpx.HTTPError, BenchFailed, KeyError):
                result = None
            if result:
                return result
            time.sleep(0.2)
        raise BenchFailed(f"timed out after {timeout:g}s waiting for {what}")

    # --- apps ---------------------------------------------------------------------------------
    def manifest(self, app: str) -> dict[str, Any]:
        env: dict[str, str] = {"GREETING": f"r{self.revisions.get(app, 0)}"}
        spec: dict[str, Any] = {"cells": FIVE_EACH, "traffic": {"drain": self.drain}}
        if app == "front":
            env.update(DEMO_CALL_SERVICE="back", DEMO_LATENCY_PROFILE="realistic")
            spec.update(expose={"host": "front.local", "path": "/"},
                        strategy={"pause": "none", "maxUnavailablePerCell": 2})
        elif app == "back":
            env.update(DEMO_LATENCY_PROFILE="realistic")
            spec.update(strategy={"pause": "none", "upgrade": "ordered"})
        else:
            spec.update(cells={"cell-a": 1, "cell-b": 1}, traffic={})
        spec["template"] = {"artifact": "./", "command": ["python3", "app.py"], "env": env,
                            "healthCheck": {"path": "/healthz", "periodSeconds": 5, "timeoutSeconds": 1},
                            "gracePeriodSeconds": 5}
        return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": app}, "spec": spec}

    def apply(self, *apps: str) -> None:
        files = []
        for app in apps:
            path = self.apps / f"{app}.yaml"
            path.write_text(yaml.safe_dump(self.manifest(app), sort_keys=False))
            files += ["-f", str(path)]
        self.cli("apply", *files)

    def ready(self, app: str, count: int) -> None:
        def check() -> bool:
            items = self.get(f"/v1/instances?app={app}")["items"]
            eps = self.get(f"/v1/apps/{app}/endpoints")["items"]
            return (len(items) == count and all(i["status"]["ready"] for i in items)
                    and len([e for e in eps if e["status"]["state"] == "ready" and not e["status"]["pending"]])
                    == count)
        self.wait(f"{count} instances of {app} ready and acknowledged", check, 180)

    def new_revision(self, app: str) -> None:
        self.revisions[app] += 1
        self.apply(app)

    def release(self, app: str, *flags: str, until: str = "Succeeded") -> float:
        began = time.monotonic()
        self.cli("release", "start", app, *flags)
        self.wait(f"release of {app} {until}", lambda: self._phase(app, until), 600)
        return time.monotonic() - began

    def _phase(self, app: str, phase: str, completed: int | None = None) -> bool:
        s = self.get(f"/v1/apps/{app}/release")
        if s["phase"] in ("Failed",) or (s["phase"] == "Paused" and phase != "Paused"):
            raise BenchFailed(f"release of {app} is {s['phase']}: {s['reason']}")
        return bool(s["phase"] == phase and (completed is None or s["completedGroups"] == completed))

    def targets(self) -> list[Target]:
        out = [Target("gateway", "127.0.0.1", self.gateway_port, "front.local", ("/call", "/", "/call"),
                      self.connections)]
        mesh = sorted(i["status"]["meshUrl"] for i in self.get("/v1/instances?app=client")["items"])
        for service, url in zip(("back", "front"), mesh):
            ip, port = url.removeprefix("http://").split(":")
            out.append(Target(f"east-west to {service}", ip, int(port), service,
                              ("/",) if service == "back" else ("/", "/call"), max(1, self.connections // 3)))
        return out

    # --- one phase ------------------------------------------------------------------------------
    def phase(self, name: str, steady: float, min_requests: int) -> dict[str, Any]:
        log_mark = len((self.data / "logs" / "server.log").read_text(errors="replace"))
        steps: list[tuple[str, float]] = []
        with BackgroundLoad(self.targets()) as load:
            time.sleep(steady)
            steady_until = time.monotonic()

            def step(what: str, seconds: float) -> None:
                steps.append((what, seconds))
                print(f"  [{name}] {what}: {seconds:.1f} s, {load.requests} requests so far, {load.failed} failed",
                      flush=True)

            self.new_revision("front")
            step("front in place", self.release("front", "--upgrade", "inPlace"))
            self.new_revision("back")
            step("back ordered", self.release("back"))
            self.new_revision("front")
            step("front replace", self.release("front", "--upgrade", "replace"))
            self.new_revision("back")
            began = time.monotonic()
            self.cli("release", "start", "back", "--upgrade", "inPlace", "--pause", "manual")
            self.wait("back beta done", lambda: self._phase("back", "Paused", 1), 300)
            self.cli("release", "resume", "back")
            self.wait("back group-1 under way", lambda: self._group_1_moving("back"), 120)
            self.cli("release", "rollback", "back")
            self.wait("back rolled back", lambda: self._phase("back", "RolledBack"), 300)
            self.revisions["back"] -= 1
            step("back rolled back from inside group-1", time.monotonic() - began)
            self.new_revision("front")
            began = time.monotonic()
            self.cli("release", "start", "front", "--upgrade", "replace", "--pause", "manual")
            self.wait("front beta done", lambda: self._phase("front", "Paused", 1), 300)
            self.cli("release", "rollback", "front")
            self.wait("front rolled back", lambda: self._phase("front", "RolledBack"), 300)
            self.revisions["front"] -= 1
            step("front rolled back after beta", time.monotonic() - began)
            while load.requests < min_requests:
                self.new_revision("front")
                step("front in place (to reach the request floor)", self.release("front", "--upgrade", "inPlace"))
            released_until = time.monotonic()
        acks = [(m.group(3), float(m.group(4))) for m in
                ACK.finditer((self.data / "logs" / "server.log").read_text(errors="replace")[log_mark:])]
        return {"name": name, "load": load, "steady": load.latencies(until=steady_until),
                "during": load.latencies(since=steady_until, until=released_until), "steps": steps,
                "drain_acks": [s for state, s in acks if state == "draining"],
                "ready_acks": [s for state, s in acks if state == "ready"]}

    def _group_1_moving(self, app: str) -> bool:
        cells = self.get(f"/v1/apps/{app}/release")["groups"][1]["cells"]
        return sum(c["done"] + c["in progress"] for c in cells.values()) >= 1


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.0f}" if values else "-"


def report(phases: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\ncode {code_version()}; load average at the end {loadavg()}")
    print(f"load: {args.connections} connections through the gateway, {max(1, args.connections // 3)} east-west "
          f"to each of back and front; demo app with realistic latency\n")
    print(f"{'':<36}" + "".join(f"{p['name']:>16}" for p in phases))
    rows = [
        ("requests", lambda p: str(p["load"].requests)),
        ("failed requests", lambda p: str(p["load"].failed)),
        ("latency p50 / p99 steady (ms)", lambda p: f"{ms(p['steady'], .5)} / {ms(p['steady'], .99)}"),
        ("latency p50 / p99 releasing (ms)", lambda p: f"{ms(p['during'], .5)} / {ms(p['during'], .99)}"),
        ("draining -> all acked p50/p99 (ms)", lambda p: f"{ms(p['drain_acks'], .5)} / {ms(p['drain_acks'], .99)}"),
        ("ready -> all acked p50/p99 (ms)", lambda p: f"{ms(p['ready_acks'], .5)} / {ms(p['ready_acks'], .99)}"),
        ("endpoint changes acknowledged", lambda p: f"{len(p['drain_acks'])} + {len(p['ready_acks'])}"),
        ("release steps, total (s)", lambda p: f"{sum(s for _, s in p['steps']):.0f}"),
    ]
    for label, cell in rows:
        print(f"{label:<36}" + "".join(f"{cell(p):>16}" for p in phases))
    for p in phases:
        load: Load = p["load"]
        if load.failed:
            print(f"\nfailures with {p['name']}:")
            for kind, count in sorted(load.failures().items(), key=lambda kv: -kv[1]):
                print(f"  {count:>7} x {kind}")


def run(args: argparse.Namespace, work: Path) -> None:
    bench = Bench(work, args.connections)
    bench.start()
    try:
        bench.apply("back", "front", "client")
        for app, count in (("back", 10), ("front", 10), ("client", 2)):
            bench.ready(app, count)
        phases = [bench.phase("drain on", args.steady, args.min_requests)]
        bench.drain = False
        bench.apply("back", "front")  # spec only: no new revision
        phases.append(bench.phase("drain off", args.steady, args.min_requests))
        report(phases, args)
    finally:
        ended = bench.platform.stop(signal.SIGINT, 120)
        left = kill_leftovers(work)
        print(f"\nplatform stopped: {ended}; leftover processes: {len(left)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-requests", type=int, default=100_000, help="per phase, sent while releasing")
    parser.add_argument("--connections", type=int, default=48)
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of steady state before releasing")
    args = parser.parse_args()
    return run_in_workdir("ballast-bench-lossless-", lambda work: run(args, work))


if __name__ == "__main__":
    sys.exit(main())
