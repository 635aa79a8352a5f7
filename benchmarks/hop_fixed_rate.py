#!/usr/bin/env python3
"""The cost of one data-plane hop at a fixed request rate: added latency, CPU and memory per HAProxy.

`benchmarks/dataplane.py` loads each path at saturation, which measures the machine's throughput more than the
hop. Here every path gets the same open-loop load at fixed rates (default 1,000 and 5,000 req/s): request i is
due at t0 + i/rate whatever happened to the ones before, and its latency runs from when it was due (corrected
for coordinated omission, as wrk2 does), over N kept-alive connections. The load generator is
`benchmarks/hop_loadgen.c`, compiled here with `cc -O2`: Debian's `h2load --rps` was considered and not used,
because it stamps a request when it is submitted (after waiting for a free connection, so that wait is lost)
and reports no percentiles.

Processes, all on 127.0.181.0/24, in a temp directory, stopped at the end (also on Ctrl-C or an error):
  app        a second HAProxy answering `200 ok` itself (`http-request return`), so the app costs little and
             is the same compiled-speed server for every path
  sidecars   started by the agent's own `Sidecar` class (`sidecar_tables` on a registry `Snapshot`, `render_sidecar`,
             the request-statistics hooks the agent installs, `HAProxy.converge`): the callee's (inbound, on
             the node IP .2) and the caller's (outbound, on .4/.5), each twice: as Ballast renders it and tuned
  gateways   the gateway's own `Gateway.render` (routes from the same snapshot, statistics hooks, task frontend),
             with its default 2 threads and with 1 thread and the same tuning as the sidecars

Paths (variants), each at each rate, rounds interleaved (the order rotates every round):
  direct          client -> app                                      the baseline: generator, loopback, app
  sidecar         client -> callee sidecar (inbound) -> app          one sidecar hop
  east-west       client -> caller sidecar (outbound) -> callee sidecar -> app    two sidecars
  gateway         client -> gateway -> app                           the gateway alone
  north-south     client -> gateway -> callee sidecar -> app         what `ballast up` serves on the gateway
and the same with the tuned proxies (`... tuned`). The ADDED latency is (variant - direct) at the same rate, in
the same run; per hop it is divided by the hops of the path. CPU: utime+stime (/proc/PID/stat, 10 ms ticks) of
each HAProxy (master and worker) over all of a variant's rounds, per request, as vCPU per 1,000 req/s. RSS:
VmRSS and PSS of each HAProxy's worker and master at the end. The generator's own cost is printed too: its CPU
per request, and how late it sent (late = sent - due); the direct path's latency is the floor it sets. "others
CPU" is the share of the machine that processes not started here used meanwhile (user+system from /proc/stat
minus ours): a shared machine's disturbance, shown beside the figures it disturbed.

Run (short, to see it work):  .venv/bin/python benchmarks/hop_fixed_rate.py --seconds 3 --rounds 2
Run (the figures):            .venv/bin/python benchmarks/hop_fixed_rate.py            (10 s x 5 rounds, ~17 min)
Check the generator:          .venv/bin/python benchmarks/hop_fixed_rate.py --check-generator   (the app frozen
                              0.5 s: ~450 requests over 50 ms from their due time, at most N from their sending)
Options: --rates 1000,5000  --connections 32  --warmup 0.5  --tune http-reuse=always,no-delay[,bufsize=N]
         --tuned-gateway-threads 1  --no-tuned (only what Ballast renders)  --only 'sidecar,sidecar tuned'
         (--tune '' keeps the tuned proxies as rendered: then "gateway tuned" differs only by its threads)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (BenchFailed, Child, code_version, free_port, kill_leftovers, loadavg,  # noqa: E402
                      percentile, run_in_workdir, wait_listening)

from ballast.agent.sidecar import Sidecar, SidecarPorts  # noqa: E402
from ballast.dataplane.haproxy import HAProxy, find_binary, install_stats_script  # noqa: E402
from ballast.dataplane.haproxy_config import Address, ProxyTuning  # noqa: E402
from ballast.gateway.gateway import Gateway, GatewaySettings  # noqa: E402
from ballast.wire.registry import Endpoint, Route, Service, Snapshot  # noqa: E402

HERE = Path(__file__).resolve().parent
APP_IP = "127.0.181.3"          # the app (the callee instance's private address)
CALLEE_IP = "127.0.181.2"       # the callee's node: its sidecar's inbound side (the endpoint)
CALLER_IP, CALLER_PRIVATE = "127.0.181.4", "127.0.181.5"   # the caller's node and its private address
GATEWAY_IP = "127.0.181.6"
QUANTILES = (50.0, 90.0, 99.0, 99.9)
GOAL_P99_PER_HOP_MS = 0.15      # at 1,000 req/s
GOAL_VCPU_PER_1K = 0.05         # per sidecar, per 1,000 req/s

APP_CONFIG = """\
# the benchmark's app: answers every request itself, as fast as HAProxy can
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 60s
frontend app
    bind {address}
    http-request return status 200 content-type text/plain string ok
