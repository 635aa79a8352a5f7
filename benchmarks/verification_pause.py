#!/usr/bin/env python3
"""From a bad beta group going live to the release's automatic pause: how long a verification gate lets it serve.

Starts the real platform (`ballast up`, 2 zones x 2 nodes on 127.0.34.x, a gateway, agents' request
metrics on a free port) and deploys the demo app `bench` (2 instances per cell, exposed on the gateway as
bench.local) with the strategy {groups: 2, pause: none, verify: {windowSeconds: W, minRequests: 100,
maxErrorRate: 1}}: a beta group of one instance per cell, then the rest, each judged from W seconds of its
traffic. A load generator keeps a few keep-alive connections busy through the gateway for each round.

Each round applies a new bad revision (2, 3, 4, ...: a new GREETING and DEMO_FAIL_RATE, by default 0.2, so
the demo app answers 500 to a fifth of its requests), starts the release with `ballast release start`,
waits for phase Paused, then rolls it back (`ballast release rollback`) and waits until every instance is
back at revision 1 and every endpoint is acknowledged everywhere.

From the release's recorded events and the beta group's verification record, per round:
  release start          the release's `start` event
  bad beta live          the verification's startedAt: the window opens when every beta instance serves the
                         new revision and every traffic component has acknowledged its endpoint
  paused                 the release's `paused` event
  live -> paused         = the window (W as configured; windowEnd - startedAt) + the overhead
                           (paused - windowEnd): closing the window (finishedAt - windowEnd: reading the
                           agents, judging, recording the verdict) and the engine acting on it
                           (paused - finishedAt)
  start -> paused        the whole release, beta upgrade included
  first 500 -> paused    the client's view: the load generator's first HTTP 500 after the release started
                         (the first beta instance serves bad answers before its whole group is done)
For context it also prints, from the control plane's `ack-latency` log lines, when the beta instances'
endpoints turned ready and were acknowledged by every component, and how many requests the client sent and
saw fail between the first 500 and the pause. A summary gives median and max over the rounds.

Run:  .venv/bin/python benchmarks/verification_pause.py [--window 10] [--rounds 3] [--connections 4]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (BenchFailed, Child, code_version, free_port, kill_leftovers, loadavg,  # noqa: E402
                      run_in_workdir, tail)

from ballast.loadgen import BackgroundLoad, Load, Target  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP, HOST = "bench", "bench.local"
FIRST_IP = "127.0.34.2"
ACK = re.compile(r"^(\S+ \S+) ballast.endpoints INFO ack-latency endpoint=(\S+) state=(\S+) generation=\d+ "
                 r"seconds=([\d.]+)", re.MULTILINE)
Item = dict[str, Any]


def ballast_argv() -> list[str]:
    """The installed console script next to this interpreter, else `python -m ballast`."""
    script = Path(sys.executable).with_name("ballast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ballast"]


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port p with p + 1 also free: `ballast up --metrics-port p` puts the gateway's /metrics on p + 1."""
    import socket
    for _ in range(50):
        port = free_port(host)
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port + 1))
            except OSError:
                continue
        return port
    raise BenchFailed("no two adjacent free ports")


