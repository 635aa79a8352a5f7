#!/usr/bin/env python3
"""A bigger platform on one machine: apply → all healthy, a full grouped release, a node drain, at each size.

For each size in --sizes (default 20,200; the smallest is the baseline of the
same run) it starts a fresh platform with `ballast up --zones Z
--nodes-per-zone K` (default 2 x 4 = 8 nodes, 64 cpu / 64Gi each so capacity
never limits), pushes the sample app and then, timing each phase:

  apply    apply the sample app with `replicas: N` (every instance an app
           process plus its HAProxy sidecar); until all N are ready
  idle     10 s with nothing asked of the platform (steady state)
  release  apply a new revision and release it in 4 groups (beta of 1 per
           cell first), `pause: none`, a quarter of each cell unavailable at most; until
           Succeeded
  drain    `POST /v1/nodes/NODE/drain` on the first node; until it holds no
           instance and all N are ready elsewhere

Per phase it prints the wall time, the CPU seconds each kind of process used
(control plane, agents, gateway, sidecars, apps) and their peak memory (sum of
RSS, sampled every second), and it watches for what breaks: the control plane
losing its leadership, tracebacks in any log, instances restarting, and API
calls that failed or took longer than 1 s. At the end, a table of every size
with per-instance times and their ratio to the baseline size.

Run:  .venv/bin/python benchmarks/platform_scale.py [--sizes 20,200,400] [--zones 2 --nodes-per-zone 4]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (BenchFailed, Child, code_version, cpu_seconds, exit_on_sigterm, free_port, kill_leftovers,  # noqa: E402
                      loadavg, machine_busy_seconds, percentile, processes_referencing, tail, work_dir)
from apply_to_healthy import DEMO_DIR, manifest  # noqa: E402

from ballast.cli import config as client_config  # noqa: E402
from ballast.cli.packaging import pack  # noqa: E402

APP = "shop"
ROLE_ORDER = ["control plane", "agents", "gateway", "sidecars", "apps", "supervisor"]
SLOW_CALL_SECONDS = 1.0


def role_of(cmd: str) -> str:
    if "-m ballast server" in cmd:
        return "control plane"
    if "-m ballast agent" in cmd:
        return "agents"
    if "-m ballast gateway" in cmd:
        return "gateway"
    if "-m ballast up" in cmd:
        return "supervisor"
    if "haproxy" in cmd:
        return "gateway" if "gateway" in cmd else "sidecars"
    return "apps"


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Usage:
    """CPU seconds per role between two moments, and the peak summed RSS per role seen by the sampler."""

    cpu: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    machine: float = 0.0


class Sampler:
    """Every second: RSS per role (peak kept per phase) and CPU seconds per process (the last value a process
    showed counts, so a process that ended within a phase still counts what it used)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lock = threading.Lock()
        self.cpu: dict[int, tuple[str, float]] = {}
        self.peak: dict[str, int] = {}
        self.count: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss: dict[str, int] = {}
        count: dict[str, int] = {}
        for pid, cmd in processes_referencing(self.data_dir):
            role = role_of(cmd)
            used = cpu_seconds(pid)
            if used is None:
                continue
            rss[role] = rss.get(role, 0) + rss_bytes(pid)
            count[role] = count.get(role, 0) + 1
            with self.lock:
                self.cpu[pid] = (role, used)
        with self.lock:
            for role, value in rss.items():
                self.peak[role] = max(self.peak.get(role, 0), value)
                self.count[role] = max(self.count.get(role, 0), count[role])

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self._sample()

    def start(self) -> None:
        self._sample()
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def mark(self) -> tuple[dict[int, tuple[str, float]], float]:
        self._sample()
        with self.lock:
            snapshot = dict(self.cpu)
            self.peak.clear()
            self.count.clear()
        return snapshot, machine_busy_seconds()

    def usage_since(self, begin: tuple[dict[int, tuple[str, float]], float]) -> Usage:
        self._sample()
        before, machine = begin
        out = Usage(machine=machine_busy_seconds() - machine)
        with self.lock:
            for pid, (role, used) in self.cpu.items():
                out.cpu[role] = out.cpu.get(role, 0.0) + used - before.get(pid, (role, 0.0))[1]
            out.peak_rss = dict(self.peak)
            out.processes = dict(self.count)
        return out