"""


@dataclass
class Variant:
    name: str
    address: Address
    host: str
    hops: int
    proxies: tuple[str, ...]          # names of the HAProxies the path goes through
    rounds: list["Measured"] = field(default_factory=list)


@dataclass
class Measured:
    due_ns: list[int]          # answer - due time, per answered request
    sent_ns: list[int]         # answer - sent time
    summary: dict[str, float]
    cpu: dict[str, float]      # proxy name -> CPU seconds during the measurement (warm-up included)
    others_cpu_share: float    # busy share of the machine not used by this benchmark's processes


# --- tools --------------------------------------------------------------------------------------------------

def compiler() -> str:
    found = shutil.which("cc") or shutil.which("gcc")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing: gcc libc6-dev (to build the load generator)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "gcc", "libc6-dev"], env=env, check=False)
        found = shutil.which("cc") or shutil.which("gcc")
        if found:
            return found
    raise BenchFailed("no C compiler to build benchmarks/hop_loadgen.c: install one "
                      "(sudo apt-get install -y gcc libc6-dev) and run again")


def build_loadgen(work: Path) -> Path:
    binary = work / "hop_loadgen"
    done = subprocess.run([compiler(), "-O2", "-Wall", "-o", str(binary), str(HERE / "hop_loadgen.c")],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchFailed(f"building the load generator failed:\n{done.stderr}")
    return binary


def haproxy_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def parse_tuning(text: str) -> ProxyTuning:
    reuse, bufsize, no_delay = None, None, False
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key == "http-reuse" and value in ("never", "safe", "aggressive", "always"):
            reuse = value
        elif key == "bufsize" and value.isdigit() and int(value) >= 4096:
            bufsize = int(value)
        elif key == "no-delay" and not value:
            no_delay = True
        else:
            raise SystemExit(f"--tune: {item!r} is not one of http-reuse=never|safe|aggressive|always, "
                             "bufsize=N (N >= 4096), no-delay")
    return ProxyTuning(http_reuse=reuse, bufsize=bufsize, http_no_delay=no_delay)


# --- /proc readings ---------------------------------------------------------------------------------------

def process_seconds() -> float:
    """CPU seconds all cores have run processes (user, nice, system; not interrupts, where much of loopback's
    packet handling is counted, nor idle or iowait) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / os.sysconf("SC_CLK_TCK")