def log_time(stamp: str) -> float:
    """A Python logging asctime (local time, milliseconds) as a Unix time."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


class Bench:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.args = work, args
        self.data = work / "data"
        self.apps = work / "apps"
        self.apps.mkdir()
        shutil.copy(ROOT / "src" / "ballast" / "demo" / "app.py", self.apps / "app.py")
        self.gateway_port = free_port()
        self.total = 2 * args.per_cell
        self.platform = Child([*ballast_argv(), "up", "--data-dir", str(self.data), "--port", str(free_port()),
                               "--gateway-port", str(self.gateway_port), "--metrics-port", str(free_port_pair()),
                               "--first-node-ip", FIRST_IP, "--no-user-config"],
                              work / "up.log", env={"HOME": str(work)})
        self.api: httpx.Client | None = None

    # --- platform -----------------------------------------------------------------------------
    def start(self) -> None:
        self.platform.start()
        self.wait("ballast up", lambda: "Ballast is up" in (self.work / "up.log").read_text(errors="replace"), 120)
        cfg = yaml.safe_load((self.data / "client.yaml").read_text())
        self.api = httpx.Client(base_url=cfg["server"], headers={"Authorization": f"Bearer {cfg['token']}"},
                                timeout=30)

    def get(self, path: str, **params: Any) -> Any:
        assert self.api is not None
        r = self.api.get(path, params=params)
        if r.status_code != 200:
            raise BenchFailed(f"GET {path}: {r.status_code} {r.text[:200]}")
        return r.json()

    def cli(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("BALLAST_TOKEN", "BALLAST_SERVER")}
        env.update(HOME=str(self.work), BALLAST_CONFIG=str(self.data / "client.yaml"))
        result = subprocess.run([*ballast_argv(), *args], capture_output=True, text=True, timeout=120, check=False,
                                env=env, cwd=self.work, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise BenchFailed(f"ballast {' '.join(args)} exited {result.returncode}: {result.stderr or result.stdout}")
        return result.stdout

    def wait(self, what: str, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.platform.exited:
                raise BenchFailed(f"ballast up exited while waiting for {what}:\n{tail(self.work / 'up.log')}")
            try:
                result = check()
            except (httpx.HTTPError, KeyError) as exc:
                result, last = None, repr(exc)
            if result:
                return result
            time.sleep(0.1)
        raise BenchFailed(f"timed out after {timeout:g}s waiting for {what}{f' (last error {last})' if last else ''}")

    # --- the app ------------------------------------------------------------------------------
    def manifest(self, revision: int, fail_rate: float) -> Item:
        env = {"GREETING": f"r{revision}", **({"DEMO_FAIL_RATE": str(fail_rate)} if fail_rate else {})}
        verify = {"windowSeconds": self.args.window, "minRequests": 100, "maxErrorRate": 1}
        return {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService", "metadata": {"name": APP},
                "spec": {"cells": {"cell-a": self.args.per_cell, "cell-b": self.args.per_cell},
                         "expose": {"host": HOST},
                         "strategy": {"groups": 2, "pause": "none", "verify": verify},
                         "template": {"artifact": str(self.apps), "command": ["python3", "app.py"], "env": env,
                                      "healthCheck": {"path": "/healthz", "periodSeconds": 1, "timeoutSeconds": 1},
                                      "resources": {"cpu": "100m", "memory": "64Mi"},
                                      "gracePeriodSeconds": 3}}}

    def apply(self, revision: int, fail_rate: float) -> None:
        path = self.apps / f"{APP}-r{revision}.yaml"
        path.write_text(yaml.safe_dump(self.manifest(revision, fail_rate), sort_keys=False))
        self.cli("apply", "-f", str(path))

    def steady(self, revision: int) -> None:
        """Every instance Running and ready at `revision`; every endpoint ready and acknowledged everywhere."""
        def check() -> bool:
            items = self.get("/v1/instances", app=APP)["items"]
            eps = self.get(f"/v1/apps/{APP}/endpoints")["items"]
            return (len(items) == self.total
                    and all(i["spec"]["revision"] == revision and i["status"]["revision"] == revision
                            and i["status"]["phase"] == "Running" and i["status"]["ready"] is True for i in items)
                    and len(eps) == self.total
                    and all(e["status"]["state"] == "ready" and not e["status"]["pending"] for e in eps))
        self.wait(f"{self.total} instances of {APP} ready at revision {revision}, every endpoint acknowledged",
                  check, 180)

    def release_status(self, release_id: int | None = None) -> Item:
        return dict(self.get(f"/v1/apps/{APP}/release", **({"id": release_id} if release_id else {})))

    # --- one round ------------------------------------------------------------------------------
    def round(self, n: int, revision: int) -> Item:
        self.apply(revision, self.args.fail_rate)
        log_mark = len((self.data / "logs" / "server.log").read_text(errors="replace"))
        target = Target("gateway", "127.0.0.1", self.gateway_port, HOST, ("/",), self.args.connections)
        with BackgroundLoad([target]) as load:
            # Steady traffic first: the gateway routes to every instance and nothing fails yet.
            self.wait("the load generator's first 200 answers", lambda: load.requests >= 200, 60)
            if load.failed:
                raise BenchFailed(f"round {n}: requests failed before the release started: {dict(load.failures())}")
            clock_offset = time.time() - time.monotonic()   # the load's sample times are the loop's monotonic clock
            self.cli("release", "start", APP)

            def stopped() -> Item | None:
                s = self.release_status()
                if s["toRevision"] != revision:
                    return None
                if s["phase"] in ("Succeeded", "Failed", "RolledBack", "RollingBack"):
                    raise BenchFailed(f"round {n}: the release of revision {revision} is {s['phase']}: {s['reason']}")
                return s if s["phase"] == "Paused" else None

            status = self.wait(f"the release of revision {revision} paused", stopped, 120 + 3 * self.args.window)
            at_pause = (load.requests, load.failed)
            self.cli("release", "rollback", APP)
            self.wait(f"the release of revision {revision} rolled back",
                      lambda: self.release_status(status["id"])["phase"] == "RolledBack", 180)
            self.steady(1)
        server_log = (self.data / "logs" / "server.log").read_text(errors="replace")[log_mark:]
        return analyse(n, revision, status, load, clock_offset, at_pause, server_log, self.args.window)


def analyse(n: int, revision: int, status: Item, load: Load, clock_offset: float, at_pause: tuple[int, int],
            server_log: str, window: float) -> Item:
    events = status["events"]

    def event(action: str) -> float:
        found = [e["ts"] for e in events if e["action"] == action]
        if not found:
            raise BenchFailed(f"round {n}: no {action!r} event on release {status['id']}: "
                              f"{[e['action'] for e in events]}")
        return float(found[-1])

    start, paused = event("start"), event("paused")
    beta = status["groups"][0]
    v = beta.get("verification")
    if v is None:
        raise BenchFailed(f"round {n}: the release paused without a verification of {beta['name']}: {status['reason']}")
    if v["state"] != "failed":
        raise BenchFailed(f"round {n}: the {beta['name']} verdict is {v['state']}, not failed: {v['summary']}")
    if status["completedGroups"] != 0:
        raise BenchFailed(f"round {n}: paused after {status['completedGroups']} groups, expected after the beta group")
    live, window_end, finished = float(v["startedAt"]), float(v["windowEnd"]), float(v["finishedAt"])

    # The client's view: the first HTTP 500 after the release started (evidence keeps the first 20 failures
    # with wall times and kinds; the load starts fresh each round and nothing failed before the release).
    first_500 = next((at for at, kind, _ in load.evidence() if kind == "HTTP 500" and at >= start), None)
    failed_samples = sorted(clock_offset + s.at + s.seconds for t in load.tallies.values() for s in t.samples
                            if not s.ok)
    first_failure = next((at for at in failed_samples if at >= start), None)
    before_pause = [s for t in load.tallies.values() for s in t.samples
                    if first_500 is not None and first_500 <= clock_offset + s.at + s.seconds <= paused]

    # When the beta endpoints turned ready at the new revision and every component acknowledged them.
    beta_ids = {i["instance"] for i in beta["instances"]}
    readies = [(log_time(m.group(1)), float(m.group(4))) for m in ACK.finditer(server_log)
               if m.group(2) in beta_ids and m.group(3) == "ready"]
    readies = [(acked, acked - seconds) for acked, seconds in readies if start <= acked <= paused + 1]

    return {
        "round": n, "revision": revision, "release": status["id"], "start": start, "live": live, "paused": paused,
        "window_cfg": window, "window_end": window_end, "finished": finished,
        "window_rec": finished - live, "live_to_paused": paused - live, "overhead": paused - window_end,
        "closing": finished - window_end, "acting": paused - finished, "start_to_paused": paused - start,
        "first_500": first_500, "first_failure": first_failure, "verdict": v["summary"],
        "canary": v.get("canary", {}), "beta": sorted(beta_ids),
        "first_ready": min((r for _, r in readies), default=None),
        "last_acked": max((a for a, _ in readies), default=None), "acks": len(readies),
        "requests_first500_to_pause": len(before_pause),
        "failed_first500_to_pause": sum(1 for s in before_pause if not s.ok),
        "at_pause": at_pause, "total": (load.requests, load.failed), "failures": dict(load.failures()),
    }


def clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def print_round(r: Item) -> None:
    s = r["start"]
    print(f"\nround {r['round']}: revision {r['revision']} (release {r['release']}), beta {', '.join(r['beta'])}")
    print(f"  release start            {clock(s)}")
    if r["first_ready"] is not None:
        print(f"  first beta endpoint ready {clock(r['first_ready'])}  (+{r['first_ready'] - s:.2f} s)   "
              f"last acknowledged everywhere {clock(r['last_acked'])}  (+{r['last_acked'] - s:.2f} s; "
              f"{r['acks']} ready acks in the server log)")
    if r["first_500"] is not None:
        print(f"  client's first 500       {clock(r['first_500'])}  (+{r['first_500'] - s:.2f} s)")
    else:
        print(f"  client's first 500       none recorded (first failure of any kind: "
              f"{'-' if r['first_failure'] is None else clock(r['first_failure'])})")
    print(f"  (a) bad beta live        {clock(r['live'])}  (+{r['live'] - s:.2f} s)  = verification startedAt"
          + (f"; {r['live'] - r['last_acked']:.2f} s after the last beta ack" if r["last_acked"] is not None else ""))
    print(f"      window end           {clock(r['window_end'])}   verdict recorded {clock(r['finished'])}")
    print(f"  (b) paused               {clock(r['paused'])}  (+{r['paused'] - s:.2f} s)")
    print(f"  (c) live -> paused       {r['live_to_paused']:.2f} s  =  window {r['window_cfg']:g} s configured "
          f"({r['window_end'] - r['live']:.2f} s windowEnd - startedAt, {r['window_rec']:.2f} s recorded "
          f"finishedAt - startedAt)  +  overhead {r['overhead']:.2f} s "
          f"(closing and judging {r['closing']:.2f} s, engine acting {r['acting']:.2f} s)")
    print(f"  (d) start -> paused      {r['start_to_paused']:.2f} s")
    if r["first_500"] is not None:
        print(f"  (e) first 500 -> paused  {r['paused'] - r['first_500']:.2f} s (client side): "
              f"{r['requests_first500_to_pause']} requests answered meanwhile, {r['failed_first500_to_pause']} failed")
    c = r["canary"]
    print(f"  verdict: {r['verdict']}")
    if c:
        print(f"  canary over the window: {c.get('requests')} requests, {c.get('errors')} errors "
              f"({c.get('errorRatePercent')}%)")
    req, failed = r["at_pause"]
    print(f"  load: {req} requests / {failed} failed until the pause; {r['total'][0]} / {r['total'][1]} "
          f"until rolled back and steady: {r['failures']}")
    sys.stdout.flush()


def summary(results: list[Item], args: argparse.Namespace) -> None:
    print(f"\nsummary over {len(results)} round(s), window {args.window:g} s, {args.per_cell} instances per cell, "
          f"beta 1 per cell, DEMO_FAIL_RATE {args.fail_rate:g}, {args.connections} connections through the gateway")

    def line(label: str, values: list[float]) -> None:
        if values:
            print(f"  {label:<34} median {statistics.median(values):6.2f} s   max {max(values):6.2f} s")
    line("live -> paused", [r["live_to_paused"] for r in results])
    line("overhead beyond the window", [r["overhead"] for r in results])
    line("  closing and judging", [r["closing"] for r in results])
    line("  engine acting", [r["acting"] for r in results])
    line("start -> paused", [r["start_to_paused"] for r in results])
    line("client first 500 -> paused", [r["paused"] - r["first_500"] for r in results if r["first_500"] is not None])


def run(args: argparse.Namespace, work: Path) -> None:
    bench = Bench(work, args)
    try:
        bench.start()
        bench.apply(1, 0.0)
        bench.steady(1)
        results = []
        for n in range(1, args.rounds + 1):
            results.append(bench.round(n, 1 + n))
            print_round(results[-1])
        summary(results, args)
        print(f"\ncode {code_version()}; load average at the end {loadavg()}")
        print(f"command: {shlex.join(sys.orig_argv)}")
    finally:
        if bench.api is not None:
            bench.api.close()
        ended = bench.platform.stop(signal.SIGINT, 90)
        left = kill_leftovers(work)
        print(f"\nplatform stopped: {ended}; leftover processes: {len(left)}")
        if left:
            raise BenchFailed(f"processes survived the platform: {left}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=float, default=10.0, help="verify.windowSeconds (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="bad releases, each paused then rolled back (default 3)")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections through the gateway "
                                                                   "(default 4)")
    parser.add_argument("--per-cell", type=int, default=2, help="instances per cell (default 2; beta is 1 per cell)")
    parser.add_argument("--fail-rate", type=float, default=0.2, help="DEMO_FAIL_RATE of each bad revision "
                                                                     "(default 0.2)")
    args = parser.parse_args()
    if args.window <= 0 or args.rounds < 1 or args.connections < 1 or args.per_cell < 2 \
            or not 0 < args.fail_rate <= 1:
        parser.error("--window must be > 0, --rounds and --connections >= 1, --per-cell >= 2, "
                     "--fail-rate in (0, 1]")
    return run_in_workdir("ballast-bench-verify-", lambda work: run(args, work))


if __name__ == "__main__":
    sys.exit(main())
