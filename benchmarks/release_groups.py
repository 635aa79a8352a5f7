#!/usr/bin/env python3
"""A grouped release against its physical limit, measured in the same run.

Starts the real platform (`ballast up`, 2 zones x 2 nodes on 127.0.33.x),
deploys the sample app with 10 instances per cell (20 over 2 cells), applies
a new template (revision 2) and releases it in 4 groups (beta of 1 per cell,
then 3 + 3 + 3 per cell) with `pause: none` and every instance of a group
changed at once (maxUnavailablePerCell 10, so a group is one wave).

The physical limit is the work itself: for each instance the agent logs
`upgrade-timing ... stop=S start_to_ready=R total=T` (old process stopped,
new one launched, first passing health check). The limit is the sum over the
groups of the slowest instance's total. The release's own time comes from its
recorded events (start, each group done, succeeded). The control plane's
overhead per group is the group's wall time minus its slowest instance.

Run:  .venv/bin/python benchmarks/release_groups.py [--per-cell 10] [--groups 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import BenchFailed, Child, run_in_workdir, free_port, kill_leftovers, tail  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMING = re.compile(r"upgrade-timing instance=(\S+) revision=(\d+) stop=([\d.]+) start_to_ready=([\d.]+) total=([\d.]+)")


def manifest(app_dir: Path, per_cell: int, greeting: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: ballast.io/v1alpha1
        kind: AppService
        metadata: {{name: bench}}
        spec:
          cells: {{cell-a: {per_cell}, cell-b: {per_cell}}}
          template:
            artifact: {app_dir}
            command: [python3, app.py]
            env: {{GREETING: {greeting}}}
            healthCheck: {{path: /healthz, periodSeconds: 1, timeoutSeconds: 1}}
            resources: {{cpu: 100m, memory: 64Mi}}
            gracePeriodSeconds: 5
        """)


def wait(what: str, check: Any, timeout: float, platform: Child) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if platform.exited:
            raise BenchFailed(f"ballast up exited while waiting for {what}:\n{tail(platform.log)}")
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise BenchFailed(f"timed out after {timeout:g}s waiting for {what}")


def run(args: argparse.Namespace, work: Path) -> None:
    port = free_port()
    data = work / "data"
    platform = Child([sys.executable, "-m", "ballast", "up", "--data-dir", str(data), "--port", str(port), "--gateway-port", str(free_port()),
                      "--first-node-ip", "127.0.33.2", "--node-cpu", "64", "--node-memory", "64Gi",
                      "--no-user-config"], work / "up.log", env={"HOME": str(work)})
    app_dir = work / "app"
    app_dir.mkdir()
    shutil.copy(ROOT / "src" / "ballast" / "demo" / "app.py", app_dir / "app.py")
    platform.start()
    try:
        wait("ballast up", lambda: "Ballast is up" in (work / "up.log").read_text(errors="replace"), 90, platform)
        cfg = yaml.safe_load((data / "client.yaml").read_text())
        api = httpx.Client(base_url=cfg["server"], headers={"Authorization": f"Bearer {cfg['token']}"}, timeout=30)
        cli = [sys.executable, "-m", "ballast", "--config", str(data / "client.yaml")]
        import subprocess

        def apply(greeting: str) -> None:
            path = work / f"bench-{greeting}.yaml"
            path.write_text(manifest(app_dir, args.per_cell, greeting))
            subprocess.run([*cli, "apply", "-f", str(path)], check=True, capture_output=True)

        total_instances = 2 * args.per_cell

        def all_ready(revision: int) -> bool:
            items = api.get("/v1/instances", params={"app": "bench"}).json()["items"]
            return len(items) == total_instances and all(
                i["status"]["ready"] and i["status"]["revision"] == revision for i in items)

        apply("r1")
        wait("first deployment ready", lambda: all_ready(1), 180, platform)
        results = []
        for round_no in range(args.rounds):
            revision = 2 + round_no
            apply(f"r{revision}")
            body = {"toRevision": revision, "strategy": {"groups": args.groups, "betaSize": 1, "pause": "none",
                                                         "maxUnavailablePerCell": 10_000}}
            release = api.post("/v1/apps/bench/releases", json=body)
            if release.status_code != 201:
                raise BenchFailed(f"release start failed: {release.text}")
            status = wait("release Succeeded", lambda: _finished(api), 600, platform)
            if status["phase"] != "Succeeded":
                raise BenchFailed(f"release ended {status['phase']}: {status['reason']}")
            results.append(analyse(status, data, revision))
        report(results, args)
    finally:
        ended = platform.stop(signal.SIGINT, 90)
        left = kill_leftovers(work)
        print(f"\nplatform stopped: {ended}; leftover processes: {len(left)}")
        if left:
            raise BenchFailed(f"processes survived the platform: {left}")


def _finished(api: httpx.Client) -> dict[str, Any] | None:
    s = api.get("/v1/apps/bench/release").json()
    return s if s["phase"] in ("Succeeded", "Failed", "RolledBack", "Paused") else None


def analyse(status: dict[str, Any], data: Path, revision: int) -> dict[str, Any]:
    timings: dict[str, float] = {}
    for log in data.glob("logs/node-*.log"):
        for m in TIMING.finditer(log.read_text(errors="replace")):
            if int(m.group(2)) == revision:
                timings[m.group(1)] = float(m.group(5))
    events = status["events"]
    marks = [e["ts"] for e in events if e["action"] in ("start", "group-done", "succeeded")]
    groups = []
    for g, (begin, end) in zip(status["groups"], zip(marks, marks[1:])):
        ids = [i["instance"] for i in g["instances"]]
        missing = [i for i in ids if i not in timings]
        if missing:
            raise BenchFailed(f"no upgrade-timing line for {missing}")
        slowest = max(timings[i] for i in ids)
        groups.append({"name": g["name"], "size": len(ids), "wall": end - begin, "slowest": slowest,
                       "overhead": end - begin - slowest})
    return {"total": marks[-1] - marks[0], "limit": sum(g["slowest"] for g in groups), "groups": groups,
            "per_instance": sorted(timings[i] for g in status["groups"] for i in (x["instance"] for x in g["instances"]))}


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nrelease of {2 * args.per_cell} instances over 2 cells in {args.groups} groups, pause none, "
          f"each group in one wave; {len(results)} round(s)")
    for n, r in enumerate(results, 1):
        print(f"\nround {n}: release {r['total']:.2f} s   physical limit {r['limit']:.2f} s   "
              f"ratio {r['total'] / r['limit']:.2f}x   control-plane overhead {r['total'] - r['limit']:.2f} s")
        print(f"  {'group':<8} {'instances':>9} {'wall s':>8} {'slowest s':>10} {'overhead s':>11}")
        for g in r["groups"]:
            print(f"  {g['name']:<8} {g['size']:>9} {g['wall']:>8.2f} {g['slowest']:>10.2f} {g['overhead']:>11.2f}")
        per = r["per_instance"]
        print(f"  per-instance stop+start+ready: median {statistics.median(per):.2f} s, max {max(per):.2f} s")
    overheads = [g["overhead"] for r in results for g in r["groups"]]
    print(f"\noverhead per group over all rounds: median {statistics.median(overheads):.2f} s, "
          f"max {max(overheads):.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-cell", type=int, default=10)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    return run_in_workdir("ballast-bench-release-", lambda work: run(args, work))


if __name__ == "__main__":
    sys.exit(main())
