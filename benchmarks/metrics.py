#!/usr/bin/env python3
"""What request-metrics collection costs the data plane: the same path without and with it, in one run.

Starts the demo app (`python3 app.py`, no artificial latency) and, in front of it, two copies of the
north-south path (client -> gateway -> sidecar -> app) rendered by Ballast's own `dataplane` code, each on
its own ports of 127.0.62.2:

  without   sidecar and gateway rendered with `stats=None`: no timing hooks, nothing reads them
  with      both rendered with `stats=install_stats_script(...)` (an arrival stamp per request, and per
            answer its bucket counted in a stick table) and a `RequestStats` collector reading both every
            1 s, as agents and gateways do (`dataplane.collector.read_sidecar` / `read_gateway`)

The two paths share the one app process, the bottleneck, so the proxies and the collector are the only
difference. The collector runs in a child process of its own (this script with `--collector`), as in
production it runs in the agent or gateway process, not in the client; it is started before each "with"
measurement (its baselines taken, its start-up not measured) and stopped after it, when it reads the
proxies a last time and writes its totals. The load generator (keep-alive connections, requests back to
back) loads each variant in turn for the same time, round after round (without-with, then with-without),
so both see the same machine.

Prints per round and overall requests/s, p50, p99, failures, CPU per request (the proxies' own, and the
whole machine's), the ratio with/without of requests/s and the p50/p99 differences; and, for every "with"
measurement, what the collector counted at the sidecar and the gateway against what the load generator
sent: a difference over 3% fails the run (exit 1), so the figures are known to include real collection.

Run:  .venv/bin/python benchmarks/metrics.py [--seconds 10] [--connections 16] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (BenchFailed, Child, code_version, cpu_seconds, free_port, kill_leftovers, loadavg,  # noqa: E402
                      machine_busy_seconds, run_in_workdir, tail, wait_listening)

from ballast.core.request_metrics import Counts, Series, quantile, total  # noqa: E402
from ballast.dataplane.collector import RequestStats, read_gateway, read_sidecar  # noqa: E402
from ballast.dataplane.haproxy import HAProxy, ProxyFiles, find_binary, install_stats_script  # noqa: E402
from ballast.dataplane.haproxy_config import (Address, Backend, GatewayConfig, GatewayRoute, Server,  # noqa: E402
                                              SidecarConfig, render_gateway, render_sidecar)
from ballast.dataplane.request_stats import StatsHooks  # noqa: E402
from ballast.loadgen import Load, Target, percentile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IP = "127.0.62.2"
APP, INSTANCE, HOST = "bench", "bench-1", "bench.local"
INTERVAL = 1.0              # seconds between readings: the agent's and the gateway's default metrics interval
MATCH_TOLERANCE = 0.03      # collected counts may differ this much (relative) from what the client sent
VARIANTS = ("without", "with")


# --- the collector child ------------------------------------------------------------------------------------
async def collect(sidecar_socket: str, gateway_socket: str, result: Path, interval: float) -> None:
    """Read both proxies every `interval` until SIGTERM, read once more, write the totals to `result`.

    The readers are the agent's and the gateway's own (`dataplane.collector.read_sidecar`/`read_gateway`).
    """
    reads: Counter[str] = Counter()

    async def sidecar() -> tuple[str, dict[str, Counts]]:
        reads["sidecar"] += 1
        return await read_sidecar(sidecar_socket)

    async def gateway() -> tuple[str, dict[str, Counts]]:
        reads["gateway"] += 1
        return await read_gateway(gateway_socket)

    stats = RequestStats("bench", interval=interval)
    stats.add("sidecar", sidecar, lambda _key: Series(APP, INSTANCE, 1, "bench", "node"))
    stats.add("gateway", gateway,
              lambda key: Series(APP, key.partition(" ")[2], 1, "bench", "gateway/bench"))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # The proxies' workers started before this process: the first reading is the baseline, not counted.
    await stats.poll_all()
    result.with_suffix(".ready").write_text("ready\n")
    await stats.run(stop)
    await stats.poll_all()   # what was answered since the last periodic reading (the load has stopped)
    totals = stats.totals()
    body = {
        "sidecar": total(c for s, c in totals.items() if s.source == "node").to_json(),
        "gateway": total(c for s, c in totals.items() if s.source != "node").to_json(),
        "reads": dict(reads), "readErrors": stats.read_errors, "lastErrors": stats.last_errors,
    }
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, result)


@dataclass(frozen=True)
class Collected:
    sidecar: Counts
    gateway: Counts
    reads: dict[str, int]
    read_errors: int
    last_errors: dict[str, str]
    cpu: float               # the collector's CPU seconds during the measurement


class CollectorProcess:
    """The collector child: started and ready before a measurement, stopped and read after it."""

    def __init__(self, work: Path, sidecar: HAProxy, gateway: HAProxy, n: int) -> None:
        self.result = work / f"collector-{n}.json"
        self.child = Child([sys.executable, str(Path(__file__).resolve()), "--collector",
                            str(sidecar.files.admin_socket), str(gateway.files.admin_socket), str(self.result)],
                           work / f"collector-{n}.log")
        self.cpu_at_start = 0.0

    async def start(self, timeout: float = 20.0) -> None:
        self.child.start()
        ready = self.result.with_suffix(".ready")
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.child.exited or time.monotonic() > deadline:
                raise BenchFailed(f"the collector did not take its first reading:\n{tail(self.child.log)}")
            await asyncio.sleep(0.02)
        assert self.child.proc is not None
        self.cpu_at_start = cpu_seconds(self.child.proc.pid) or 0.0

    def stop(self) -> Collected:
        assert self.child.proc is not None
        cpu = (cpu_seconds(self.child.proc.pid) or 0.0) - self.cpu_at_start
        ended = self.child.stop(signal.SIGTERM, 10)
        if not self.result.exists():
            raise BenchFailed(f"the collector wrote no totals ({ended}):\n{tail(self.child.log)}")
        body = json.loads(self.result.read_text())
        return Collected(Counts.from_json(body["sidecar"]), Counts.from_json(body["gateway"]), body["reads"],
                         body["readErrors"], body["lastErrors"], cpu)


# --- the two stacks ------------------------------------------------------------------------------------------
@dataclass
class Stack:
    variant: str
    sidecar: HAProxy
    gateway: HAProxy
    port: int                 # the gateway's, where the client sends

    @property
    def proxies(self) -> tuple[HAProxy, HAProxy]:
        return self.sidecar, self.gateway


async def start_stack(variant: str, work: Path, binary: str, app_port: int, stats: StatsHooks | None) -> Stack:
    inbound, outbound, gw_port = (free_port(IP) for _ in range(3))
    stack = Stack(variant, HAProxy(binary, ProxyFiles(work / variant / "sidecar"), label=f"{variant} sidecar"),
                  HAProxy(binary, ProxyFiles(work / variant / "gateway"), label=f"{variant} gateway"), gw_port)
    me = Backend(APP, (Server(INSTANCE, Address(IP, inbound)),))
    await stack.sidecar.start(render_sidecar(SidecarConfig(
        instance=INSTANCE, admin_socket=str(stack.sidecar.files.admin_socket), inbound=Address(IP, inbound),
        app=Address(IP, app_port), outbound=Address(IP, outbound), backends=(me,), stats=stats)))
    await stack.gateway.start(render_gateway(GatewayConfig(
        name="bench", admin_socket=str(stack.gateway.files.admin_socket), listen=Address(IP, gw_port),
        routes=(GatewayRoute(HOST, "/", APP),), backends=(me,), threads=1, stats=stats)))
    return stack


def group_cpu(pgid: int | None) -> float:
    """CPU seconds of every live process of a process group (an HAProxy master and its workers)."""
    if pgid is None:
        return 0.0
    used = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
            used += cpu_seconds(int(entry)) or 0.0
    return used


# --- measuring ------------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    variant: str
    seconds: float
    requests: int
    failures: Counter[str]
    latencies: list[float]
    proxy_cpu: float         # both proxies' CPU seconds
    machine_cpu: float       # every core's busy seconds, whatever ran
    collected: Collected | None = None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def measure(stack: Stack, args: argparse.Namespace, collector: CollectorProcess | None,
                  seconds: float) -> Measurement:
    if collector is not None:
        await collector.start()
    try:
        proxy_cpu = sum(group_cpu(p.pid) for p in stack.proxies)
        machine = machine_busy_seconds()
        load = Load([Target(stack.variant, IP, stack.port, HOST, connections=args.connections)], timeout=10)
        load.start()
        await asyncio.sleep(seconds)
        await load.stop()
        elapsed = time.monotonic() - load.started
        machine = machine_busy_seconds() - machine
        proxy_cpu = sum(group_cpu(p.pid) for p in stack.proxies) - proxy_cpu
    finally:
        collected = collector.stop() if collector is not None else None
    return Measurement(stack.variant, elapsed, load.requests, load.failures(), load.latencies(), proxy_cpu, machine,
                       collected)


def matches(counted: int, sent: int) -> bool:
    return sent > 0 and abs(counted - sent) <= MATCH_TOLERANCE * sent


def check_collected(m: Measurement) -> tuple[bool, str]:
    """Did the collector count what the client sent, at both proxies? (ok, a line saying what it saw)"""
    c = m.collected
    if c is None:
        return False, "no collector"
    ok = (matches(c.sidecar.requests, m.requests) and matches(c.sidecar.answered, m.requests)
          and matches(c.gateway.requests, m.requests) and matches(c.gateway.answered, m.requests))
    reads = ", ".join(f"{k} {v}" for k, v in sorted(c.reads.items()))

    def est(counts: Counts, q: float) -> str:
        value = quantile(counts.latency, q)
        return "-" if value is None else f"{value:.2f}"
    line = (f"collected: sidecar {c.sidecar.requests} requests ({c.sidecar.answered} timed, p50~{est(c.sidecar, 0.5)}"
            f" p99~{est(c.sidecar, 0.99)} ms), gateway {c.gateway.requests} ({c.gateway.answered} timed, "
            f"p50~{est(c.gateway, 0.5)} p99~{est(c.gateway, 0.99)} ms) of {m.requests} sent: "
            f"{'match' if ok else 'MISMATCH'} (within {MATCH_TOLERANCE:.0%}); reads {reads}; "
            f"{c.read_errors} read errors; collector CPU {c.cpu * 1000:.0f} ms")
    if c.last_errors:
        line += f"; last errors {c.last_errors}"
    return ok, line


async def run(args: argparse.Namespace, work: Path) -> None:
    binary = find_binary()
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout.splitlines()
    print(f"{version[0] if version else 'HAProxy version unknown'} ({binary})")
    print(f"code {code_version()}; {os.cpu_count()} cores; load average before {loadavg()}")
    print(f"path: client -> gateway -> sidecar -> demo app (one app process for both variants), {IP}; "
          f"{args.connections} keep-alive connections, {args.seconds:g} s per measurement, {args.rounds} round(s) "
          "alternating without/with and with/without")
    print(f"collector: a separate process (this script with --collector), RequestStats reading sidecar and gateway "
          f"every {INTERVAL:g} s; started before and stopped after each 'with' measurement\n", flush=True)
    app_port = free_port(IP)
    shutil.copy(ROOT / "src" / "ballast" / "demo" / "app.py", work / "app.py")
    app = Child(["python3", str(work / "app.py")], work / "app.log",
                env={"HOST": IP, "PORT": str(app_port), "BALLAST_APP": APP, "DEMO_GRACE_SECONDS": "1"})
    stacks: list[Stack] = []
    app.start()
    try:
        await wait_listening(IP, app_port)
        hooks = install_stats_script(work / "lua")
        stacks.append(await start_stack("without", work, binary, app_port, None))
        stacks.append(await start_stack("with", work, binary, app_port, hooks))
        for stack in stacks:   # warm-up (not reported): connections, the app's and the proxies' first requests
            await measure(stack, args, None, 2)
        results: list[tuple[Measurement, Measurement]] = []
        mismatch = False
        for n in range(1, args.rounds + 1):
            # ABBA: odd rounds measure without first, even rounds with first, so a drift of the machine over the
            # run (a cooling or warming load) falls on both variants alike.
            async def measure_with() -> Measurement:
                return await measure(stacks[1], args, CollectorProcess(work, stacks[1].sidecar, stacks[1].gateway, n),
                                     args.seconds)
            if n % 2:
                without = await measure(stacks[0], args, None, args.seconds)
                with_ = await measure_with()
            else:
                with_ = await measure_with()
                without = await measure(stacks[0], args, None, args.seconds)
            ok, line = check_collected(with_)
            mismatch |= not ok
            results.append((without, with_))
            print_round(n, without, with_, line)
        print_overall(results)
        print(f"\nload average after {loadavg()}")
        print(f"command: {shlex.join(sys.orig_argv)}")
        if mismatch:
            raise BenchFailed("the collector's counts do not match what the load generator sent (see above)")
    finally:
        for stack in stacks:
            for proxy in stack.proxies:
                await proxy.stop(1)
        app.stop(signal.SIGTERM, 5)
        left = kill_leftovers(work)
        if left:
            raise BenchFailed(f"processes survived: {left}")


# --- reporting ------------------------------------------------------------------------------------------------
HEADER = (f"{'':<9} {'req/s':>8} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU us/req':>17} "
          f"{'machine CPU us/req':>19}")


def row(label: str, m: Measurement) -> str:
    requests = max(1, m.requests)
    return (f"{label:<9} {m.rate:>8.0f} {m.failed:>7} {percentile(m.latencies, 0.5) * 1000:>8.2f} "
            f"{percentile(m.latencies, 0.99) * 1000:>8.2f} {m.proxy_cpu / requests * 1e6:>17.1f} "
            f"{m.machine_cpu / requests * 1e6:>19.1f}")


def comparison(without: Measurement, with_: Measurement) -> str:
    ratio = with_.rate / without.rate if without.rate else float("nan")
    p50 = (percentile(with_.latencies, 0.5) - percentile(without.latencies, 0.5)) * 1000
    p99 = (percentile(with_.latencies, 0.99) - percentile(without.latencies, 0.99)) * 1000
    return (f"with/without requests/s {ratio:.3f} (overhead {(1 - ratio) * 100:+.1f}%); "
            f"p50 {p50:+.2f} ms; p99 {p99:+.2f} ms")


def print_round(n: int, without: Measurement, with_: Measurement, collected: str) -> None:
    print(f"round {n}\n{HEADER}")
    for m in (without, with_):
        print(row(m.variant, m))
        for kind, count in m.failures.items():
            print(f"  {count} x {kind}")
    print(f"  {comparison(without, with_)}\n  {collected}\n", flush=True)


def pooled(measurements: list[Measurement]) -> Measurement:
    failures: Counter[str] = Counter()
    for m in measurements:
        failures.update(m.failures)
    return Measurement(measurements[0].variant, sum(m.seconds for m in measurements),
                       sum(m.requests for m in measurements), failures,
                       [x for m in measurements for x in m.latencies], sum(m.proxy_cpu for m in measurements),
                       sum(m.machine_cpu for m in measurements))


def print_overall(results: list[tuple[Measurement, Measurement]]) -> None:
    without, with_ = pooled([r[0] for r in results]), pooled([r[1] for r in results])
    print(f"overall ({len(results)} round(s) pooled: requests over total time, percentiles over all requests)\n"
          f"{HEADER}\n{row('without', without)}\n{row('with', with_)}\n  {comparison(without, with_)}")
    ratios = [w.rate / wo.rate for wo, w in results if wo.rate]
    if len(ratios) > 1:
        print(f"  per-round overhead: {', '.join(f'{(1 - r) * 100:+.1f}%' for r in ratios)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections (default 16)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of both variants, in alternating order (default 4)")
    parser.add_argument("--collector", nargs=3, metavar=("SIDECAR_SOCKET", "GATEWAY_SOCKET", "RESULT"),
                        help=argparse.SUPPRESS)   # internal: the collector child
    args = parser.parse_args()
    if args.collector:
        sidecar_socket, gateway_socket, result = args.collector
        asyncio.run(collect(sidecar_socket, gateway_socket, Path(result), INTERVAL))
        return 0
    if args.seconds <= 0 or args.rounds < 1 or args.connections < 1:
        parser.error("--seconds must be > 0, --rounds and --connections >= 1")
    return run_in_workdir("ballast-bench-metrics-", lambda work: asyncio.run(run(args, work)))


if __name__ == "__main__":
    sys.exit(main())
