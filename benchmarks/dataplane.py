#!/usr/bin/env python3
"""The data plane's cost: one sidecar hop and the gateway, against calling the app directly, in one run.

Starts the demo app (`python3 app.py`, no artificial latency), a sidecar HAProxy and a gateway HAProxy
rendered by Ballast's own `dataplane` code, then loads each path in turn with the same load generator
(keep-alive connections, requests back to back) for the same time:

  direct         client -> app
  sidecar        client -> sidecar (inbound) -> app                 one sidecar hop
  gateway        client -> gateway -> app                           the gateway alone
  north-south    client -> gateway -> sidecar -> app                what `ballast up` serves on the gateway
  east-west      client -> sidecar (outbound) -> sidecar -> app     a service calling another through the mesh

and prints requests/s, p50 and p99, and what each path adds to the direct p50/p99. The client and every
server share this machine's cores, so requests/s are the whole system's, the app being the bottleneck.

Run:  .venv/bin/python benchmarks/dataplane.py [--seconds 10] [--connections 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (BenchFailed, Child, code_version, free_port, kill_leftovers, loadavg,  # noqa: E402
                      run_in_workdir, wait_listening)

from ballast.dataplane.haproxy import HAProxy, ProxyFiles, find_binary  # noqa: E402
from ballast.dataplane.haproxy_config import (Address, Backend, GatewayConfig, GatewayRoute, Server,  # noqa: E402
                                              SidecarConfig, render_gateway, render_sidecar)
from ballast.loadgen import Load, Target, percentile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IP = "127.0.60.2"


async def measure(target: Target, seconds: float) -> tuple[int, int, float, float]:
    load = Load([target], timeout=10)
    load.start()
    await asyncio.sleep(seconds)
    await load.stop()
    lat = load.latencies()
    for kind, count in load.failures().items():
        print(f"  {target.name}: {count} x {kind}")
    return load.requests, load.failed, percentile(lat, 0.5), percentile(lat, 0.99)


async def run(args: argparse.Namespace, work: Path) -> None:
    binary = find_binary()
    app_port, inbound, outbound, gw_port = (free_port(IP) for _ in range(4))
    app = Child(["python3", str(work / "app.py")], work / "app.log",
                env={"HOST": IP, "PORT": str(app_port), "BALLAST_APP": "bench", "DEMO_GRACE_SECONDS": "1"})
    shutil.copy(ROOT / "src" / "ballast" / "demo" / "app.py", work / "app.py")
    sidecar = HAProxy(binary, ProxyFiles(work / "sidecar"), label="bench sidecar")
    gateway = HAProxy(binary, ProxyFiles(work / "gateway"), label="bench gateway")
    app.start()
    try:
        await wait_listening(IP, app_port)
        me = Backend("bench", (Server("bench-1", Address(IP, inbound)),))
        await sidecar.start(render_sidecar(SidecarConfig(
            instance="bench-1", admin_socket=str(sidecar.files.admin_socket), inbound=Address(IP, inbound),
            app=Address(IP, app_port), outbound=Address(IP, outbound), backends=(me,))))
        direct = Backend("direct", (Server("app", Address(IP, app_port)),))
        await gateway.start(render_gateway(GatewayConfig(
            name="bench", admin_socket=str(gateway.files.admin_socket), listen=Address(IP, gw_port),
            routes=(GatewayRoute("direct.local", "/", "direct"), GatewayRoute("bench.local", "/", "bench")),
            backends=(direct, me), threads=1)))
        paths = [("direct", app_port, "bench"), ("sidecar", inbound, "bench"), ("gateway", gw_port, "direct.local"),
                 ("north-south", gw_port, "bench.local"), ("east-west", outbound, "bench")]
        results: dict[str, list[tuple[int, int, float, float]]] = {name: [] for name, _, _ in paths}
        await measure(Target("warm-up", IP, inbound, "bench", connections=args.connections), 2)
        for _ in range(args.rounds):
            for name, port, host in paths:
                results[name].append(await measure(Target(name, IP, port, host, connections=args.connections),
                                                   args.seconds))
        report(results, args)
    finally:
        await sidecar.stop(1)
        await gateway.stop(1)
        app.stop(__import__("signal").SIGTERM, 5)
        left = kill_leftovers(work)
        if left:
            raise BenchFailed(f"processes survived: {left}")


def report(results: dict[str, list[tuple[int, int, float, float]]], args: argparse.Namespace) -> None:
    print(f"\ncode {code_version()}; {os.cpu_count()} cores; load average {loadavg()}")
    print(f"{args.connections} keep-alive connections, {args.seconds:g} s per path, {args.rounds} round(s); "
          "figures are the median round\n")
    print(f"{'path':<12} {'req/s':>8} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8}")
    base: tuple[float, float] | None = None
    for name, rounds in results.items():
        rounds.sort(key=lambda r: r[2])
        count, failed, p50, p99 = rounds[len(rounds) // 2]
        if base is None:
            base = (p50, p99)
        print(f"{name:<12} {count / args.seconds:>8.0f} {failed:>7} {p50 * 1000:>8.2f} {p99 * 1000:>8.2f} "
              f"{(p50 - base[0]) * 1000:>8.2f} {(p99 - base[1]) * 1000:>8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    return run_in_workdir("ballast-bench-dp-", lambda work: asyncio.run(run(args, work)))


if __name__ == "__main__":
    sys.exit(main())