def family(pid: int) -> list[int]:
    """An HAProxy master and its workers (children)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def cpu_of(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])   # utime stime, all threads
    return total / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int, source: str, key: str) -> int:
    """VmRSS from /proc/PID/status, or Pss from /proc/PID/smaps_rollup (shared pages split among their users)."""
    try:
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- the processes --------------------------------------------------------------------------------------------

def snapshot(app_port: int, callee_port: int, tuned_port: int | None) -> Snapshot:
    def endpoint(name: str, ip: str, port: int) -> Endpoint:
        return Endpoint(id=name, ip=ip, port=port, cell="cell-a", zone="zone-a", state="ready", revision=1)
    services = [Service(name="app", endpoints=(endpoint("app-1", APP_IP, app_port),),
                        routes=(Route(host="app.local", path="/"),)),
                Service(name="bench", endpoints=(endpoint("bench-1", CALLEE_IP, callee_port),),
                        routes=(Route(host="bench.local", path="/"),))]
    if tuned_port is not None:
        services.append(Service(name="bench-tuned", endpoints=(endpoint("bench-tuned-1", CALLEE_IP, tuned_port),),
                                routes=(Route(host="bench-tuned.local", path="/"),)))
    return Snapshot(generation=1, services=tuple(services))


class Platform:
    """The app, the sidecars and the gateways of the run; `proxies` by name for the CPU and RSS readings."""

    def __init__(self, work: Path, binary: str, tuning: ProxyTuning | None, gateway_threads: int) -> None:
        self.work, self.binary, self.tuning, self.gateway_threads = work, binary, tuning, gateway_threads
        self.app_port = free_port(APP_IP)
        self.app = Child([binary, "-db", "-f", str(work / "app.cfg")], work / "app.log")
        self.sidecars: dict[str, Sidecar] = {}
        self.gateways: dict[str, Gateway] = {}
        self.ports: dict[str, int] = {}

    @property
    def proxies(self) -> dict[str, HAProxy]:
        return {**{n: s.proxy for n, s in self.sidecars.items()}, **{n: g.proxy for n, g in self.gateways.items()}}

    async def start(self) -> None:
        (self.work / "app.cfg").write_text(APP_CONFIG.format(address=Address(APP_IP, self.app_port)))
        self.app.start()
        await wait_listening(APP_IP, self.app_port)
        hooks = install_stats_script(self.work / "agent", table_size=1000)   # as the agent installs them
        kinds = {"": ProxyTuning()} if self.tuning is None else {"": ProxyTuning(), " tuned": self.tuning}
        ports = {f"callee{k}": free_port(CALLEE_IP) for k in kinds}
        snap = snapshot(self.app_port, ports["callee"], ports.get("callee tuned"))
        for kind, tuning in kinds.items():
            callee = Sidecar(f"bench{kind.replace(' ', '-')}-1", CALLEE_IP, APP_IP, "cell-a",
                             SidecarPorts(endpoint=ports[f"callee{kind}"], app=self.app_port,
                                          mesh=free_port(APP_IP)),
                             self.binary, self.work / f"callee{kind.replace(' ', '-')}", lambda: None,
                             stats=hooks, app="bench", tuning=tuning)
            caller = Sidecar(f"front{kind.replace(' ', '-')}-1", CALLER_IP, CALLER_PRIVATE, "cell-a",
                             SidecarPorts(endpoint=free_port(CALLER_IP), app=free_port(CALLER_PRIVATE),
                                          mesh=free_port(CALLER_PRIVATE)),
                             self.binary, self.work / f"caller{kind.replace(' ', '-')}", lambda: None,
                             stats=hooks, app="front", tuning=tuning)
            self.sidecars[f"callee sidecar{kind}"] = callee
            self.sidecars[f"caller sidecar{kind}"] = caller
            threads = 2 if not kind else self.gateway_threads
            self.gateways[f"gateway{kind}"] = Gateway(GatewaySettings(
                server="http://127.0.0.1:9", token="unused", name=f"bench{kind.replace(' ', '-')}",
                listen=Address(GATEWAY_IP, free_port(GATEWAY_IP)), data_dir=self.work / f"gateway{kind.replace(' ', '-')}",
                haproxy=self.binary, threads=threads, tuning=tuning))
        for sidecar in self.sidecars.values():
            await sidecar.apply(snap)          # the agent's own apply: render, maps, start
            if not sidecar.proxy.alive() or sidecar.error:
                raise BenchFailed(f"sidecar {sidecar.id} did not start: {sidecar.error or 'see its log'}")
        for gateway in self.gateways.values():
            text, cfg = gateway.render(snap)   # what Gateway.apply converges to
            await gateway.proxy.converge(text, cfg.backends, {str(gateway.weights_map): gateway.weights})

    def variants(self) -> list[Variant]:
        out = [Variant("direct", Address(APP_IP, self.app_port), "app", 0, ())]
        kinds = [""] if self.tuning is None else ["", " tuned"]
        for kind in kinds:
            callee = self.sidecars[f"callee sidecar{kind}"]
            caller = self.sidecars[f"caller sidecar{kind}"]
            gateway = self.gateways[f"gateway{kind}"]
            service = "bench" + kind.replace(" ", "-")
            out += [Variant(f"sidecar{kind}", Address(CALLEE_IP, callee.ports.endpoint), "bench", 1,
                            (f"callee sidecar{kind}",)),
                    Variant(f"east-west{kind}", Address(CALLER_PRIVATE, caller.ports.mesh), service, 2,
                            (f"caller sidecar{kind}", f"callee sidecar{kind}")),
                    Variant(f"gateway{kind}", gateway.settings.listen, "app.local", 1, (f"gateway{kind}",)),
                    Variant(f"north-south{kind}", gateway.settings.listen, f"{service}.local", 2,
                            (f"gateway{kind}", f"callee sidecar{kind}"))]
        return out

    async def stop(self) -> None:
        for proxy in self.proxies.values():
            await proxy.stop(1)
        for gateway in self.gateways.values():
            await gateway.client.close()
        self.app.stop(signal.SIGTERM, 5)


# --- measuring ----------------------------------------------------------------------------------------------

async def measure(loadgen: Path, work: Path, platform: Platform, variant: Variant, rate: float,
                  args: argparse.Namespace) -> Measured:
    out = work / "latencies.txt"
    families = {name: family(proxy.pid or 0) for name, proxy in platform.proxies.items()}
    ours = [pid for pids in families.values() for pid in pids] + [platform.app.proc.pid if platform.app.proc else 0]
    before = {name: cpu_of(pids) for name, pids in families.items()}
    app_before = cpu_of(ours[-1:])
    ours_before, busy_before, began = cpu_of(ours), process_seconds(), time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(loadgen), variant.address.ip, str(variant.address.port), variant.host, f"{rate:g}", f"{args.seconds:g}",
        str(args.connections), f"{args.warmup:g}", str(out), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise BenchFailed(f"load generator on {variant.name}: exit {proc.returncode}: {stderr.decode().strip()}")
    wall = time.monotonic() - began
    summary = {k: float(v) for k, v in (item.split("=") for item in stdout.decode().split())}
    cpu = {name: cpu_of(pids) - before[name] for name, pids in families.items()}
    cpu["app"] = cpu_of(ours[-1:]) - app_before
    ours_used = cpu_of(ours) - ours_before + summary["cpu_s"]
    others = max(0.0, process_seconds() - busy_before - ours_used) / (wall * (os.cpu_count() or 1))
    due, sent = [], []
    for line in out.read_text().splitlines():
        d, s, _ = line.split()
        due.append(int(d))
        sent.append(int(s))
    return Measured(due, sent, summary, cpu, others)


def ms(ns: float) -> str:
    return f"{ns / 1e6:.3f}"


def quantiles(values: list[int]) -> list[float]:
    return [percentile(values, q) if values else float("nan") for q in QUANTILES]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def report_rate(rate: float, variants: list[Variant], args: argparse.Namespace, load_before: str) -> None:
    print(f"\n## {rate:g} req/s: {args.rounds} round(s) x {args.seconds:g} s per variant (+{args.warmup:g} s warm-up "
          f"each), order rotating each round; {args.connections} kept-alive connections; "
          f"load average before {load_before}, after {loadavg()}")
    print("latency = answer - due time (ms; coordinated omission corrected), pooled over the rounds; "
          "late = sent - due (the generator's own lag)\n")
    print(f"{'variant':<20} {'hops':>4} {'answered':>9} {'failed':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} "
          f"{'late p99':>8} {'gen CPU us/req':>14} {'others CPU':>10}")
    base = variants[0]
    base_q = quantiles([x for m in base.rounds for x in m.due_ns])
    for v in variants:
        due = [x for m in v.rounds for x in m.due_ns]
        late = [d - s for m in v.rounds for d, s in zip(m.due_ns, m.sent_ns)]
        failed = sum(int(m.summary["failed"] + m.summary["timeouts"] + m.summary["unsent"] + m.summary["non2xx"])
                     for m in v.rounds)
        gen = sum(m.summary["cpu_s"] for m in v.rounds) / max(1.0, sum(m.summary["requests_total"] for m in v.rounds))
        q = quantiles(due)
        print(f"{v.name:<20} {v.hops:>4} {len(due):>9} {failed:>6} " + " ".join(f"{ms(x):>7}" for x in q)
              + f" {ms(percentile(late, 99.0) if late else 0):>8} {gen * 1e6:>14.1f} "
              f"{100 * median([m.others_cpu_share for m in v.rounds]):>9.0f}%")
    for v in variants:
        kinds = {k: int(sum(m.summary[k] for m in v.rounds)) for k in ("failed", "timeouts", "unsent", "non2xx")}
        if any(kinds.values()):
            print(f"  {v.name}: " + ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
                  + " (timeouts: no answer 2 s after the end; unsent: every connection still busy then)")
    print("\nadded over direct (same run, same rate), ms; per hop = added / hops; ratio = variant p99 / direct p99;"
          "\nmedian round = the median over the rounds of (variant p99 - that round's direct p99) / hops")
    print(f"{'variant':<20} {'+p50':>7} {'+p90':>7} {'+p99':>7} {'+p99.9':>7} {'p99/hop':>7} {'ratio':>6} "
          f"{'median round':>12}  per-round +p99")
    for v in variants[1:]:
        q = quantiles([x for m in v.rounds for x in m.due_ns])
        added = [a - b for a, b in zip(q, base_q)]
        per_round = [percentile(m.due_ns, 99.0) - percentile(b.due_ns, 99.0)
                     for m, b in zip(v.rounds, base.rounds) if m.due_ns and b.due_ns]
        typical = median(per_round) / v.hops if per_round else float("nan")
        verdict = ""
        if rate == 1000:
            goal = GOAL_P99_PER_HOP_MS * 1e6
            verdict = (f"  goal: pooled {'met' if added[2] / v.hops <= goal else 'missed'}, "
                       f"median round {'met' if typical <= goal else 'missed'}")
        print(f"{v.name:<20} " + " ".join(f"{ms(a):>7}" for a in added) + f" {ms(added[2] / v.hops):>7} "
              f"{q[2] / base_q[2]:>6.2f} {ms(typical):>12}  " + " ".join(ms(x) for x in per_round) + verdict)
    print(f"(goal: p99 added per hop <= {GOAL_P99_PER_HOP_MS} ms at 1,000 req/s)")
    print("\nproxy CPU (utime+stime of master and worker, warm-up included), vCPU per 1,000 req/s "
          f"(goal per sidecar: <= {GOAL_VCPU_PER_1K})")
    for v in variants:
        requests = sum(m.summary["requests_total"] for m in v.rounds)
        parts = [f"{name} {sum(m.cpu[name] for m in v.rounds) / requests * 1000:.4f}" for name in (*v.proxies, "app")]
        print(f"  {v.name:<20} " + ", ".join(parts))
    print("  (app: the HAProxy that answers, a floor for what one HAProxy costs per request on this machine)")


def report_memory(platform: Platform) -> None:
    print("\nmemory at the end, MiB: RSS (VmRSS) and PSS (shared pages split among the processes sharing them)")
    print(f"  {'proxy':<24} {'worker RSS':>10} {'master RSS':>10} {'worker PSS':>10} {'master PSS':>10}")
    for name, proxy in platform.proxies.items():
        pids = family(proxy.pid or 0)
        workers = pids[1:] or [0]
        figures = [sum(memory_kib(p, source, key) for p in ps) / 1024
                   for source, key in (("status", "VmRSS:"), ("smaps_rollup", "Pss:")) for ps in (workers, pids[:1])]
        print(f"  {name:<24} " + " ".join(f"{x:>10.1f}" for x in figures))


def describe(platform: Platform, args: argparse.Namespace) -> None:
    callee = platform.sidecars["callee sidecar"]
    text = callee.proxy.files.config.read_text()
    shown = list(dict.fromkeys(line.strip().split(" /")[0] for line in text.splitlines()
                               if line.strip().startswith(("nbthread", "maxconn", "tune.", "http-reuse", "option http",
                                                           "log", "lua-load", "timeout http-keep-alive", "retry-on"))))
    print("sidecar as Ballast renders it (relevant lines of the callee's haproxy.cfg): " + "; ".join(shown)
          + ("" if any(s.startswith("log") for s in shown) else "; no log directive (no per-request logging)"))
    if platform.tuning is not None:
        t = platform.tuning
        print(f"tuned: http-reuse {t.http_reuse or '(default)'}, tune.bufsize {t.bufsize or '(default)'}, "
              f"http-no-delay {'on' if t.http_no_delay else 'off'}; tuned gateway nbthread "
              f"{platform.gateway_threads} (Ballast's gateway default: 2)")


async def check_generator(loadgen: Path, work: Path, platform: Platform, args: argparse.Namespace) -> None:
    """Show that the correction works: the app frozen (SIGSTOP) for 0.5 s in a 3 s run at 1,000 req/s must delay
    about 500 requests, counted from when each was due, not only the few that were on the wire."""
    app = Variant("direct", Address(APP_IP, platform.app_port), "app", 0, ())
    assert platform.app.proc is not None
    pid, stall = platform.app.proc.pid, 0.5

    async def freeze() -> None:
        await asyncio.sleep(args.warmup + 1.0)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(stall)
        finally:
            os.kill(pid, signal.SIGCONT)
    check = argparse.Namespace(**{**vars(args), "seconds": 3.0})
    frozen = asyncio.create_task(freeze())
    try:
        m = await measure(loadgen, work, platform, app, 1000.0, check)
    finally:
        await frozen
    slow_due = sum(1 for x in m.due_ns if x > 50e6)
    slow_sent = sum(1 for x in m.sent_ns if x > 50e6)
    print(f"\ngenerator check: app stopped {stall:g} s during 3 s at 1,000 req/s over {args.connections} connections; "
          f"requests over 50 ms counted from due time {slow_due}, from sent time {slow_sent} (expected: about "
          f"{int((stall - 0.05) * 1000)} and at most {args.connections}); p90 from due {ms(percentile(m.due_ns, 90.0))}"
          f" ms, from sent {ms(percentile(m.sent_ns, 90.0))} ms")
    if not (slow_due >= 0.8 * (stall - 0.05) * 1000 and slow_sent <= args.connections):
        raise BenchFailed("the load generator does not count a stall from the requests' due times")


async def run(args: argparse.Namespace, work: Path) -> None:
    binary = find_binary()
    loadgen = build_loadgen(work)
    print(f"code {code_version()}; {os.cpu_count()} cores; {haproxy_version(binary)}; load average {loadavg()}")
    print(f"app: HAProxy answering itself on {APP_IP}; generator: hop_loadgen (C, one thread, open loop), "
          f"{args.connections} kept-alive connections")
    platform = Platform(work, binary, None if args.no_tuned else parse_tuning(args.tune), args.tuned_gateway_threads)
    try:
        await platform.start()
        describe(platform, args)
        unknown = set(args.only) - {v.name for v in platform.variants()}
        if unknown:
            raise BenchFailed(f"--only: no variant {sorted(unknown)}; there are {[v.name for v in platform.variants()]}")
        if args.check_generator:
            await check_generator(loadgen, work, platform, args)
            return
        for rate in args.rates:
            load_before = loadavg()
            variants = [v for v in platform.variants() if v.name == "direct" or not args.only or v.name in args.only]
            for r in range(args.rounds):
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                for v in order:
                    v.rounds.append(await measure(loadgen, work, platform, v, rate, args))
            report_rate(rate, variants, args, load_before)
        report_memory(platform)
        print(f"\ncommand: .venv/bin/python benchmarks/hop_fixed_rate.py {shlex.join(sys.argv[1:])}".rstrip())
    finally:
        await platform.stop()
        left = kill_leftovers(work)
        if left:
            raise BenchFailed(f"processes survived: {left}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[1000.0, 5000.0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds at the rate before measuring")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tune", default="http-reuse=always,no-delay",
                        help="the tuned proxies: http-reuse=MODE, bufsize=N, no-delay (comma-separated)")
    parser.add_argument("--tuned-gateway-threads", type=int, default=1)
    parser.add_argument("--no-tuned", action="store_true", help="only the proxies as Ballast renders them")
    parser.add_argument("--check-generator", action="store_true",
                        help="only show that the generator counts a 0.5 s stall of the app from due times")
    parser.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",")], default=[],
                        help="measure only these variants (and direct), e.g. 'sidecar,sidecar tuned'")
    args = parser.parse_args()
    try:
        return run_in_workdir("ballast-bench-hop-", lambda work: asyncio.run(run(args, work)))
    except KeyboardInterrupt:   # the proxies, the app and the generator were stopped on the way out
        print("interrupted; every process this run started is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