class Watch:
    """The API as the benchmark uses it, timing every call: failures and slow answers are part of the result."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api
        self.calls: list[float] = []
        self.failed: list[str] = []

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response | None:
        began = time.monotonic()
        try:
            answer = self.api.request(method, path, **kw)
        except httpx.HTTPError as exc:
            self.failed.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            return None
        finally:
            self.calls.append(time.monotonic() - began)
        if answer.status_code >= 500:
            self.failed.append(f"{method} {path}: HTTP {answer.status_code}: {answer.text[:200]}")
            return None
        return answer

    def instances(self) -> list[dict[str, Any]] | None:
        answer = self.call("GET", "/v1/instances", params={"app": APP})
        return answer.json()["items"] if answer is not None and answer.status_code == 200 else None


def until(what: str, check: Callable[[], Any], deadline: float, platform: Child, interval: float = 0.25) -> Any:
    while True:
        if platform.exited:
            raise BenchFailed(f"`ballast up` exited while waiting for {what}:\n{tail(platform.log)}")
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchFailed(f"timed out waiting for {what}")
        time.sleep(interval)


@dataclass
class Phase:
    name: str
    seconds: float
    usage: Usage
    detail: str = ""


@dataclass
class SizeResult:
    size: int
    phases: list[Phase] = field(default_factory=list)
    trouble: list[str] = field(default_factory=list)
    calls: list[float] = field(default_factory=list)
    failed_calls: list[str] = field(default_factory=list)
    failed: str | None = None


def all_ready(watch: Watch, want: int, revision: int | None = None, away_from: str | None = None) -> bool:
    items = watch.instances()
    if items is None:
        return False
    live = [i for i in items if i["spec"].get("desired", "running") == "running"]
    return len(live) == want and all(
        i["status"]["ready"] and (revision is None or i["status"]["revision"] == revision)
        and (away_from is None or i["spec"]["node"] != away_from) for i in live)


def restarts(watch: Watch) -> int:
    return sum(int(i["status"].get("restarts") or 0) for i in (watch.instances() or []))


def log_trouble(data_dir: Path, up_log: Path) -> list[str]:
    """What went wrong, from every log of the platform."""
    found: list[str] = []
    for log in [up_log, *sorted((data_dir / "logs").glob("*.log"))]:
        text = log.read_text(errors="replace") if log.is_file() else ""
        tracebacks = text.count("Traceback (most recent call last)")
        lost = len(re.findall(r"stopped leading", text))
        stalls = len(re.findall(r"event loop (?:stalled|was blocked)", text))
        segv = len(re.findall(r"Segmentation fault|exited with code 139", text))
        for count, what in ((tracebacks, "traceback(s)"), (lost, "leadership lost"), (stalls, "event-loop stall(s)"),
                            (segv, "proxy crash(es)")):
            if count:
                found.append(f"{log.name}: {count} {what}")
    return found


def run_size(args: argparse.Namespace, size: int) -> SizeResult:
    result = SizeResult(size)
    workdir = work_dir(f"ballast-bench-scale-{size}-")
    data_dir = workdir / "data"
    platform = Child([sys.executable, "-m", "ballast", "up", "--data-dir", str(data_dir), "--port", str(free_port()),
                      "--gateway-port", str(free_port()), "--first-node-ip", args.first_node_ip,
                      "--zones", str(args.zones), "--nodes-per-zone", str(args.nodes_per_zone),
                      "--node-cpu", "64", "--node-memory", "64Gi", "--no-user-config"], workdir / "up.log")
    sampler: Sampler | None = None
    began = time.monotonic()
    try:
        print(f"\n=== {size} instances over {args.zones} zone(s) x {args.nodes_per_zone} node(s); load average "
              f"{loadavg()} ===", flush=True)
        platform.start()
        until("`ballast up`", lambda: "Ballast is up" in platform.log.read_text(errors="replace")
              and (data_dir / "client.yaml").is_file(), began + 180, platform)
        print(f"platform up after {time.monotonic() - began:.1f} s", flush=True)
        sampler = Sampler(data_dir)
        sampler.start()
        cfg = client_config.load(str(data_dir / "client.yaml"))
        with httpx.Client(base_url=cfg.server, headers={"Authorization": f"Bearer {cfg.token}"}, timeout=60) as api:
            watch = Watch(api)
            blob, digest = pack(DEMO_DIR)
            api.post("/v1/artifacts", content=blob).raise_for_status()
            doc = manifest(APP, size, digest)

            def phase(name: str, start: Callable[[], None], done: Callable[[], bool], timeout: float,
                      detail: Callable[[], str] = lambda: "") -> None:
                mark = sampler.mark()  # type: ignore[union-attr]
                t0 = time.monotonic()
                start()
                until(name, done, t0 + timeout, platform)
                seconds = time.monotonic() - t0
                result.phases.append(Phase(name, seconds, sampler.usage_since(mark), detail()))  # type: ignore[union-attr]
                print(f"  {name:<8} {seconds:8.1f} s  {result.phases[-1].detail}", flush=True)

            def apply(document: dict[str, Any]) -> None:
                answer = watch.call("POST", "/v1/apply", json={"items": [document]})
                if answer is None or answer.status_code != 200:
                    raise BenchFailed(f"apply: {answer.text[:300] if answer is not None else watch.failed[-1]}")

            phase("apply", lambda: apply(doc), lambda: all_ready(watch, size), args.phase_timeout)
            idle_until: list[float] = []
            phase("idle", lambda: idle_until.append(time.monotonic() + 10.0), lambda: time.monotonic() >= idle_until[0],
                  30)

            doc2 = {**doc, "spec": {**doc["spec"], "template": {**doc["spec"]["template"],
                                                                 "env": {**doc["spec"]["template"]["env"],
                                                                         "GREETING": "hello again"}}}}

            def start_release() -> None:
                apply(doc2)
                body = {"toRevision": 2, "strategy": {"groups": 4, "betaSize": 1, "pause": "none",
                                                      "maxUnavailablePerCell": max(1, size // (args.zones * 4))}}
                answer = watch.call("POST", f"/v1/apps/{APP}/releases", json=body)
                if answer is None or answer.status_code != 201:
                    raise BenchFailed(f"release start: {answer.text[:300] if answer is not None else watch.failed[-1]}")

            def released() -> bool:
                answer = watch.call("GET", f"/v1/apps/{APP}/release")
                if answer is None:
                    return False
                phase_now = answer.json()["phase"]
                if phase_now in ("Failed", "RolledBack", "Paused"):
                    raise BenchFailed(f"release ended {phase_now}: {answer.json().get('reason')}")
                return phase_now == "Succeeded" and all_ready(watch, size, revision=2)

            phase("release", start_release, released, args.phase_timeout)
            node = sorted({i["spec"]["node"] for i in watch.instances() or []})[0]

            def start_drain() -> None:
                answer = watch.call("POST", f"/v1/nodes/{node}/drain")
                if answer is None or answer.status_code != 200:
                    raise BenchFailed(f"drain: {answer.text[:300] if answer is not None else watch.failed[-1]}")

            phase("drain", start_drain, lambda: all_ready(watch, size, away_from=node), args.phase_timeout,
                  lambda: f"(node {node})")
            result.trouble.append(f"instance restarts: {restarts(watch)}")
            result.calls, result.failed_calls = watch.calls, watch.failed
    except BenchFailed as exc:
        result.failed = str(exc)
    except Exception as exc:  # still stop the platform, and report
        result.failed = f"{type(exc).__name__}: {exc}"
    finally:
        if sampler is not None:
            sampler.close()
        result.trouble += log_trouble(data_dir, platform.log)
        how = platform.stop(signal.SIGINT, grace=120)
        left = kill_leftovers(workdir)
        print(f"platform: {how}; leftover processes: {len(left)}")
        if left:
            result.trouble.append(f"{len(left)} process(es) survived the platform")
        if result.failed or args.keep_data_dir:
            print(f"data dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def mib(n: int) -> str:
    return f"{n / 2**20:7.0f}"


def report(result: SizeResult) -> None:
    print(f"\n--- {result.size} instances ---")
    if result.failed:
        print(f"FAILED: {result.failed}")
    for ph in result.phases:
        u = ph.usage
        wall_cores = ph.seconds * (os.cpu_count() or 1)
        print(f"{ph.name} {ph.detail}: {ph.seconds:.1f} s; machine busy {u.machine:.1f} core-s of {wall_cores:.1f}")
        print(f"    {'':<14} {'cpu s':>8} {'% core':>7} {'peak RSS MiB':>13} {'processes':>10}")
        for role in ROLE_ORDER:
            if role in u.cpu or role in u.peak_rss:
                cpu = u.cpu.get(role, 0.0)
                print(f"    {role:<14} {cpu:8.2f} {cpu / ph.seconds * 100:7.0f} {mib(u.peak_rss.get(role, 0)):>13} "
                      f"{u.processes.get(role, 0):>10}")
    if result.calls:
        slow = sum(1 for c in result.calls if c > SLOW_CALL_SECONDS)
        print(f"API calls by the benchmark: {len(result.calls)}, p50 {percentile(result.calls, 50) * 1000:.0f} ms, "
              f"p99 {percentile(result.calls, 99) * 1000:.0f} ms, max {max(result.calls) * 1000:.0f} ms, "
              f"over {SLOW_CALL_SECONDS:g} s: {slow}, failed: {len(result.failed_calls)}")
    for line in result.failed_calls[:5]:
        print(f"    failed call: {line}")
    for line in result.trouble:
        print(f"trouble: {line}")


def summary(results: list[SizeResult]) -> None:
    base = results[0]
    print(f"\n=== summary (baseline: {base.size} instances, same run) ===")
    names = ["apply", "release", "drain"]
    print(f"{'instances':>9} " + " ".join(f"{n + ' s':>10} {'ms/inst':>8} {'x base':>7}" for n in names)
          + f" {'idle CP %':>9} {'idle agents %':>13} {'peak RSS MiB':>12}")
    for r in results:
        cells = []
        for n in names:
            ph = next((p for p in r.phases if p.name == n), None)
            bp = next((p for p in base.phases if p.name == n), None)
            if ph is None:
                cells.append(f"{'-':>10} {'-':>8} {'-':>7}")
                continue
            per = ph.seconds / r.size * 1000
            ratio = per / (bp.seconds / base.size * 1000) if bp else float("nan")
            cells.append(f"{ph.seconds:10.1f} {per:8.1f} {ratio:7.2f}")
        idle = next((p for p in r.phases if p.name == "idle"), None)
        cp = idle.usage.cpu.get("control plane", 0.0) / idle.seconds * 100 if idle else float("nan")
        ag = idle.usage.cpu.get("agents", 0.0) / idle.seconds * 100 if idle else float("nan")
        peak = max((sum(p.usage.peak_rss.values()) for p in r.phases), default=0)
        print(f"{r.size:>9} " + " ".join(cells) + f" {cp:9.0f} {ag:13.0f} {mib(peak):>12}"
              + ("   FAILED" if r.failed else ""))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20,200", help="instance counts, comma-separated; the first is the baseline")
    p.add_argument("--zones", type=int, default=2)
    p.add_argument("--nodes-per-zone", type=int, default=4)
    p.add_argument("--first-node-ip", default="127.0.36.2")
    p.add_argument("--phase-timeout", type=float, default=900.0, help="give up on a phase after this many seconds")
    p.add_argument("--keep-data-dir", action="store_true")
    args = p.parse_args()
    try:
        args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes {args.sizes!r}: expected comma-separated integers")
    if not args.size_list or min(args.size_list) < 2:
        p.error("--sizes: at least one size, each at least 2")
    return args


def main() -> int:
    args = parse_args()
    exit_on_sigterm()
    print(f"code: {code_version()}; {os.cpu_count()} cores; load average {loadavg()}")
    results = []
    for size in args.size_list:
        result = run_size(args, size)
        report(result)
        results.append(result)
        if result.failed:
            print(f"stopping at {size} instances: {result.failed}")
            break
    summary(results)
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
