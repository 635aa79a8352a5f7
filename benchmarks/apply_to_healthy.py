#!/usr/bin/env python3
"""Apply → healthy: how long until N freshly applied instances are all ready, and where the time goes.

Starts the real platform with `ballast up` (control plane on SQLite + node
agents; default 2 zones x 2 nodes on 127.0.31.x, 64 cpu / 64Gi each so
capacity never limits), pushes the sample app's artifact, applies the sample
app (src/ballast/demo/shop.yaml) with `replicas: N` (default 100), and polls
`GET /v1/instances?app=APP` every 50 ms with httpx. Per instance it records

  scheduled  the scheduler's decision: timestamp of the audit record
             (action "schedule") of the write that created the instance record
  forked     the kernel's start time of the instance's pid (/proc/PID/stat,
             10 ms resolution): when the agent actually launched the process
  launched   first poll showing phase != Pending (pid set): the agent's report
             of the launch has reached the control plane
  ready      first poll showing status.ready (first passing health check,
             as reported to the control plane)

and prints p50/p99/max of each segment, measured from the moment the apply
call returned: control plane = apply→launched, process start =
launched→ready, total = apply→ready (the brief's split), plus the finer split
through `forked`, milestones for the whole set, and the CPU time each kind of
process used meanwhile (the machine has few cores; it explains the figures).
Poll-based times are late by at most one poll cycle (printed); as a
cross-check the server's own row timestamps (updated_at of the last change,
i.e. the ready report) are read read-only from the SQLite store at the end.

The platform is always stopped (SIGINT, as Ctrl-C would) in a `finally`, and
the benchmark fails if any process referencing its temp dir survives.

Run:  .venv/bin/python benchmarks/apply_to_healthy.py [--replicas 100] [--timeout 300]
      [--direct-python3]   (instances' `python3` resolves to the interpreter itself,
                            bypassing a wrapper/shim such as pyenv's on PATH)
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (BenchFailed, Child, code_version, cpu_seconds, exit_on_sigterm, free_port, kill_leftovers, work_dir,  # noqa: E402
                      loadavg, machine_busy_seconds, percentile, process_start_wall, processes_referencing, tail)

import ballast  # noqa: E402
from ballast.cli import config as client_config  # noqa: E402
from ballast.cli.packaging import pack  # noqa: E402

DEMO_DIR = Path(ballast.__file__).resolve().parent / "demo"
ROLES = {"-m ballast server": "control plane (ballast server)", "-m ballast agent": "node agents (ballast agent)",
         "-m ballast up": "`ballast up` supervisor"}
INSTANCES = "instances (python3 app.py)"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=100, help="instances to apply (default 100)")
    p.add_argument("--zones", type=int, default=2)
    p.add_argument("--nodes-per-zone", type=int, default=2)
    p.add_argument("--node-cpu", default="64")
    p.add_argument("--node-memory", default="64Gi")
    p.add_argument("--first-node-ip", default="127.0.31.2")
    p.add_argument("--app", default="shop", help="app name (default shop)")
    p.add_argument("--poll-interval", type=float, default=0.05, help="seconds between polls (default 0.05)")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds in total (default 300)")
    p.add_argument("--direct-python3", action="store_true",
                   help=f"put {Path(sys.base_prefix) / 'bin'} first on the platform's PATH, so instances start "
                        "the interpreter directly instead of through a wrapper such as a pyenv shim")
    p.add_argument("--keep-data-dir", action="store_true", help="do not delete the temp data dir (logs, store)")
    return p.parse_args()


def platform_env(args: argparse.Namespace) -> dict[str, str]:
    if not args.direct_python3:
        return {}
    return {"PATH": f"{Path(sys.base_prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}


def describe_python3(env: dict[str, str]) -> str:
    found = shutil.which("python3", path=env.get("PATH", os.environ.get("PATH")))
    if found is None:
        return "python3: not on PATH"
    with open(found, "rb") as fh:
        kind = "a script (wrapper/shim)" if fh.read(2) == b"#!" else "an executable"
    return f"instances run `python3` = {found}, {kind}"


def start_platform(args: argparse.Namespace, data_dir: Path, port: int, deadline: float) -> Child:
    up = Child([sys.executable, "-m", "ballast", "up", "--data-dir", str(data_dir), "--port", str(port), "--gateway-port", str(free_port()),
                "--first-node-ip", args.first_node_ip, "--zones", str(args.zones),
                "--nodes-per-zone", str(args.nodes_per_zone), "--node-cpu", args.node_cpu,
                "--node-memory", args.node_memory, "--no-user-config"],
               data_dir.parent / "up.log", env=platform_env(args))
    up.start()
    while time.monotonic() < deadline:
        if up.exited:
            raise BenchFailed(f"`ballast up` exited with code {up.proc.returncode}:\n{tail(up.log)}")  # type: ignore[union-attr]
        if "Ballast is up" in up.log.read_text(errors="replace") and (data_dir / "client.yaml").is_file():
            return up
        time.sleep(0.1)
    raise BenchFailed(f"`ballast up` did not report 'Ballast is up' in time:\n{tail(up.log)}")


def manifest(app: str, replicas: int, digest: str) -> dict[str, Any]:
    doc = copy.deepcopy(next(yaml.safe_load_all((DEMO_DIR / "shop.yaml").read_text())))
    doc["metadata"]["name"] = app
    doc["spec"].pop("cells", None)
    doc["spec"]["replicas"] = replicas
    doc["spec"]["template"]["artifact"] = digest
    return doc  # type: ignore[no-any-return]


class Observer:
    """First-seen times per instance from polling the instance list."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.launched: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.pids: dict[str, int] = {}
        self.last: list[dict[str, Any]] = []
        self.cycles: list[float] = []      # request round trips
        self.all_seen_at: float | None = None
        self.all_launched_at: float | None = None

    def record(self, items: list[dict[str, Any]], at: float, want: int) -> None:
        self.last = items
        for it in items:
            name, status = it["metadata"]["name"], it["status"]
            self.seen.setdefault(name, at)
            if status["phase"] != "Pending":
                self.launched.setdefault(name, at)
            if status.get("pid"):
                self.pids.setdefault(name, status["pid"])
            if status["ready"]:
                self.ready.setdefault(name, at)
        if self.all_seen_at is None and len(items) >= want:
            self.all_seen_at = at
        if self.all_launched_at is None and len(items) >= want and all(
                it["status"]["phase"] != "Pending" for it in items):
            self.all_launched_at = at

    def ready_now(self) -> int:
        return sum(1 for it in self.last if it["status"]["ready"])

    def phases(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for it in self.last:
            counts[it["status"]["phase"]] = counts.get(it["status"]["phase"], 0) + 1
        return counts


def poll_until_ready(api: httpx.Client, app: str, want: int, interval: float, deadline: float) -> Observer:
    obs = Observer()
    while True:
        sent = time.time()
        if time.monotonic() > deadline:
            raise BenchFailed(f"gave up: {obs.ready_now()}/{want} ready when the time limit ran out "
                              f"(phases now: {obs.phases() or 'no instance records'})")
        response = api.get("/v1/instances", params={"app": app})
        response.raise_for_status()
        got = time.time()
        obs.cycles.append(got - sent)
        obs.record(response.json()["items"], got, want)
        if len(obs.last) >= want and obs.ready_now() >= want:
            return obs
        time.sleep(max(0.0, interval - (time.time() - sent)))


def schedule_times(api: httpx.Client, app: str, since: float) -> dict[str, float]:
    """Instance id → wall-clock time of the audit record of the scheduler write that created it."""
    out: dict[str, float] = {}
    answer = api.get("/v1/audit", params={"limit": 10_000})
    answer.raise_for_status()
    for rec in answer.json()["items"]:
        if rec["action"] != "schedule" or rec["resource"] != f"AppService/{app}":
            continue
        ts = datetime.fromisoformat(rec["ts"]).timestamp()
        if ts < since - 60:
            continue
        for created in rec["detail"].get("created", []):
            out[created["id"]] = ts
    return out


def server_row_times(db: Path, app: str) -> dict[str, tuple[float, float, int]]:
    """id → (created_at, updated_at, restarts) as the control plane recorded them (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT id, created_at, updated_at, restarts FROM instances WHERE app = ?", (app,)).fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


@dataclass
class CpuSnapshot:
    """CPU seconds used so far: per platform process (pid → role, seconds), this process, the whole machine."""

    per_pid: dict[int, tuple[str, float]] = field(default_factory=dict)
    own: float = 0.0
    machine: float = 0.0

    @classmethod
    def take(cls, data_dir: Path) -> "CpuSnapshot":
        snap = cls()
        for pid, cmd in processes_referencing(data_dir):
            role = next((r for key, r in ROLES.items() if key in cmd), INSTANCES)
            used = cpu_seconds(pid)
            if used is not None:
                snap.per_pid[pid] = (role, used)
        t = os.times()
        snap.own = t.user + t.system
        snap.machine = machine_busy_seconds()
        return snap


def cpu_report(before: CpuSnapshot, after: CpuSnapshot, wall: float) -> None:
    per_role: dict[str, list[float]] = {}
    for pid, (role, seconds) in after.per_pid.items():
        per_role.setdefault(role, []).append(seconds - before.per_pid.get(pid, (role, 0.0))[1])
    cores = os.cpu_count() or 1
    machine = after.machine - before.machine
    own = after.own - before.own
    print()
    print(f"  CPU time used between apply and all-ready ({wall:.2f} s wall x {cores} cores = "
          f"{wall * cores:.1f} core-seconds):")
    ours = own
    for role in sorted(per_role, key=lambda r: -sum(per_role[r])):
        used = per_role[role]
        ours += sum(used)
        extra = (f"; per process p50 {percentile(used, 50):.3f} s, max {max(used):.3f} s"
                 if len(used) > 4 else "")
        print(f"    {role:<40} {sum(used):7.2f} s  ({len(used)} process{'es' if len(used) != 1 else ''}{extra})")
    print(f"    {'this benchmark (polling)':<40} {own:7.2f} s")
    print(f"    {'sum of the above':<40} {ours:7.2f} s")
    print(f"    {'whole machine busy (/proc/stat)':<40} {machine:7.2f} s  = {machine / (wall * cores) * 100:.0f}% "
          f"of capacity; other processes (not this benchmark): {max(0.0, machine - ours):.2f} s")


def row(label: str, values: list[float]) -> str:
    if not values:
        return f"  {label:<54} (no data)"
    return (f"  {label:<54} {percentile(values, 50):>7.3f} {percentile(values, 99):>7.3f} {max(values):>7.3f}"
            f" {min(values):>7.3f}  n={len(values)}")


def report(args: argparse.Namespace, apply_sent: float, t0: float, obs: Observer, sched: dict[str, float],
           forked: dict[str, float], rows: dict[str, tuple[float, float, int]]) -> None:
    """Print the per-instance segments and the milestones (seconds from the apply call returning)."""
    ids = sorted(obs.ready)
    missing = [i for i in ids if i not in sched]
    if missing:
        raise BenchFailed(f"{len(missing)} instance(s) have no 'schedule' audit record, e.g. {missing[:3]}")
    total = [obs.ready[i] - t0 for i in ids]
    with_fork = [i for i in ids if i in forked]
    # The last change to a row is its ready report, unless it restarted; its updated_at is the server's own time.
    settled = [i for i in ids if i in rows and rows[i][2] == 0]

    print()
    print(f"apply -> healthy: {len(ids)} instances of the sample app, {args.zones} zones x {args.nodes_per_zone} "
          f"nodes, node capacity cpu {args.node_cpu} / memory {args.node_memory}")
    print(f"seconds from the moment POST /v1/apply returned (the apply request itself took {t0 - apply_sent:.3f} s)")
    print()
    print(f"  {'per instance':<54} {'p50':>7} {'p99':>7} {'max':>7} {'min':>7}")
    print(row("apply -> launched (phase != Pending)  [control plane]", [obs.launched[i] - t0 for i in ids]))
    print(row("launched -> ready                     [process start]", [obs.ready[i] - obs.launched[i] for i in ids]))
    print(row("apply -> ready                        [total]", total))
    print("  finer split")
    print(row("  apply -> scheduled (audit 'schedule' record)", [sched[i] - t0 for i in ids]))
    print(row("  scheduled -> forked (agent pickup + launch)", [forked[i] - sched[i] for i in with_fork]))
    print(row("  forked -> launched visible (status report)", [obs.launched[i] - forked[i] for i in with_fork]))
    print(row("  forked -> ready visible", [obs.ready[i] - forked[i] for i in with_fork]))
    print("  cross-checks")
    print(row("  apply -> ready, by the server's row updated_at", [rows[i][1] - t0 for i in settled]))
    print(row("  poll lag: ready polled - row updated_at", [obs.ready[i] - rows[i][1] for i in settled]))
    print()
    print("  milestones (whole set)")
    print(f"    all {len(ids)} instance records written (last 'schedule' record)  {max(sched[i] for i in ids) - t0:7.3f}")
    print(f"    all {len(ids)} instance records visible to a poll                {(obs.all_seen_at or float('nan')) - t0:7.3f}")
    if with_fork:
        print(f"    all {len(with_fork)} processes forked                               "
              f"{max(forked[i] for i in with_fork) - t0:7.3f}")
    print(f"    all {len(ids)} launched (phase != Pending) visible              "
          f"{(obs.all_launched_at or float('nan')) - t0:7.3f}")
    print(f"    all {len(ids)} ready                                            {max(total):7.3f}")
    print(f"    scheduler transactions that created them: {len({sched[i] for i in ids})}; "
          f"restarts during the run: {sum(r[2] for r in rows.values())}; "
          f"pids without a fork time: {len(ids) - len(with_fork)}")
    print()
    print(f"  polling: {len(obs.cycles)} polls, one every {args.poll_interval * 1000:.0f} ms at most; "
          f"GET /v1/instances?app= round trip p50 {percentile(obs.cycles, 50) * 1000:.1f} ms, "
          f"p99 {percentile(obs.cycles, 99) * 1000:.1f} ms, max {max(obs.cycles) * 1000:.1f} ms, "
          f"mean {statistics.mean(obs.cycles) * 1000:.1f} ms")
    print("  (a polled time is late by at most one poll interval plus one round trip)")


def fork_times(obs: Observer, data_dir: Path) -> dict[str, float]:
    """Kernel start time of each instance's first reported pid, if that pid is still the instance."""
    out = {}
    for name, pid in obs.pids.items():
        started = process_start_wall(pid)
        if started is not None and _cwd_under(pid, data_dir):
            out[name] = started
    return out


def _cwd_under(pid: int, root: Path) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/cwd").startswith(str(root) + "/")
    except OSError:
        return False


def stop_platform(up: Child | None, data_dir: Path, pids: dict[str, int]) -> list[str]:
    """SIGINT like Ctrl-C, escalate if needed; return problems (anything that had to be killed)."""
    problems = []
    if up is not None:
        t = time.monotonic()
        how = up.stop(signal.SIGINT, grace=120)
        print(f"platform: {how} in {time.monotonic() - t:.1f} s")
        if "KILLED" in how:
            problems.append(f"`ballast up` {how}")
    for pid, cmd in kill_leftovers(data_dir):
        problems.append(f"left running after stop (now killed): pid {pid}: {cmd[:160]}")
    problems += [f"instance {name} pid {pid} still running" for name, pid in pids.items() if _cwd_under(pid, data_dir)]
    if not problems:
        print(f"leftover check: no process references {data_dir}; none of the {len(pids)} instance pids is running")
    return problems


def main() -> int:
    args = parse_args()
    exit_on_sigterm()
    began = time.monotonic()
    deadline = began + args.timeout
    workdir = work_dir("ballast-bench-apply-")
    data_dir = workdir / "data"
    port = free_port()
    up: Child | None = None
    obs: Observer | None = None
    failed: str | None = None
    try:
        print(f"code: {code_version()}; load average before start: {loadavg()}")
        print(describe_python3(platform_env(args)))
        print(f"starting `ballast up` in {data_dir} on port {port} ...", flush=True)
        up = start_platform(args, data_dir, port, min(deadline, began + 120))
        print(f"platform up after {time.monotonic() - began:.1f} s", flush=True)
        cfg = client_config.load(str(data_dir / "client.yaml"))
        with httpx.Client(base_url=cfg.server, headers={"Authorization": f"Bearer {cfg.token}"}, timeout=30) as api:
            blob, digest = pack(DEMO_DIR)
            api.post("/v1/artifacts", content=blob).raise_for_status()
            doc = manifest(args.app, args.replicas, digest)
            print(f"load average at apply: {loadavg()}")
            cpu_before = CpuSnapshot.take(data_dir)
            apply_sent = time.time()
            answer = api.post("/v1/apply", json={"items": [doc]})
            t0 = time.time()
            if answer.status_code != 200:
                raise BenchFailed(f"apply answered {answer.status_code}: {answer.text[:500]}")
            print(f"applied {args.app} with replicas {args.replicas}; polling every {args.poll_interval * 1000:.0f} ms",
                  flush=True)
            obs = poll_until_ready(api, args.app, args.replicas, args.poll_interval, deadline)
            all_ready = time.time()
            cpu_after = CpuSnapshot.take(data_dir)
            forked = fork_times(obs, data_dir)
            sched = schedule_times(api, args.app, t0)
        rows = server_row_times(data_dir / "ballast.db", args.app)
        report(args, apply_sent, t0, obs, sched, forked, rows)
        cpu_report(cpu_before, cpu_after, all_ready - t0)
        print(f"  load average at all-ready: {loadavg()}")
    except BenchFailed as exc:
        failed = str(exc)
    except Exception as exc:  # any other failure: still stop the platform below, then exit non-zero
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        problems = stop_platform(up, data_dir, obs.pids if obs else {})
        if problems:
            failed = "; ".join(([failed] if failed else []) + problems)
        if failed or args.keep_data_dir:
            print(f"data dir kept for inspection: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        if up is not None:
            print(f"--- tail of {up.log} ---\n{tail(up.log)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
